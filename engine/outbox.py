"""The transactional outbox: messages written with the event that causes them, delivered later.

:class:`Notifier` runs inside the transition's transaction. It resolves recipients through
the :class:`~sangkien.directory.Directory`, renders the message template, and inserts one
outbox row per recipient and channel; it also queues a signed, versioned event for every
subscribed host platform. A recipient that cannot be resolved, or a template that cannot be
rendered, becomes a *dead* row with the reason: never silently dropped. If the transaction
rolls back, so do its messages.

:class:`Dispatcher` runs in the worker. It claims rows with a lease (``FOR UPDATE SKIP
LOCKED`` on PostgreSQL) in a short transaction, delivers them through the adapters outside
any transaction, then records the outcome: delivered; retried later with exponential
backoff and jitter on a temporary failure; dead after a permanent failure or too many
attempts. A dispatcher that dies mid-batch leaves leased rows that another one takes over
when the lease expires; they are sent again with the same message id.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
import structlog

from sangkien.errors import InstanceNotFound, SangkienError, first_line
from sangkien.logs import when_committed
from sangkien.notifications import (
    NotificationAdapter,
    OutgoingMessage,
    PermanentFailure,
    TemporaryFailure,
)
from sangkien.store import schema as t
from sangkien.store.writer import StaleConnection

if TYPE_CHECKING:
    from sangkien.definition import Definition
    from sangkien.runtime import Engine

__all__ = [
    "DispatchResult",
    "Dispatcher",
    "MessageNotFound",
    "Notifier",
    "OutboxMessage",
    "event_type",
]

log = structlog.get_logger("sangkien")

EVENT_TYPES = {
    "started": "instance.started",
    "transition": "transition.applied",
    "action": "action.recorded",
    "reminder": "deadline.reminder",
    "reminder_skipped": "deadline.reminder_skipped",
    "deadline_missed": "deadline.missed",
    "escalation": "deadline.escalated",
    "escalation_failed": "deadline.escalation_failed",
    "deadline_extended": "deadline.extended",
    "deadline_recomputed": "deadline.recomputed",
}
DEFAULT_TEMPLATES = {
    "transition": "transition",
    "action": "transition",
    "state_entered": "state_entered",
    "reminder": "reminder",
    "deadline_missed": "deadline_missed",
    "escalation": "escalation",
}


def event_type(kind: str) -> str:
    """The public, versioned type name of a history event kind."""
    return EVENT_TYPES.get(kind, f"event.{kind}")


class MessageNotFound(InstanceNotFound):
    """No outbox message with that id (a 'not found' like a missing instance)."""

    def __init__(self, message_id: str) -> None:
        super().__init__(message_id)
        self.args = (f"message {message_id!r} not found in the outbox",)

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One outbox row as operators see it."""

    id: str
    kind: str
    channel: str
    recipient: str
    recipient_name: str | None
    instance_id: str | None
    template: str | None
    subject: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    body: str = ""
    payload: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self, *, full: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "channel": self.channel,
            "recipient": self.recipient,
            "recipient_name": self.recipient_name,
            "instance_id": self.instance_id,
            "template": self.template,
            "subject": self.subject,
            "status": self.status,
            "attempts": self.attempts,
            "next_attempt_at": self.next_attempt_at.isoformat(),
            "last_error": self.last_error,
            "created_at": self.created_at.isoformat(),
            "delivered_at": self.delivered_at.isoformat() if self.delivered_at else None,
        }
        if full:
            out["body"] = self.body
            out["payload"] = dict(self.payload)
        return out


def _message(row: Any) -> OutboxMessage:
    return OutboxMessage(
        row.id,
        row.kind,
        row.channel,
        row.recipient,
        row.recipient_name,
        row.instance_id,
        row.template,
        row.subject,
        row.status,
        row.attempts,
        row.next_attempt_at,
        row.last_error,
        row.created_at,
        row.delivered_at,
        row.body,
        dict(row.payload or {}),
    )


def _address_channel(address: str) -> str:
    if address.startswith(("http://", "https://")):
        return "webhook"
    if "@" in address and ":" not in address.split("@", 1)[0]:
        return "email"
    return address.split(":", 1)[0]


