"""Test doubles for hosts testing their own workflows with sangkien.

from sangkien.testing import FrozenClock, engine_for_tests

def test_my_workflow(tmp_path):
    engine = engine_for_tests(tmp_path, workflows=["workflows/my.yaml"])
    ...

:class:`RecordingAdapter` stands in for a delivery channel and keeps what it was sent;
:class:`AdapterContract` is the test suite every adapter should pass, for authors of
third-party adapters to subclass in their own tests. :class:`WebhookReceiver` is a real
Standard Webhooks receiver on 127.0.0.1 for tests of webhook delivery. Nothing here needs
pytest at import.
"""

from __future__ import annotations

import json
import random
import threading
import time
import unittest
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal, NoReturn

from sangkien.clock import FrozenClock
from sangkien.definition import Definition
from sangkien.notifications import (
    DeliveryError,
    NotificationAdapter,
    OutgoingMessage,
    PermanentFailure,
    TemporaryFailure,
)
from sangkien.runtime import Engine
from sangkien.units import UnitTree

__all__ = [
    "AdapterContract",
    "FrozenClock",
    "RecordingAdapter",
    "WebhookReceiver",
    "engine_for_tests",
]


def engine_for_tests(
    tmp_path: Path,
    *,
    workflows: Iterable[Definition | str | Path] = (),
    clock: FrozenClock | None = None,
    units: UnitTree | None = None,
) -> Engine:
    """Return an Engine on a fresh SQLite file under *tmp_path* with a frozen clock."""
    return Engine(
        f"sqlite:///{tmp_path / 'sangkien-test.db'}",
        workflows=workflows,
        clock=clock or FrozenClock(),
        units=units,
        migrate=True,
    )


class RecordingAdapter:
    """A delivery channel that keeps every message it delivers, in order.

    ``messages`` holds the delivered messages; ``attempts`` every call to ``send``, failed
    ones included. Tell it to fail with :meth:`fail_next` (or ``fail_times=`` at
    construction): the next N sends raise TemporaryFailure (or PermanentFailure with
    ``permanent=True``) and deliver nothing. Safe to share between threads.
    """

    def __init__(
        self,
        name: str = "recording",
        *,
        fail_times: int = 0,
        permanent: bool = False,
    ) -> None:
        if not name:
            raise ValueError("an adapter needs a non-empty name")
        self.name = name
        self.messages: list[OutgoingMessage] = []
        self.attempts: list[OutgoingMessage] = []
        self._lock = threading.Lock()
        self._failures_left = 0
        self._failure: Literal["temporary", "permanent"] = "temporary"
        self._reason = ""
        if fail_times:
            self.fail_next(fail_times, permanent=permanent)

    def __repr__(self) -> str:
        return f"RecordingAdapter(name={self.name!r}, delivered={len(self.messages)})"

    def fail_next(self, times: int = 1, *, permanent: bool = False, reason: str = "") -> None:
        """Make the next *times* sends fail, temporarily or (``permanent=True``) for good."""
        if times < 0:
            raise ValueError(f"times must be zero or more, not {times!r}")
        with self._lock:
            self._failures_left = times
            self._failure = "permanent" if permanent else "temporary"
            self._reason = reason

    def send(self, message: OutgoingMessage) -> None:
        """Record *message*, or raise the failure it was told to raise."""
        with self._lock:
            self.attempts.append(message)
            if self._failures_left > 0:
                self._failures_left -= 1
                reason = self._reason or f"{self._failure} failure requested by the test"
                text = f"message {message.id!r} on {self.name!r}: {reason}"
                if self._failure == "permanent":
                    raise PermanentFailure(text)
                raise TemporaryFailure(text)
            self.messages.append(message)

    @property
    def ids(self) -> list[str]:
        """Ids of the delivered messages, in delivery order (a redelivery appears twice)."""
        with self._lock:
            return [m.id for m in self.messages]

    def to(self, recipient: str) -> list[OutgoingMessage]:
        """Return the delivered messages addressed to *recipient*."""
        with self._lock:
            return [m for m in self.messages if m.recipient == recipient]

    def clear(self) -> None:
        """Forget every message and attempt (pending failures are kept)."""
        with self._lock:
            self.messages.clear()
            self.attempts.clear()


# Vietnamese with every kind of diacritic (precomposed NFC, as sent by the engine)
_VIETNAMESE_SUBJECT = "Thông báo: sáng kiến “Cải tiến quy trình” đã được công nhận"
_VIETNAMESE_BODY = (
    "Kính gửi ông Nguyễn Văn Ấn,\n"
    "Hội đồng sáng kiến cấp cơ sở đã họp và công nhận sáng kiến của ông. "
    "Ỷ Ỹ Ỵ ỳ ữ ặ ẫ đ Đ ơ ư ợ ở."
)


