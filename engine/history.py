"""Hash chain over each instance's history: any edit, deletion or reordering shows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from json.encoder import encode_basestring
from typing import Any

__all__ = ["GENESIS", "ChainBreak", "event_hash", "verify_chain"]

GENESIS = "0" * 64

# one encoder, built once: json.dumps with options builds a new one per call
_CANONICAL = json.JSONEncoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str
).encode
_quote = encode_basestring  # how that encoder writes a string (ensure_ascii=False)


def _null_or_quote(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def event_hash(
    *,
    prev_hash: str,
    instance_id: str,
    seq: int,
    kind: str,
    trigger: str | None,
    from_state: str | None,
    to_state: str,
    actor_id: str,
    actor_roles: Sequence[str],
    actor_unit: str | None,
    at: datetime,
    data_delta: Mapping[str, Any],
    comment: str | None,
    detail: Mapping[str, Any] | None = None,
) -> str:
    """Return the SHA-256 of the event's canonical JSON, chained to *prev_hash*."""
    if (
        type(seq) is int
        and type(data_delta) is dict
        and (detail is None or type(detail) is dict)
        and type(actor_roles) in (list, tuple)
    ):
        try:  # the same JSON as below, put together directly (it runs on every transition)
            body = ",".join(
                (
                    _quote(prev_hash),
                    _quote(instance_id),
                    int.__repr__(seq),
                    _quote(kind),
                    _null_or_quote(trigger),
                    _null_or_quote(from_state),
                    _quote(to_state),
                    _quote(actor_id),
                    "[" + ",".join(map(_quote, sorted(actor_roles))) + "]",
                    _null_or_quote(actor_unit),
                    _quote(at.isoformat(timespec="microseconds")),
                    _CANONICAL(data_delta) if data_delta else "{}",
                    _null_or_quote(comment),
                    "null" if detail is None else _CANONICAL(detail),
                )
            )
            return hashlib.sha256(f"[{body}]".encode()).hexdigest()
        except TypeError:  # a value of another type: the encoder decides, as below
            pass
    body = _CANONICAL(
        [
            prev_hash,
            instance_id,
            seq,
            kind,
            trigger,
            from_state,
            to_state,
            actor_id,
            sorted(actor_roles),
            actor_unit,
            at.isoformat(timespec="microseconds"),
            data_delta,
            comment,
            detail,
        ]
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """Where an instance's chain fails to verify, and why."""

    instance_id: str
    seq: int
    reason: str

    def __str__(self) -> str:
        return f"instance {self.instance_id}: event {self.seq}: {self.reason}"


def verify_chain(
    instance_id: str,
    rows: Iterable[Any],
    head: tuple[int, str],
    current: tuple[str, Mapping[str, Any]] | None = None,
) -> list[ChainBreak]:
    """Check *rows* (ordered by seq) chain from genesis to the instance's stored *head*."""
    breaks: list[ChainBreak] = []
    prev = GENESIS
    expected_seq = 1
    state: str | None = None
    data: dict[str, Any] = {}
    for r in rows:
        if state is not None and r.from_state != state:
            breaks.append(
                ChainBreak(
                    instance_id,
                    r.seq,
                    f"starts from state {r.from_state!r} but the previous event ended in {state!r}",
                )
            )
        state = r.to_state
        data.update(r.data_delta)
        if r.seq != expected_seq:
            breaks.append(
                ChainBreak(
                    instance_id,
                    r.seq,
                    f"expected event {expected_seq}; an event is missing or was reordered",
                )
            )
            expected_seq = r.seq
        if r.prev_hash != prev:
            breaks.append(
                ChainBreak(instance_id, r.seq, "prev_hash does not match the previous event")
            )
        computed = event_hash(
            prev_hash=r.prev_hash,
            instance_id=r.instance_id,
            seq=r.seq,
            kind=r.kind,
            trigger=r.trigger,
            from_state=r.from_state,
            to_state=r.to_state,
            actor_id=r.actor_id,
            actor_roles=r.actor_roles,
            actor_unit=r.actor_unit,
            at=r.at,
            data_delta=r.data_delta,
            comment=r.comment,
            detail=r.detail,
        )
        if computed != r.hash:
            breaks.append(
                ChainBreak(
                    instance_id, r.seq, "content does not match its hash (the event was altered)"
                )
            )
        prev = r.hash
        expected_seq += 1
    if current is not None and expected_seq > 1:  # some history was read
        cur_state, cur_data = current
        if cur_state != state:
            breaks.append(
                ChainBreak(
                    instance_id,
                    expected_seq - 1,
                    f"instance is in state {cur_state!r} but its history ends in {state!r}",
                )
            )
        if _canon(cur_data) != _canon(data):
            breaks.append(
                ChainBreak(
                    instance_id,
                    expected_seq - 1,
                    "instance data differs from what its history records",
                )
            )
    last_seq, last_hash = head
    if expected_seq - 1 != last_seq or prev != last_hash:
        breaks.append(
            ChainBreak(
                instance_id,
                expected_seq - 1,
                f"history ends at event {expected_seq - 1} but the instance "
                f"records {last_seq} events (events deleted or added)",
            )
        )
    return breaks


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