class Notifier:
    """Turns notify items and history events into outbox rows, inside the transaction."""

    def __init__(
        self,
        engine: Engine,
        *,
        directory: Any = None,
        templates: Any = None,
        channels: Sequence[str] = ("log",),
        link_pattern: str = "",
        subscribers: Sequence[Any] = (),
    ) -> None:
        self.engine = engine
        self.directory = directory
        self.templates = templates
        self.channels = list(channels)
        self.link_pattern = link_pattern
        self.subscribers = list(subscribers)

    # ------------------------------------------------------------ rows

    def _insert(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        # on PostgreSQL the rows join the transition's single-statement write
        if rows and not self.engine._hot.queue_outbox(conn, rows):
            conn.execute(t.outbox.insert(), rows)

    def _row(
        self,
        *,
        kind: str,
        channel: str,
        recipient: str,
        now: datetime,
        instance_id: str | None,
        event_seq: int | None,
        recipient_id: str | None = None,
        recipient_name: str | None = None,
        template: str | None = None,
        subject: str = "",
        body: str = "",
        payload: Mapping[str, Any] | None = None,
        dead_reason: str | None = None,
    ) -> dict[str, Any]:
        from sangkien.runtime import new_id

        if len(recipient) > 512:
            dead_reason = dead_reason or f"address longer than 512 characters: {recipient[:60]}..."
            recipient = recipient[:512]
        if recipient_name is not None and len(recipient_name) > 255:
            recipient_name = recipient_name[:254] + "…"
        if dead_reason:
            when_committed(
                log.warning,
                "outbox.undeliverable",
                instance_id=instance_id,
                channel=channel,
                recipient=recipient,
                reason=dead_reason,
            )
        return {
            "id": new_id(),
            "kind": kind,
            "channel": channel,
            "recipient": recipient,
            "recipient_id": recipient_id,
            "recipient_name": recipient_name,
            "instance_id": instance_id,
            "event_seq": event_seq,
            "template": template,
            "subject": subject,
            "body": body,
            "payload": dict(payload or {}),
            "status": "dead" if dead_reason else "pending",
            "attempts": 0,
            "next_attempt_at": now,
            "lease_owner": None,
            "lease_until": None,
            "last_error": dead_reason,
            "created_at": now,
            "delivered_at": None,
        }

    # ------------------------------------------------------------ event webhooks

    def on_event(
        self, conn: sa.Connection, row: Any, event: Mapping[str, Any], now: datetime
    ) -> None:
        """Queue the event for every subscribed host platform."""
        if not self.subscribers:
            return
        etype = event_type(str(event["kind"]))
        rows = []
        for sub in self.subscribers:
            wanted = list(getattr(sub, "events", None) or ["*"])
            if "*" not in wanted and etype not in wanted:
                continue
            payload = self._event_payload(row, event, etype)
            r = self._row(
                kind="event",
                channel="webhook",
                recipient=str(sub.url),
                now=now,
                instance_id=row.id,
                event_seq=int(event["seq"]),
                subject=etype,
                payload=payload,
            )
            r["payload"] = {**payload, "id": r["id"]}
            rows.append(r)
        self._insert(conn, rows)

    def _event_payload(self, row: Any, event: Mapping[str, Any], etype: str) -> dict[str, Any]:
        actor_id = str(event.get("actor_id"))
        return {
            "type": etype,
            "version": 1,
            "occurred_at": event["at"].isoformat(),
            "data": {
                "instance": {
                    "id": row.id,
                    "workflow": row.workflow,
                    "workflow_version": row.workflow_version,
                    "state": row.state,
                    "unit": row.unit,
                    "parent_id": row.parent_id,
                    "external_ref": row.external_ref,
                    "version": row.version,
                },
                "event": {
                    "seq": event["seq"],
                    "kind": event["kind"],
                    "trigger": event.get("trigger"),
                    "from_state": event.get("from_state"),
                    "to_state": event.get("to_state"),
                    "actor": {
                        "id": actor_id,
                        "roles": list(event.get("actor_roles") or []),
                        "unit": event.get("actor_unit"),
                    },
                    "automatic": actor_id.startswith("system:"),
                    "comment": event.get("comment"),
                    "data_delta": dict(event.get("data_delta") or {}),
                    "detail": dict(event.get("detail") or {}),
                    "hash": event.get("hash"),
                },
            },
        }

    # ------------------------------------------------------------ notifications

    def notify(
        self,
        conn: sa.Connection,
        definition: Definition,
        row: Any,
        items: Sequence[Any],
        *,
        context_kind: str,
        event: Mapping[str, Any],
        now: datetime,
        deadline: Mapping[str, Any] | None = None,
        escalation: bool = False,
    ) -> None:
        """Queue one message per recipient and channel for each notify item."""
        if not items:
            return
        rows: list[dict[str, Any]] = []
        for item in items:
            recipients = [item] if isinstance(item, str) else list(item.to)
            template = None if isinstance(item, str) else item.template
            channels = None if isinstance(item, str) else item.channels
            template = template or DEFAULT_TEMPLATES.get(context_kind, "transition")
            for who in recipients:
                rows.extend(
                    self._for_recipient(
                        definition,
                        row,
                        who,
                        template,
                        channels,
                        event=event,
                        now=now,
                        deadline=deadline,
                        escalation=escalation,
                        context_kind=context_kind,
                    )
                )
        self._insert(conn, rows)

    def _people(
        self,
        row: Any,
        who: str,
        event: Mapping[str, Any],
        escalation: bool,
        starter_roles: frozenset[str] = frozenset(),
    ) -> tuple[list[Any], str | None]:
        """Resolve a recipient to people, or explain why nobody."""
        directory = self.directory
        if who in ("author", "starter", "actor") or who in starter_roles:
            pid = row.created_by if who != "actor" else str(event.get("actor_id"))
            person = directory.person(pid) if directory is not None else None
            if person is None:
                from sangkien.directory import Person

                person = Person(pid, pid, {})
            return [person], None
        role, _, where = who.partition("@")
        if directory is None:
            return [], f"no directory configured to find who holds role {role!r}"
        # a unit abolished since (e.g. a district before 2025-07-01) is served by its successor
        unit: str | None = directory.current(
            row.unit, self.engine.calendar().local_date(self.engine.clock.now())
        )
        if where == "parent":
            unit = directory.parent(row.unit)
            if unit is None:
                return [], f"unit {row.unit!r} has no parent unit to find role {role!r} in"
        seen: list[str] = []
        while unit is not None:
            people = directory.holders(role, unit)
            if people:
                return people, None
            seen.append(unit)
            if not escalation:
                break
            unit = directory.parent(unit)  # escalations climb the hierarchy until someone holds it
        units = " or ".join(repr(u) for u in seen) or repr(row.unit)
        return [], f"no one holds role {role!r} in unit {units}"

    def _for_recipient(
        self,
        definition: Definition,
        row: Any,
        who: str,
        template: str,
        channels: Sequence[str] | None,
        *,
        event: Mapping[str, Any],
        now: datetime,
        deadline: Mapping[str, Any] | None,
        escalation: bool,
        context_kind: str,
    ) -> list[dict[str, Any]]:
        base = {
            "kind": "notification",
            "now": now,
            "instance_id": row.id,
            "event_seq": int(event["seq"]),
            "template": template,
        }
        literal = (
            who.startswith(("http://", "https://"))
            or ":" in who
            or ("@" in who and not who.endswith("@parent"))
        )
        if literal:
            channel = _address_channel(who)
            address = (
                who.split(":", 1)[1] if channel not in ("email", "webhook") and ":" in who else who
            )
            return [
                self._render_row(
                    definition, row, template, channel, address, None, who, base, event, deadline
                )
            ]
        people, why = self._people(row, who, event, escalation, definition.starter_roles)
        if not people:
            chan = (channels or self.channels or ["log"])[0]
            return [
                self._row(channel=chan, recipient=f"role:{who}@{row.unit}", dead_reason=why, **base)
            ]
        out = []
        for person in people:
            wanted = list(channels or self.channels)
            sent = False
            missing = []
            for chan in wanted:
                address = person.id if chan == "log" else person.contacts.get(chan)
                if not address:
                    missing.append(chan)
                    continue
                out.append(
                    self._render_row(
                        definition,
                        row,
                        template,
                        chan,
                        address,
                        person.id,
                        person.name,
                        base,
                        event,
                        deadline,
                    )
                )
                sent = True
            if channels and missing:
                for chan in missing:
                    out.append(
                        self._row(
                            channel=chan,
                            recipient=f"person:{person.id}",
                            recipient_id=person.id,
                            recipient_name=person.name,
                            dead_reason=f"{person.name} ({person.id}) has no "
                            f"{chan} address in the directory",
                            **base,
                        )
                    )
            elif not sent:
                out.append(
                    self._row(
                        channel=wanted[0] if wanted else "log",
                        recipient=f"person:{person.id}",
                        recipient_id=person.id,
                        recipient_name=person.name,
                        dead_reason=f"{person.name} ({person.id}) has no address "
                        f"on any enabled channel ({', '.join(wanted)})",
                        **base,
                    )
                )
        return out

    def _name(self, person_id: Any) -> str | None:
        """The directory's name for *person_id*, if it knows the person."""
        if self.directory is None or not person_id:
            return None
        person = self.directory.person(str(person_id))
        return person.name if person is not None else None

    def _render_row(
        self,
        definition: Definition,
        row: Any,
        template: str,
        channel: str,
        address: str,
        person_id: str | None,
        name: str | None,
        base: dict[str, Any],
        event: Mapping[str, Any],
        deadline: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        if self.templates is None:
            subject = f"{definition.title(self.engine.lang)}: {row.state}"
            return self._row(
                channel=channel,
                recipient=address,
                recipient_id=person_id,
                recipient_name=name,
                subject=subject,
                body=subject,
                **base,
            )
        from sangkien.templates import build_context

        unit_name = None
        if self.directory is not None:
            unit = self.directory.unit(row.unit)
            unit_name = unit.name if unit is not None else None
        try:
            context = build_context(
                definition=definition,
                instance={
                    "id": row.id,
                    "workflow": row.workflow,
                    "state": row.state,
                    "unit": row.unit,
                    "created_by": row.created_by,
                    "external_ref": row.external_ref,
                    "data": dict(row.data),
                    "parent_id": row.parent_id,
                },
                event={
                    "kind": event.get("kind"),
                    "trigger": event.get("trigger"),
                    "from_state": event.get("from_state"),
                    "to_state": event.get("to_state"),
                    "actor_id": event.get("actor_id"),
                    "comment": event.get("comment"),
                    "at": event.get("at"),
                    "actor_name": self._name(event.get("actor_id")),
                },
                deadline=dict(deadline) if deadline else None,
                recipient={"id": person_id or address, "name": name or address},
                link_pattern=self.link_pattern,
                unit_name=unit_name,
                lang=self.engine.lang,
            )
            subject, body = self.templates.render(template, context, self.engine.lang)
        except SangkienError as exc:
            return self._row(
                channel=channel,
                recipient=address,
                recipient_id=person_id,
                recipient_name=name,
                dead_reason=f"template {template!r}: {exc}",
                **base,
            )
        return self._row(
            channel=channel,
            recipient=address,
            recipient_id=person_id,
            recipient_name=name,
            subject=subject,
            body=body,
            **base,
        )


@dataclass
class DispatchResult:
    """What one dispatcher pass did."""

    claimed: int = 0
    delivered: int = 0
    retried: int = 0
    dead: int = 0
    recorded_late: int = 0  # outcomes of an earlier pass's sends, recorded in this one


# the DispatchResult field that counts each outcome
_COUNTED = {"delivered": "delivered", "retry": "retried", "dead": "dead"}


@dataclass(frozen=True)
class _Sent:
    """A claimed row's send: its outcome ("delivered", "retry", "dead"), error, when it
    ended and how long it took."""

    row: Any
    outcome: str
    error: str | None
    at: datetime
    duration_ms: float


@dataclass(frozen=True)
class _Stranded:
    """What a pass the database cut short left leased to this dispatcher."""

    unsent: list[str]  # claimed, never sent
    unrecorded: _Sent | None = None  # sent (or failed), its outcome not yet recorded
    maybe_sent: str | None = None  # interrupted inside its send: it may have gone out


class Dispatcher:
    """Delivers outbox rows through the adapters, with leases, retries and dead letters."""

    def __init__(
        self,
        engine: Engine,
        adapters: Mapping[str, NotificationAdapter],
        *,
        max_attempts: int = 8,
        backoff: float = 30.0,
        backoff_max: float = 3600.0,
        lease: float = 300.0,
        owner: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.engine = engine
        self.adapters = dict(adapters)
        self.max_attempts = max_attempts
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.lease = lease
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"[:64]
        self._rng = rng or random.Random()
        # what a pass the database cut short left leased to us; settled at the next pass
        self._stranded: _Stranded | None = None

    def delay(self, attempts: int) -> float:
        """Seconds before the next try: exponential in *attempts*, with ±50 % jitter."""
        base = min(self.backoff_max, self.backoff * (2 ** max(0, attempts - 1)))
        return float(base * (0.5 + self._rng.random()))

    def claim(self, limit: int, now: datetime) -> list[Any]:
        """Lease up to *limit* due rows to this dispatcher (one short transaction)."""
        o = t.outbox
        due = sa.or_(
            sa.and_(o.c.status == "pending", o.c.next_attempt_at <= now),
            sa.and_(o.c.status == "delivering", o.c.lease_until < now),
        )
        q = sa.select(o.c.id).where(due).order_by(o.c.next_attempt_at, o.c.id).limit(limit)
        if self.engine.dialect == "postgresql":
            q = q.with_for_update(skip_locked=True)
        with self.engine._write() as conn:
            ids = [r.id for r in conn.execute(q)]
            if not ids:
                return []
            conn.execute(
                o.update()
                .where(o.c.id.in_(ids))
                .values(
                    status="delivering",
                    lease_owner=self.owner,
                    lease_until=now + timedelta(seconds=self.lease),
                    attempts=o.c.attempts + 1,
                )
            )
            return list(
                conn.execute(
                    sa.select(o).where(o.c.id.in_(ids)).order_by(o.c.next_attempt_at, o.c.id)
                ).all()
            )

    def dispatch(self, *, limit: int = 100, now: datetime | None = None) -> DispatchResult:
        """Claim and deliver one batch; return what happened.

        A batch can take longer than the lease (a slow receiver, a large batch): every third
        of the lease the dispatcher renews it on the rows it has not sent yet, so that no
        other dispatcher takes them over while it still works. Rows it no longer holds (its
        lease ran out all the same) are left to whoever holds them.
        """
        clock = self.engine.clock
        result = DispatchResult()
        if self._give_back_stranded() is not None:
            result.recorded_late = 1
        renewed = now or clock.now()
        queue = deque(self.claim(limit, renewed))
        result.claimed = len(queue)
        while queue:
            at = now or clock.now()
            if at - renewed >= timedelta(seconds=self.lease / 3):
                try:
                    queue = deque(self._renew(list(queue), at))
                except BaseException:
                    self._stranded = _Stranded(unsent=[r.id for r in queue])
                    raise
                renewed = at
                if not queue:
                    break
            row = queue.popleft()
            started = time.perf_counter()
            try:
                outcome, error = self._send(row)
            except BaseException:
                # the process is stopping inside a send: the message may have gone out
                self._stranded = _Stranded(unsent=[r.id for r in queue], maybe_sent=row.id)
                raise
            sent = _Sent(
                row,
                outcome,
                error,
                at=clock.now() if now is None else now,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            try:
                self._record(sent)
            except BaseException as exc:
                if _database_away(exc, self.engine):
                    # the outcome is known: it is recorded at the next pass (not sent
                    # again), and the rest of the batch goes back then instead of waiting
                    # out its lease
                    self._stranded = _Stranded(unsent=[r.id for r in queue], unrecorded=sent)
                    raise
                try:
                    outcome = self._refused(sent, exc)
                except BaseException:
                    self._stranded = _Stranded(unsent=[r.id for r in queue], maybe_sent=row.id)
                    raise
            setattr(result, _COUNTED[outcome], getattr(result, _COUNTED[outcome]) + 1)
        return result

    def _refused(self, sent: _Sent, exc: BaseException) -> str:
        """The database refused to record *sent*'s outcome (not an outage: it would refuse
        it again). Give the row back as a failed try: due again after the backoff, dead
        after ``max_attempts`` tries; so the message may go out again, a bounded number of
        times, and the batch goes on. Returns the outcome as counted."""
        row = sent.row
        self._log_delivery(sent)
        log.error(
            "outbox.outcome_unrecordable",
            message_id=row.id,
            outcome=sent.outcome,
            error=first_line(exc),
        )
        gone = row.attempts >= self.max_attempts
        o = t.outbox
        mine = sa.and_(o.c.id == row.id, o.c.lease_owner == self.owner, o.c.status == "delivering")
        with self.engine._write() as conn:
            conn.execute(
                o.update()
                .where(mine)
                .values(
                    status="dead" if gone else "pending",
                    lease_owner=None,
                    lease_until=None,
                    last_error=f"the outcome of try {row.attempts} ({sent.outcome}) could not "
                    f"be recorded: {type(exc).__name__}",
                    next_attempt_at=sent.at + timedelta(seconds=self.delay(row.attempts)),
                )
            )
        return "dead" if gone else "retry"

    def settle(self) -> bool:
        """Settle what a pass the database cut short left (see :meth:`dispatch`), if
        anything; return whether nothing is left held. For a worker stopping: a held
        outcome it cannot record now is lost with the process, and that message is sent
        again once its lease runs out (a warning line names it)."""
        if self._stranded is None:
            return True
        try:
            self._give_back_stranded()
        except Exception as exc:
            held = self._stranded
            log.warning(
                "outbox.held_rows_left",
                owner=self.owner,
                unrecorded=held.unrecorded.row.id if held and held.unrecorded else None,
                unsent=len(held.unsent) if held else 0,
                error=first_line(exc),
            )
            return False
        return True

    def _renew(self, rows: list[Any], now: datetime) -> list[Any]:
        """Extend the lease on *rows* still leased to us from *now*; return those rows."""
        o = t.outbox
        ids = [r.id for r in rows]
        held = sa.and_(o.c.id.in_(ids), o.c.lease_owner == self.owner, o.c.status == "delivering")
        with self.engine._write() as conn:  # no RETURNING: SQLite has it only from 3.35
            conn.execute(
                o.update().where(held).values(lease_until=now + timedelta(seconds=self.lease))
            )
            kept = {r.id for r in conn.execute(sa.select(o.c.id).where(held))}
        if len(kept) < len(ids):
            self._lease_lost([i for i in ids if i not in kept])
        return [r for r in rows if r.id in kept]

    def _lease_lost(self, ids: list[str]) -> None:
        """Rows this dispatcher claimed but no longer holds: their lease ran out (another
        dispatcher may be sending them) or they were settled already."""
        log.warning("outbox.lease_lost", owner=self.owner, message_ids=ids)

    def _give_back_stranded(self) -> str | None:
        """Settle what this dispatcher still holds from a pass the database cut short.

        The message whose outcome could not be recorded gets that outcome now: it is not
        sent again. Those never sent are due again at once, their claim's attempt undone.
        A message interrupted inside its send (the process stopping), or whose outcome
        the database refused to record, may have gone out: it is due again and sent again
        (same id), as after a crash but without waiting out the lease. Only rows still
        leased to this dispatcher are touched: one whose lease ran out meanwhile belongs
        to whoever claimed it. If the database is still away, this fails and the pass with
        it. Returns the outcome recorded late, if one was.
        """
        stranded = self._stranded
        if stranded is None:
            return None
        o = t.outbox
        mine = sa.and_(o.c.lease_owner == self.owner, o.c.status == "delivering")
        back = {"status": "pending", "lease_owner": None, "lease_until": None}
        late = stranded.unrecorded
        with self.engine._write() as conn:
            if late is not None and conn.execute(self._outcome(late)).rowcount != 1:
                late = None  # no longer ours: its lease ran out and another holds it
            if stranded.maybe_sent is not None:
                conn.execute(o.update().where(mine, o.c.id == stranded.maybe_sent).values(**back))
            if stranded.unsent:
                conn.execute(
                    o.update()
                    .where(mine, o.c.id.in_(stranded.unsent))
                    .values(**back, attempts=o.c.attempts - 1)
                )
        self._stranded = None
        log.info(
            "outbox.stranded_given_back",
            recorded_late=None if late is None else late.row.id,
            maybe_sent=[stranded.maybe_sent] if stranded.maybe_sent else [],
            unsent=len(stranded.unsent),
        )
        if stranded.unrecorded is not None:
            self._log_delivery(stranded.unrecorded)  # the send happened, recorded or not
            if late is None:
                self._lease_lost([stranded.unrecorded.row.id])
        return None if late is None else late.outcome

    def _send(self, row: Any) -> tuple[str, str | None]:
        """Send one claimed row through its adapter; return its outcome and error."""
        message = OutgoingMessage(
            id=row.id,
            kind=row.kind,
            channel=row.channel,
            recipient=row.recipient,
            subject=row.subject,
            body=row.body,
            payload=dict(row.payload or {}),
            recipient_name=row.recipient_name,
            instance_id=row.instance_id,
            attempt=row.attempts,
        )
        adapter = self.adapters.get(row.channel)
        try:
            if adapter is None:
                raise PermanentFailure(
                    f"no adapter for channel {row.channel!r} "
                    f"(enabled: {', '.join(sorted(self.adapters))})"
                )
            adapter.send(message)
        except PermanentFailure as exc:
            return "dead", _storable(f"permanent: {exc}")
        except TemporaryFailure as exc:
            error = f"temporary: {exc}"
        except Exception as exc:  # an adapter bug must not lose the message
            error = f"temporary: {type(exc).__name__}: {exc}"
        else:
            return "delivered", None
        return ("dead" if row.attempts >= self.max_attempts else "retry"), _storable(error)

    def _record(self, sent: _Sent) -> None:
        """Record a send's outcome (its own transaction), then log it."""
        with self.engine._write() as conn:
            kept = conn.execute(self._outcome(sent)).rowcount == 1
        self._log_delivery(sent)
        if not kept:  # the lease ran out during the send: another dispatcher holds the row
            self._lease_lost([sent.row.id])

    def _log_delivery(self, sent: _Sent) -> None:
        row = sent.row
        log.info(
            "delivery",
            message_id=row.id,
            channel=row.channel,
            kind=row.kind,
            instance_id=row.instance_id,
            attempt=row.attempts,
            outcome=sent.outcome,
            error=sent.error,
            duration_ms=sent.duration_ms,
        )

    def _outcome(self, sent: _Sent) -> sa.Update:
        """The update recording *sent*'s outcome, if its row is still leased to us."""
        o = t.outbox
        row, outcome, error, now = sent.row, sent.outcome, sent.error, sent.at
        mine = sa.and_(o.c.id == row.id, o.c.lease_owner == self.owner, o.c.status == "delivering")
        if outcome == "delivered":
            values: dict[str, Any] = {
                "status": "delivered",
                "delivered_at": now,
                "lease_owner": None,
                "lease_until": None,
                "last_error": None,
            }
        elif outcome == "retry":
            values = {
                "status": "pending",
                "lease_owner": None,
                "lease_until": None,
                "last_error": error,
                "next_attempt_at": now + timedelta(seconds=self.delay(row.attempts)),
            }
        else:
            values = {
                "status": "dead",
                "lease_owner": None,
                "lease_until": None,
                "last_error": error,
            }
        return o.update().where(mine).values(**values)

    def run(self, *, limit: int = 100) -> DispatchResult:
        """Dispatch batches until nothing is due now."""
        total = DispatchResult()
        while True:
            r = self.dispatch(limit=limit)
            for f in fields(DispatchResult):
                setattr(total, f.name, getattr(total, f.name) + getattr(r, f.name))
            if r.claimed < limit:
                return total


def _storable(error: str) -> str:
    """*error* as a database can store it: a server's reply may carry NUL bytes, which
    PostgreSQL refuses in text, or undecodable bytes (lone surrogates), which no UTF-8
    column takes; both are written escaped."""
    return error.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")


def _database_away(exc: BaseException, engine: Engine) -> bool:
    """Whether a failed write failed because the database is away (a restart, a lost
    connection, a lock), and may pass; not because the database refused what was written.
    A stop (KeyboardInterrupt, SystemExit) counts as away: the write itself was fine."""
    if not isinstance(exc, Exception):
        return True
    dbapi = engine.db.dialect.dbapi
    passing = (
        sa.exc.OperationalError,  # connections, restarts, locks, timeouts, a full disk
        sa.exc.InterfaceError,
        sa.exc.TimeoutError,  # no pooled connection free in time
        StaleConnection,
        *((dbapi.OperationalError, dbapi.InterfaceError) if dbapi is not None else ()),
    )
    seen: BaseException | None = exc
    for _ in range(16):  # the chain of causes, and a wrapper's driver error
        if seen is None:
            break
        if isinstance(seen, passing) or getattr(seen, "connection_invalidated", False):
            return True
        # a failover: the write reached a server that is (now) a read-only standby
        if getattr(seen, "sqlstate", None) == "25006":
            return True
        seen = seen.__cause__ or getattr(seen, "orig", None)
    return False


def list_messages(
    engine: Engine, *, status: str | None = None, instance_id: str | None = None, limit: int = 100
) -> list[OutboxMessage]:
    """Outbox rows, newest first, filtered by status and instance."""
    o = t.outbox
    q = sa.select(o).order_by(o.c.created_at.desc(), o.c.id.desc()).limit(limit)
    if status is not None:
        q = q.where(o.c.status == status)
    if instance_id is not None:
        q = q.where(o.c.instance_id == instance_id)
    with engine._read() as conn:
        return [_message(r) for r in conn.execute(q)]


def get_message(engine: Engine, message_id: str) -> OutboxMessage:
    """One outbox row with its body and payload."""
    with engine._read() as conn:
        row = conn.execute(sa.select(t.outbox).where(t.outbox.c.id == message_id)).first()
    if row is None:
        raise MessageNotFound(message_id)
    return _message(row)


def retry_dead(
    engine: Engine,
    *,
    ids: Sequence[str] = (),
    instance_id: str | None = None,
    all_dead: bool = False,
) -> int:
    """Put dead messages back in the queue (attempts reset); return how many."""
    o = t.outbox
    # a message that never had an address (nobody holds the role, no contact) stays dead:
    # requeueing it would only "deliver" it to nobody
    cond = sa.and_(
        o.c.status == "dead",
        sa.not_(o.c.recipient.startswith("role:")),
        sa.not_(o.c.recipient.startswith("person:")),
    )
    if ids:
        cond = sa.and_(cond, o.c.id.in_(list(ids)))
    elif instance_id is not None:
        cond = sa.and_(cond, o.c.instance_id == instance_id)
    elif not all_dead:
        return 0
    now = engine.clock.now()
    with engine._write() as conn:
        n = conn.execute(
            o.update()
            .where(cond)
            .values(status="pending", attempts=0, next_attempt_at=now, last_error=None)
        ).rowcount
    log.info("outbox.retry", count=n, instance_id=instance_id)
    return int(n)


def counts(engine: Engine) -> dict[str, int]:
    """Number of outbox rows per status."""
    o = t.outbox
    with engine._read() as conn:
        return {
            r[0]: int(r[1])
            for r in conn.execute(sa.select(o.c.status, sa.func.count()).group_by(o.c.status))
        }


__all__ += ["counts", "get_message", "list_messages", "retry_dead"]