class WebhookReceiver:
    """A Standard Webhooks receiver on 127.0.0.1, in a thread: checks each request's
    signature and counts message ids.

    ::

        with WebhookReceiver(secret) as hooks:
            engine = Engine(url, subscribers=[Subscriber(url=f"{hooks.url}/events")])
            ...  # start, fire, run a Dispatcher
            assert len(hooks.ids) == len(set(hooks.ids))  # nothing arrived twice

    A request is answered 204 and its ``webhook-id`` appended to :attr:`ids` when it is
    signed with *secret* and its JSON body's ``id`` is that id; else it is answered 401
    and counted in :attr:`bad`. With *fail*, that share of good requests is answered 503
    instead (counted in :attr:`refused`; *seed* makes the choice repeatable), for the
    sender to retry. *delay* seconds are spent on each answer (settable while it runs). A
    request cut short because its sender died mid-send is counted in :attr:`torn` only.
    """

    def __init__(
        self, secret: str, *, fail: float = 0.0, seed: int | None = None, delay: float = 0.0
    ) -> None:
        from sangkien.adapters.webhook import verify

        self.delay = delay
        self.ids: list[str] = []
        self.bad = 0
        self.refused = 0
        self.torn = 0
        self.lock = threading.Lock()
        rng = random.Random(seed)
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                declared = self.headers.get("content-length")
                raw = self.rfile.read(int(declared)) if declared else b""
                if declared is None or len(raw) < int(declared):
                    # the sender died mid-send (httpx writes the headers and the body
                    # apart): nothing was delivered and nobody awaits an answer
                    with state.lock:
                        state.torn += 1
                    return
                msg_id = self.headers.get("webhook-id")
                good = verify(secret, self.headers, raw) and _body_id(raw) == msg_id
                with state.lock:
                    if not good:
                        state.bad += 1
                        status = 401
                    elif fail and rng.random() < fail:
                        state.refused += 1
                        status = 503
                    else:
                        state.ids.append(str(msg_id))
                        status = 204
                if state.delay:
                    time.sleep(state.delay)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def seen(self) -> int:
        """How many requests were accepted so far."""
        with self.lock:
            return len(self.ids)

    def close(self) -> None:
        """Stop listening."""
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _body_id(raw: bytes) -> object:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body.get("id") if isinstance(body, dict) else None


def _leaves(value: object) -> Iterable[str]:
    """Every key and scalar inside a JSON-like value, as text (newlines in strings kept)."""
    if isinstance(value, Mapping):
        for key, inner in value.items():
            yield str(key)
            yield from _leaves(inner)
    elif isinstance(value, list | tuple):
        for inner in value:
            yield from _leaves(inner)
    elif value is not None:
        yield str(value)


def _as_text(item: object) -> str:
    """What a receiver got, as searchable text; JSON is searched by its decoded strings."""
    if isinstance(item, OutgoingMessage):
        return "\n".join(_leaves(asdict(item)))
    if isinstance(item, Mapping | list | tuple):
        return "\n".join(_leaves(item))
    if isinstance(item, bytes | bytearray):
        text = bytes(item).decode("utf-8", "replace")
    else:
        text = str(item)
    if text.lstrip()[:1] in ("{", "["):
        try:
            return text + "\n" + "\n".join(_leaves(json.loads(text)))
        except ValueError:
            pass
    return text


def _skip(reason: str) -> NoReturn:
    try:
        import pytest
    except ImportError:  # unittest and pytest both honour SkipTest
        raise unittest.SkipTest(reason) from None
    pytest.skip(reason)


