"""sangkien: a workflow engine for the campaign-to-recognition lifecycle of initiatives.

Administrators describe workflows in YAML; :class:`Engine` runs instances through them,
persisting every change in SQLite or PostgreSQL with a hash-chained history.

    from sangkien import Actor, Engine

    engine = Engine("sqlite:///sangkien.db", workflows=["workflows/leave.yaml"])
    inst = engine.start("leave", actor=Actor("u1", ["employee"], "hr"), data={"days": 3})
"""

from sangkien.clock import Clock, FrozenClock, SystemClock
from sangkien.definition import Definition, load_definition, parse_definition
from sangkien.errors import (
    ConcurrencyConflict,
    DefinitionConflict,
    DefinitionError,
    HistoryTampered,
    IdempotencyKeyReused,
    InstanceNotFound,
    InvalidData,
    Problem,
    SangkienError,
    SchemaOutOfDate,
    StoreError,
    TransitionNotAllowed,
    WorkflowNotFound,
)
from sangkien.model import Actor, Event, Instance, TriggerOption
from sangkien.runtime import Engine
from sangkien.units import FlatUnits, StaticUnitTree, UnitTree

__all__ = [
    "Actor",
    "Clock",
    "ConcurrencyConflict",
    "Definition",
    "DefinitionConflict",
    "DefinitionError",
    "Engine",
    "Event",
    "FlatUnits",
    "FrozenClock",
    "HistoryTampered",
    "IdempotencyKeyReused",
    "Instance",
    "InstanceNotFound",
    "InvalidData",
    "Problem",
    "SangkienError",
    "SchemaOutOfDate",
    "StaticUnitTree",
    "StoreError",
    "SystemClock",
    "TransitionNotAllowed",
    "TriggerOption",
    "UnitTree",
    "WorkflowNotFound",
    "load_definition",
    "parse_definition",
]
