"""Build an Engine and its adapters from Settings: the one place the edges wire things up."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sangkien.runtime import Engine

__all__ = [
    "SettingDoc",
    "adapters_from_settings",
    "dispatcher_from_settings",
    "engine_from_settings",
    "settings_reference",
]


def engine_from_settings(settings: Any, **overrides: Any) -> Engine:
    """An Engine configured from *settings* (database, calendars, directory, templates)."""
    from sangkien.directory import load_directory
    from sangkien.templates import TemplateStore, shipped_templates_dir

    dirs = [p / "templates" for p in settings.workflow_paths() if (p / "templates").is_dir()]
    if shipped_templates_dir() not in dirs:
        dirs.append(shipped_templates_dir())
    kwargs: dict[str, Any] = {
        "calendar_dirs": settings.calendar_dir_paths(),
        "skip_late_reminders": settings.skip_late_reminders,
        "directory": load_directory(settings.directory or None),
        "templates": TemplateStore(dirs),
        "channels": settings.channel_names(),
        "link_pattern": settings.link_pattern,
        "subscribers": settings.subscribers,
    }
    kwargs.update(overrides)
    return Engine(settings.database_url, **kwargs)


def adapters_from_settings(settings: Any) -> dict[str, Any]:
    """The delivery adapters for the enabled channels (fails loudly on misconfiguration)."""
    from sangkien.adapters import load_adapters

    return load_adapters(settings)


def dispatcher_from_settings(engine: Engine, settings: Any, **overrides: Any) -> Any:
    """A Dispatcher for *engine* using the enabled adapters and the retry settings."""
    from sangkien.outbox import Dispatcher

    kwargs: dict[str, Any] = {
        "max_attempts": settings.outbox_max_attempts,
        "backoff": settings.outbox_backoff_seconds,
        "backoff_max": settings.outbox_backoff_max_seconds,
        "lease": settings.outbox_lease_seconds,
    }
    kwargs.update(overrides)
    return Dispatcher(engine, adapters_from_settings(settings), **kwargs)


@dataclass(frozen=True)
class SettingDoc:
    """One ``SANGKIEN_*`` environment variable: its default, its value here, its meaning."""

    variable: str
    default: str
    value: str
    meaning: str


def settings_reference(values: bool = True) -> list[SettingDoc]:
    """Every ``SANGKIEN_*`` variable of the engine and the API, in declaration order.

    With *values*, the value each has in this process's environment (secrets as ``***``);
    raises pydantic's ValidationError if one of them is invalid.
    """
    from pydantic import SecretStr

    from sangkien.api.settings import ApiSettings
    from sangkien.config import Settings

    out = []
    for cls in (Settings, ApiSettings):
        now = cls() if values else None
        prefix = str(cls.model_config.get("env_prefix") or "")
        for name, field in cls.model_fields.items():
            default = field.get_default(call_default_factory=True)
            value = getattr(now, name) if now is not None else None
            secret = isinstance(value, SecretStr) or is_secret_name(name)
            shown = "***" if secret and value else _shown(value)
            out.append(
                SettingDoc(
                    variable=f"{prefix}{name}".upper(),
                    default=_shown(default),
                    value=shown if now is not None else "",
                    meaning=" ".join((field.description or "").split()),
                )
            )
    return out


def is_secret_name(name: str) -> bool:
    """Whether a setting called *name* holds a secret (never shown, never logged)."""
    return any(word in name.lower() for word in ("secret", "password", "token"))


def without_password(text: str) -> str:
    """*text* with the password of any URL in it (``scheme://user:password@host``) masked."""
    import re

    return re.sub(r"(://[^/\s:@]*:)[^/\s@]*@", r"\1***@", text)


def _shown(value: Any) -> str:
    """*value* as it would be written in the environment (URL passwords masked)."""
    if value is None or value == "" or value == []:
        return "(none)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return without_password(",".join(value))
    if isinstance(value, list):
        import json

        items = [v.model_dump() if hasattr(v, "model_dump") else v for v in value]
        return without_password(json.dumps(items))
    return without_password(str(value))
