"""sangkien: a workflow engine for the campaign-to-recognition lifecycle of initiatives.

Administrators describe workflows in YAML; :class:`Engine` runs instances through them,
persisting every change in SQLite or PostgreSQL with a hash-chained history.

    from sangkien import Actor, Engine

    engine = Engine("sqlite:///sangkien.db", workflows=["workflows/leave.yaml"])
    inst = engine.start("leave", actor=Actor("u1", ["employee"], "hr"), data={"days": 3})
"""

from sangkien.calendar import Calendar, CalendarError, Duration, DurationError, load_calendar
from sangkien.clock import Clock, FrozenClock, SystemClock
from sangkien.deadlines import DeadlineStatus, TickResult
from sangkien.definition import Definition, load_definition, parse_definition
from sangkien.directory import (
    Directory,
    DirectoryError,
    Person,
    Unit,
    YamlDirectory,
    load_directory,
)
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
    StoreConflict,
    StoreError,
    TransitionNotAllowed,
    WorkflowNotFound,
)
from sangkien.model import Actor, Event, Instance, TriggerOption
from sangkien.notifications import (
    NotificationAdapter,
    OutgoingMessage,
    PermanentFailure,
    TemporaryFailure,
)
from sangkien.runtime import Engine
from sangkien.templates import TemplateError, TemplateStore
from sangkien.units import FlatUnits, StaticUnitTree, UnitTree

__all__ = [
    "Actor",
    "Calendar",
    "CalendarError",
    "Clock",
    "ConcurrencyConflict",
    "DeadlineStatus",
    "Definition",
    "DefinitionConflict",
    "DefinitionError",
    "Directory",
    "DirectoryError",
    "Duration",
    "DurationError",
    "Engine",
    "Event",
    "FlatUnits",
    "FrozenClock",
    "HistoryTampered",
    "IdempotencyKeyReused",
    "Instance",
    "InstanceNotFound",
    "InvalidData",
    "NotificationAdapter",
    "OutgoingMessage",
    "PermanentFailure",
    "Person",
    "Problem",
    "SangkienError",
    "SchemaOutOfDate",
    "StaticUnitTree",
    "StoreConflict",
    "StoreError",
    "SystemClock",
    "TemplateError",
    "TemplateStore",
    "TemporaryFailure",
    "TickResult",
    "TransitionNotAllowed",
    "TriggerOption",
    "Unit",
    "UnitTree",
    "WorkflowNotFound",
    "YamlDirectory",
    "load_calendar",
    "load_definition",
    "load_directory",
    "parse_definition",
]
