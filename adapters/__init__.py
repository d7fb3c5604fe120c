"""Delivery adapters: the built-in ones and those other packages register.

Built in: ``log`` (:class:`LogAdapter`), ``email`` (:class:`SmtpAdapter`) and ``webhook``
(:class:`WebhookAdapter`). Another package adds a channel by declaring an entry point in the
``sangkien.adapters`` group whose name is the channel and whose object is an adapter class
with ``from_settings(settings)`` or any callable taking the settings and returning an adapter::

    [project.entry-points."sangkien.adapters"]
    sms = "sangkien_sms:SmsGatewayAdapter"

:func:`load_adapters` builds the adapters for the enabled channels at start-up and fails
loudly (:class:`AdapterConfigError`) when two adapters claim one name or an enabled channel
has none.

    SangkienError
    └── AdapterConfigError     adapters cannot be set up: duplicate name, missing channel,
                               a factory that failed or returned something else
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

from sangkien.adapters.email import SmtpAdapter
from sangkien.adapters.log import LogAdapter
from sangkien.adapters.webhook import WebhookAdapter
from sangkien.errors import SangkienError
from sangkien.notifications import ADAPTER_ENTRY_POINT_GROUP, NotificationAdapter

if TYPE_CHECKING:
    from sangkien.config.settings import Settings

__all__ = [
    "BUILTIN_ADAPTERS",
    "AdapterConfigError",
    "LogAdapter",
    "SmtpAdapter",
    "WebhookAdapter",
    "known_channel_names",
    "load_adapters",
]


class AdapterConfigError(SangkienError):
    """The delivery adapters cannot be set up; the message says which and what to change."""


#: The adapters that ship with sangkien, by channel name.
BUILTIN_ADAPTERS: dict[str, type[Any]] = {
    "log": LogAdapter,
    "email": SmtpAdapter,
    "webhook": WebhookAdapter,
}


@dataclass(frozen=True)
class _Candidate:
    name: str
    source: str
    entry_point: EntryPoint | None = None
    factory: Callable[[Settings], Any] | None = None
    instance: Any = None


def _entry_point_source(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"entry point {ep.name!r} = {ep.value!r}{where}"


def _discovered() -> list[EntryPoint]:
    """Entry points of the group, once each (a distribution seen twice on sys.path counts once)."""
    seen: set[tuple[str, str, str]] = set()
    found: list[EntryPoint] = []
    for ep in entry_points(group=ADAPTER_ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        key = (ep.name, ep.value, dist.name if dist is not None else "")
        if key not in seen:
            seen.add(key)
            found.append(ep)
    return found


def _candidates(extra: Iterable[NotificationAdapter]) -> dict[str, _Candidate]:
    """Every adapter that could serve a channel, by name; a name claimed twice is an error."""
    claimed: dict[str, _Candidate] = {}

    def claim(candidate: _Candidate) -> None:
        first = claimed.get(candidate.name)
        if first is not None:
            raise AdapterConfigError(
                f"two adapters are named {candidate.name!r}: {first.source} and "
                f"{candidate.source}; uninstall or rename one of them"
            )
        claimed[candidate.name] = candidate

    for name, cls in BUILTIN_ADAPTERS.items():
        claim(_Candidate(name, f"built-in {cls.__name__}", factory=cls.from_settings))
    for ep in _discovered():
        claim(_Candidate(ep.name, _entry_point_source(ep), entry_point=ep))
    for adapter in extra:
        extra_name = getattr(adapter, "name", None)
        if (
            not isinstance(extra_name, str)
            or not extra_name
            or not isinstance(adapter, NotificationAdapter)
        ):
            raise AdapterConfigError(
                f"{adapter!r} passed in extra is not a NotificationAdapter "
                "(it needs a non-empty `name` and a `send(message)` method)"
            )
        claim(_Candidate(extra_name, f"{type(adapter).__name__} passed in extra", instance=adapter))
    return claimed


def _build(candidate: _Candidate, settings: Settings) -> NotificationAdapter:
    if candidate.instance is not None:
        return candidate.instance  # type: ignore[no-any-return]
    try:
        if candidate.entry_point is not None:
            target = candidate.entry_point.load()
            if isinstance(target, type) and hasattr(target, "from_settings"):
                adapter = target.from_settings(settings)
            elif callable(target):
                adapter = target(settings)
            else:
                raise TypeError(f"{target!r} is neither an adapter class nor a factory")
        else:
            assert candidate.factory is not None
            adapter = candidate.factory(settings)
    except AdapterConfigError:
        raise
    except Exception as exc:
        raise AdapterConfigError(
            f"channel {candidate.name!r} ({candidate.source}) cannot be set up: {exc}"
        ) from exc
    if not isinstance(adapter, NotificationAdapter):
        raise AdapterConfigError(
            f"channel {candidate.name!r} ({candidate.source}) returned {adapter!r}, which is "
            "not a NotificationAdapter (it needs `name` and `send(message)`)"
        )
    if adapter.name != candidate.name:
        raise AdapterConfigError(
            f"channel {candidate.name!r} ({candidate.source}) returned an adapter named "
            f"{adapter.name!r}; the entry point's name and the adapter's `name` must match"
        )
    return adapter


def load_adapters(
    settings: Settings, extra: Iterable[NotificationAdapter] = ()
) -> dict[str, NotificationAdapter]:
    """Return the adapters for the channels enabled in *settings*, by name, plus *extra*.

    Built-in adapters and entry points are built only for enabled channels
    (``SANGKIEN_CHANNELS``); every adapter in *extra* is returned whatever the settings say.
    Raise :class:`AdapterConfigError` when a name is claimed twice (by a built-in, an entry
    point or *extra*), when an enabled channel has no adapter, or when building one fails.
    """
    candidates = _candidates(extra)
    enabled = list(dict.fromkeys(settings.channel_names()))
    missing = [name for name in enabled if name not in candidates]
    if missing:
        raise AdapterConfigError(
            f"no adapter for channel{'s' if len(missing) > 1 else ''} "
            f"{', '.join(repr(m) for m in missing)} in SANGKIEN_CHANNELS; available: "
            f"{', '.join(sorted(candidates))} (install the package that provides it or "
            "remove it from SANGKIEN_CHANNELS)"
        )
    adapters: dict[str, NotificationAdapter] = {}
    for name in enabled:
        adapters[name] = _build(candidates[name], settings)
    for name, candidate in candidates.items():
        if candidate.instance is not None and name not in adapters:
            adapters[name] = candidate.instance
    return adapters


def known_channel_names() -> list[str]:
    """Return the sorted names of the built-in and installed (entry-point) adapters."""
    return sorted({*BUILTIN_ADAPTERS, *(ep.name for ep in _discovered())})