class AdapterContract:
    """The behaviour every NotificationAdapter must have; subclass it in your tests.

    A subclass named ``Test...`` implements :meth:`make_adapter` (an adapter wired to a
    receiver the test can read, e.g. a local HTTP server) and :meth:`received` (what that
    receiver got, one item per delivery), and may override :meth:`make_message` (e.g. to
    give a valid recipient) and :meth:`make_failing_adapter`::

        class TestSmsGateway(AdapterContract):
            def make_adapter(self):
                return SmsGatewayAdapter(url=self.server.url, token="t")

            def make_message(self, **overrides):
                return super().make_message(recipient="+84901234567", **overrides)

            def received(self):
                return self.server.bodies  # each a dict, str or bytes

    An item of :meth:`received` is what the far side saw for one delivery, decoded to
    text: a ``str``, UTF-8 ``bytes``, a mapping or list (searched by its keys and values; a
    JSON ``str`` or ``bytes`` is decoded too), or an :class:`OutgoingMessage`. The contract
    looks in it for the message id and for the Vietnamese subject or body, unchanged. Tests
    that do not apply are skipped.
    """

    #: the default recipient of :meth:`make_message`
    recipient = "nguyen.van.an@example.vn"

    # --- to implement

    def make_adapter(self) -> NotificationAdapter:
        """Return the adapter under test, delivering to a receiver :meth:`received` reads."""
        raise NotImplementedError("implement make_adapter() in your AdapterContract subclass")

    def received(self) -> Sequence[object]:
        """Return what the receiver got so far, one item per delivery (see the class doc)."""
        raise NotImplementedError("implement received() in your AdapterContract subclass")

    # --- may override

    def make_message(self, **overrides: Any) -> OutgoingMessage:
        """Return a message for the adapter under test; *overrides* replace fields."""
        import uuid

        fields: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "kind": "notification",
            "channel": str(getattr(self._adapter(), "name", "") or "test"),
            "recipient": self.recipient,
            "recipient_name": "Nguyễn Văn Ấn",
            "subject": _VIETNAMESE_SUBJECT,
            "body": _VIETNAMESE_BODY,
            "instance_id": "inst-0001",
        }
        fields.update(overrides)
        return OutgoingMessage(**fields)

    def make_failing_adapter(self) -> NotificationAdapter | None:
        """Return an adapter whose receiver is unreachable or refuses, or None to skip."""
        return None

    # --- helpers

    def _adapter(self) -> NotificationAdapter:
        if not hasattr(self, "_contract_adapter"):
            self._contract_adapter = self.make_adapter()
        return self._contract_adapter

    def teardown_method(self, method: object = None) -> None:
        """Close the adapter under test if it has a ``close()`` (call super() if you override)."""
        adapter = self.__dict__.pop("_contract_adapter", None)
        close = getattr(adapter, "close", None)
        if callable(close):
            close()

    def _received_text(self) -> list[str]:
        return [_as_text(item) for item in self.received()]

    def _send_expecting_delivery(self, message: OutgoingMessage) -> None:
        try:
            self._adapter().send(message)
        except DeliveryError as exc:
            raise AssertionError(
                f"{type(self._adapter()).__name__} failed to deliver a valid message: {exc}"
            ) from exc

    # --- the contract

    def test_has_a_name(self) -> None:
        """The adapter has a non-empty str `name`, the channel workflows write."""
        name = getattr(self._adapter(), "name", None)
        assert isinstance(name, str) and name.strip() == name and name, (
            f"adapter name must be a non-empty str without spaces around it, not {name!r}"
        )

    def test_satisfies_the_protocol(self) -> None:
        """The adapter is a NotificationAdapter: a name and a callable send(message)."""
        adapter = self._adapter()
        assert isinstance(adapter, NotificationAdapter)
        assert callable(adapter.send)

    def test_delivers_a_message(self) -> None:
        """A sent message reaches the receiver, carrying its id."""
        message = self.make_message()
        self._send_expecting_delivery(message)
        texts = self._received_text()
        assert texts, "received() is empty after a successful send"
        assert any(message.id in t for t in texts), (
            f"message id {message.id!r} not found in what the receiver got: {texts!r}"
        )

    def test_same_id_twice_is_allowed(self) -> None:
        """Sending one id twice (a retry after a crash) succeeds; receivers dedupe on the id."""
        message = self.make_message()
        self._send_expecting_delivery(message)
        retry = self.make_message(id=message.id, attempt=2)
        self._send_expecting_delivery(retry)
        texts = self._received_text()
        assert any(message.id in t for t in texts)

    def test_vietnamese_text_survives(self) -> None:
        """The Vietnamese subject or body arrives unchanged (UTF-8, no mojibake, NFC kept)."""
        message = self.make_message()
        self._send_expecting_delivery(message)
        mine = [t for t in self._received_text() if message.id in t]
        assert mine, f"message id {message.id!r} not found in what the receiver got"
        assert any(message.subject in t or message.body in t for t in mine), (
            f"neither the subject {message.subject!r} nor the body arrived unchanged: {mine!r}"
        )

    def test_bad_recipient_fails_only_with_delivery_errors(self) -> None:
        """A nonsense recipient is delivered or refused with Temporary/PermanentFailure only."""
        message = self.make_message(recipient="\u0000 not a recipient \u0000")
        try:
            self._adapter().send(message)
        except (TemporaryFailure, PermanentFailure):
            pass
        except Exception as exc:
            raise AssertionError(
                f"send() raised {type(exc).__name__}: {exc}; adapters may only raise "
                "TemporaryFailure or PermanentFailure"
            ) from exc

    def test_unreachable_receiver_fails_only_with_delivery_errors(self) -> None:
        """A receiver that is down or refusing yields Temporary/PermanentFailure, nothing else."""
        failing = self.make_failing_adapter()
        if failing is None:
            _skip("make_failing_adapter() returned None")
        try:
            failing.send(self.make_message())
        except (TemporaryFailure, PermanentFailure):
            return
        except Exception as exc:
            raise AssertionError(
                f"send() raised {type(exc).__name__}: {exc}; adapters may only raise "
                "TemporaryFailure or PermanentFailure"
            ) from exc
        raise AssertionError("make_failing_adapter()'s adapter delivered; it should fail")
