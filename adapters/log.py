"""LogAdapter: delivery as one structured log line, for development and audits."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from sangkien.notifications import OutgoingMessage

if TYPE_CHECKING:
    from sangkien.config.settings import Settings

__all__ = ["LogAdapter"]


class LogAdapter:
    """Write one log line per message; never fails.

    The line carries the message's ids, channel, recipient and subject. The body and an
    event's payload are left out: they may hold personal data or secrets, and the outbox
    keeps them anyway.
    """

    name = "log"

    def __init__(self, logger: Any = None) -> None:
        self._log = logger if logger is not None else structlog.get_logger("sangkien.notifications")

    @classmethod
    def from_settings(cls, settings: Settings) -> LogAdapter:
        """Return a LogAdapter; it has no settings of its own."""
        return cls()

    def send(self, message: OutgoingMessage) -> None:
        """Log *message* (without its body or payload)."""
        fields: dict[str, Any] = {
            "message_id": message.id,
            "kind": message.kind,
            "channel": message.channel,
            "recipient": message.recipient,
            "instance_id": message.instance_id,
            "subject": message.subject,
            "attempt": message.attempt,
        }
        if message.kind == "event":
            event_type = message.payload.get("type")
            if isinstance(event_type, str):
                fields["event_type"] = event_type
        self._log.info("notification_delivered", **fields)

    def __repr__(self) -> str:
        return "LogAdapter()"
