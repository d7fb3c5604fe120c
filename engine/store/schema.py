"""Tables of the sangkien store (SQLAlchemy Core). Alembic migrations own the real schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

__all__ = [
    "api_idempotency",
    "deadlines",
    "definitions",
    "events",
    "idempotency",
    "instances",
    "metadata",
    "outbox",
    "timers",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC in and out, on every backend (SQLite keeps no zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Json: Any = JSON().with_variant(JSONB(), "postgresql")
Id = String(36)
# SQLite only autoincrements an INTEGER PRIMARY KEY (the rowid alias)
BigId = BigInteger().with_variant(Integer(), "sqlite")

definitions = Table(
    "sk_definitions",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("version", Integer, primary_key=True),
    Column("content_hash", String(64), nullable=False),
    Column("source", Text, nullable=False),
    Column("registered_at", UTCDateTime, nullable=False),
)

instances = Table(
    "sk_instances",
    metadata,
    Column("id", Id, primary_key=True),
    Column("workflow", String(64), nullable=False),
    Column("workflow_version", Integer, nullable=False),
    Column("state", String(64), nullable=False),
    Column("state_entered_at", UTCDateTime, nullable=False),
    Column("data", Json, nullable=False),
    Column("unit", String(128), nullable=False),
    Column("parent_id", Id, ForeignKey("sk_instances.id"), nullable=True),
    Column("external_ref", String(255), nullable=True),
    Column("created_by", String(128), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    # optimistic lock: every change is UPDATE ... WHERE version = :read_version
    Column("version", Integer, nullable=False),
    # head of the history hash chain, so a transition never reads the event table
    Column("last_seq", Integer, nullable=False),
    Column("last_hash", String(64), nullable=False),
    # seq of the event that entered the current state: timers check they belong to this entry
    Column("entered_seq", Integer, nullable=False, server_default="1"),
    Index(None, "workflow", "state"),
    Index(None, "unit", "workflow", "state"),
    Index(None, "parent_id"),
    Index(None, "external_ref"),
)

events = Table(
    "sk_events",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("instance_id", Id, ForeignKey("sk_instances.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("trigger", String(64), nullable=True),
    Column("from_state", String(64), nullable=True),
    Column("to_state", String(64), nullable=False),
    Column("actor_id", String(128), nullable=False),
    Column("actor_roles", Json, nullable=False),
    Column("actor_unit", String(128), nullable=True),
    Column("at", UTCDateTime, nullable=False),
    Column("data_delta", Json, nullable=False),
    Column("comment", Text, nullable=True),
    # what a deadline event was about (deadline, due time, step, recipients, reasons)
    Column("detail", Json, nullable=True),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    UniqueConstraint("instance_id", "seq"),
)

idempotency = Table(
    "sk_idempotency",
    metadata,
    Column("actor_id", String(128), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    Column("instance_id", Id, nullable=False),
    Column("result", Json, nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

deadlines = Table(
    "sk_deadlines",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("instance_id", Id, ForeignKey("sk_instances.id"), nullable=False),
    # 'state' (name = the state) or 'clock' (name = the clock)
    Column("kind", String(8), nullable=False),
    Column("name", String(64), nullable=False),
    Column("entry_seq", Integer, nullable=False),
    # active | paused | closed
    Column("status", String(16), nullable=False),
    Column("workflow", String(64), nullable=False),
    Column("unit", String(128), nullable=False),
    Column("calendar", String(64), nullable=False),
    # what the due time is computed from, so it can be recomputed when the calendar changes
    Column("anchor_at", UTCDateTime, nullable=True),
    Column("period", String(64), nullable=True),
    Column("base_due_at", UTCDateTime, nullable=False),
    Column("shifts", Json, nullable=False),
    Column("due_at", UTCDateTime, nullable=False),
    Column("paused_at", UTCDateTime, nullable=True),
    Column("escalations_done", Integer, nullable=False),
    Column("calendar_fingerprint", String(64), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
    Column("closed_at", UTCDateTime, nullable=True),
    Index(None, "instance_id", "status"),
    # every state change closes the instance's open deadline: a lookup in the open ones
    # only, which the planner prefers to the due-time index even before statistics exist
    Index(
        "ix_sk_deadlines_open_instance",
        "instance_id",
        "kind",
        postgresql_where=text("status = 'active'"),
        sqlite_where=text("status = 'active'"),
    ),
    # supervision: what is overdue or due soon reads only open deadlines, by due time
    Index(
        "ix_sk_deadlines_open_due",
        "due_at",
        postgresql_where=text("status = 'active'"),
        sqlite_where=text("status = 'active'"),
    ),
)

timers = Table(
    "sk_timers",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("deadline_id", BigId, ForeignKey("sk_deadlines.id"), nullable=False),
    Column("instance_id", Id, nullable=False),
    # remind | due | escalate
    Column("kind", String(16), nullable=False),
    Column("step", Integer, nullable=False),
    Column("fire_at", UTCDateTime, nullable=False),
    # pending | fired | skipped | cancelled
    Column("status", String(16), nullable=False),
    Column("fired_at", UTCDateTime, nullable=True),
    Column("note", Text, nullable=True),
    Index(None, "deadline_id", "status"),
    # the runner's claim query: only pending timers are indexed, so a tick costs O(due)
    Index(
        "ix_sk_timers_pending_fire_at",
        "fire_at",
        "id",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
)

outbox = Table(
    "sk_outbox",
    metadata,
    # stable message id: a redelivery after a crash carries the same id (receivers dedupe)
    Column("id", Id, primary_key=True),
    # notification (a person) | event (a host platform's webhook)
    Column("kind", String(16), nullable=False),
    Column("channel", String(32), nullable=False),
    Column("recipient", String(512), nullable=False),
    Column("recipient_id", String(128), nullable=True),
    Column("recipient_name", String(255), nullable=True),
    Column("instance_id", Id, nullable=True),
    Column("event_seq", Integer, nullable=True),
    Column("template", String(64), nullable=True),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("payload", Json, nullable=False),
    # pending | delivering | delivered | dead
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_at", UTCDateTime, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_until", UTCDateTime, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("delivered_at", UTCDateTime, nullable=True),
    Index(None, "instance_id"),
    # the dispatcher's claim reads only what is waiting, so delivered history does not slow it
    Index(
        "ix_sk_outbox_pending",
        "next_attempt_at",
        "id",
        postgresql_where=text("status = 'pending'"),
        sqlite_where=text("status = 'pending'"),
    ),
    Index(
        "ix_sk_outbox_leased",
        "lease_until",
        postgresql_where=text("status = 'delivering'"),
        sqlite_where=text("status = 'delivering'"),
    ),
    Index(
        "ix_sk_outbox_dead",
        "created_at",
        postgresql_where=text("status = 'dead'"),
        sqlite_where=text("status = 'dead'"),
    ),
)

api_idempotency = Table(
    "sk_api_idempotency",
    metadata,
    Column("actor_id", String(128), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("request_hash", String(64), nullable=False),
    # running | done
    Column("status", String(16), nullable=False),
    Column("status_code", Integer, nullable=True),
    Column("body", Json, nullable=True),
    Column("created_at", UTCDateTime, nullable=False),
    Column("lease_until", UTCDateTime, nullable=True),
)
