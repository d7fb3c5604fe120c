"""Value objects the engine hands out: actors, instances, history events, trigger options."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["Actor", "Event", "Instance", "TriggerOption"]


@dataclass(frozen=True, slots=True)
class Actor:
    """Who acts: an id, the roles they hold in their unit, and that unit."""

    id: str
    roles: frozenset[str] = frozenset()
    unit: str | None = None

    def __init__(self, id: str, roles: Iterable[str] = (), unit: str | None = None) -> None:
        object.__setattr__(self, "id", id)
        object.__setattr__(self, "roles", frozenset(roles))
        object.__setattr__(self, "unit", unit)

    @classmethod
    def system(cls, reason: str = "system") -> Actor:
        """The engine itself (deadline escalations): holds only the reserved role ``system``."""
        return cls(id=reason, roles={"system"}, unit=None)

    @property
    def is_system(self) -> bool:
        return self.roles == frozenset({"system"}) and self.unit is None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "roles": sorted(self.roles), "unit": self.unit}


@dataclass(frozen=True, slots=True)
class Instance:
    """A snapshot of one workflow instance (an initiative, a campaign, ...)."""

    id: str
    workflow: str
    workflow_version: int
    state: str
    state_entered_at: datetime
    data: Mapping[str, Any]
    unit: str
    parent_id: str | None
    external_ref: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    version: int
    replayed: bool = field(default=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workflow": self.workflow,
            "workflow_version": self.workflow_version,
            "state": self.state,
            "state_entered_at": self.state_entered_at.isoformat(),
            "data": dict(self.data),
            "unit": self.unit,
            "parent_id": self.parent_id,
            "external_ref": self.external_ref,
            "created_by": self.created_by,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, replayed: bool = False) -> Instance:
        return cls(
            id=d["id"],
            workflow=d["workflow"],
            workflow_version=d["workflow_version"],
            state=d["state"],
            state_entered_at=datetime.fromisoformat(d["state_entered_at"]),
            data=dict(d["data"]),
            unit=d["unit"],
            parent_id=d["parent_id"],
            external_ref=d["external_ref"],
            created_by=d["created_by"],
            created_at=datetime.fromisoformat(d["created_at"]),
            updated_at=datetime.fromisoformat(d["updated_at"]),
            version=d["version"],
            replayed=replayed,
        )


@dataclass(frozen=True, slots=True)
class Event:
    """One entry of an instance's append-only, hash-chained history."""

    instance_id: str
    seq: int
    kind: str
    trigger: str | None
    from_state: str | None
    to_state: str
    actor_id: str
    actor_roles: tuple[str, ...]
    actor_unit: str | None
    at: datetime
    data_delta: Mapping[str, Any]
    comment: str | None
    prev_hash: str
    hash: str
    detail: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "seq": self.seq,
            "kind": self.kind,
            "trigger": self.trigger,
            "from_state": self.from_state,
            "to_state": self.to_state,
            "actor": {
                "id": self.actor_id,
                "roles": list(self.actor_roles),
                "unit": self.actor_unit,
            },
            "at": self.at.isoformat(),
            "data_delta": dict(self.data_delta),
            "comment": self.comment,
            "detail": dict(self.detail) if self.detail is not None else None,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True, slots=True)
class TriggerOption:
    """A trigger leaving the current state, and whether this actor may fire it now."""

    trigger: str
    to_state: str | None
    allowed: bool
    reasons: tuple[str, ...] = ()
    label: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "trigger": self.trigger,
            "to_state": self.to_state,
            "allowed": self.allowed,
            "reasons": list(self.reasons),
            "label": self.label,
        }
