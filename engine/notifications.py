"""The notification contract: messages, adapters, and how failures are classed.

An adapter receives an immutable :class:`OutgoingMessage` (never an ORM row) and either
returns (delivered) or raises :class:`TemporaryFailure` (retry with backoff) or
:class:`PermanentFailure` (dead-letter at once). Each message carries a stable ``id``: a
message retried after a crash is sent again with the same id, so receivers deduplicate.

Adapters are found by name: the built-in ones (``log``, ``email``, ``webhook``) and any
third-party adapter registered in the ``sangkien.adapters`` entry-point group. Two adapters
with one name, or a configured channel with no adapter, fail loudly at start-up.

    SangkienError
    └── DeliveryError
        ├── TemporaryFailure     the channel may accept it later (timeouts, 5xx, 429, 4xx SMTP)
        └── PermanentFailure     it never will (bad address, 4xx HTTP, 5xx SMTP, no recipient)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from sangkien.errors import SangkienError

__all__ = [
    "ADAPTER_ENTRY_POINT_GROUP",
    "DeliveryError",
    "NotificationAdapter",
    "OutgoingMessage",
    "PermanentFailure",
    "TemporaryFailure",
]

ADAPTER_ENTRY_POINT_GROUP = "sangkien.adapters"


class DeliveryError(SangkienError):
    """An adapter could not deliver a message."""


class TemporaryFailure(DeliveryError):
    """Delivery failed but may succeed later: the dispatcher retries with backoff."""


class PermanentFailure(DeliveryError):
    """Delivery can never succeed: the dispatcher marks the message dead at once."""


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to one recipient on one channel, as stored in the outbox.

    ``kind`` is ``"notification"`` (a person is told something: subject and body) or
    ``"event"`` (a host platform follows along: ``payload`` is the versioned event).
    """

    id: str
    kind: str
    channel: str
    recipient: str
    subject: str = ""
    body: str = ""
    payload: Mapping[str, Any] = field(default_factory=dict)
    recipient_name: str | None = None
    instance_id: str | None = None
    attempt: int = 1


@runtime_checkable
class NotificationAdapter(Protocol):
    """A delivery channel. ``name`` is what workflows write in ``channels:``."""

    name: str

    def send(self, message: OutgoingMessage) -> None:
        """Deliver *message* or raise TemporaryFailure / PermanentFailure."""
        ...
