"""Exceptions raised by sangkien.

Every error the engine raises derives from :class:`SangkienError`::

    SangkienError
    ├── DefinitionError            a workflow file is invalid (carries every Problem found)
    ├── DefinitionConflict         a changed workflow reuses a version that instances already use
    ├── WorkflowNotFound           no definition with that key (and version) is registered
    ├── InstanceNotFound           no instance with that id (or not visible to the caller)
    ├── TransitionNotAllowed       a trigger was refused; ``reasons`` says which rule refused it
    │   └── InvalidData            incoming data does not match the workflow's fields
    ├── ConcurrencyConflict        another writer changed the instance first; reload and retry
    ├── IdempotencyKeyReused       an idempotency key was replayed with a different request
    ├── HistoryTampered            an instance's hash chain does not verify
    ├── StoreError                 the database refused or failed (translated driver error)
    │   ├── StoreConflict          a concurrent writer inserted first; retrying is safe
    │   └── SchemaOutOfDate        the database needs ``sangkien db upgrade``
    ├── CalendarError, DurationError   (sangkien.calendar) bad calendar data or period text
    ├── DirectoryError             (sangkien.directory) a malformed directory file
    ├── TemplateError              (sangkien.templates) a message template fails to render
    └── DeliveryError              (sangkien.notifications) an adapter could not deliver
        ├── TemporaryFailure       retried with backoff
        └── PermanentFailure       dead-lettered at once

Messages name the ids involved and say what to do next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ConcurrencyConflict",
    "DefinitionConflict",
    "DefinitionError",
    "HistoryTampered",
    "IdempotencyKeyReused",
    "InstanceNotFound",
    "InvalidData",
    "Problem",
    "SangkienError",
    "SchemaOutOfDate",
    "StoreConflict",
    "StoreError",
    "TransitionNotAllowed",
    "WorkflowNotFound",
]


class SangkienError(Exception):
    """Root of every error raised by sangkien."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding in a workflow file, positioned for an editor (1-based line and column)."""

    file: str
    line: int
    column: int
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.severity}: {self.message}"


class DefinitionError(SangkienError):
    """A workflow definition is invalid; ``problems`` lists every error and warning found."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        errors = [p for p in self.problems if p.severity == "error"]
        first = str(errors[0]) if errors else "invalid workflow"
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        super().__init__(first + more)


class DefinitionConflict(SangkienError):
    """A workflow's content changed but its version did not, while instances use that version."""


class WorkflowNotFound(SangkienError):
    """No workflow definition is registered under that key and version."""


class InstanceNotFound(SangkienError):
    """No instance with that id exists, or the caller may not see it."""

    def __init__(self, instance_id: str) -> None:
        self.instance_id = instance_id
        super().__init__(f"instance {instance_id!r} not found")


class TransitionNotAllowed(SangkienError):
    """A trigger was refused; ``reasons`` holds one line per rule that refused it."""

    def __init__(self, instance_id: str | None, trigger: str, reasons: Sequence[str]) -> None:
        self.instance_id = instance_id
        self.trigger = trigger
        self.reasons = list(reasons)
        where = f" on instance {instance_id!r}" if instance_id else ""
        super().__init__(f"{trigger!r} refused{where}: " + "; ".join(self.reasons))


class InvalidData(TransitionNotAllowed):
    """Incoming data does not match the workflow's declared fields."""


class ConcurrencyConflict(SangkienError):
    """Another writer changed the instance since it was read; reload it and retry."""

    def __init__(self, instance_id: str, expected_version: int, current_state: str | None) -> None:
        self.instance_id = instance_id
        self.expected_version = expected_version
        self.current_state = current_state
        super().__init__(
            f"instance {instance_id!r} was changed by another writer "
            f"(expected version {expected_version}, now in state {current_state!r}); "
            "reload it and retry"
        )


class IdempotencyKeyReused(SangkienError):
    """The idempotency key was already used for a different request."""


class HistoryTampered(SangkienError):
    """An instance's history does not match its hash chain."""


class StoreError(SangkienError):
    """The database failed or refused an operation."""


class StoreConflict(StoreError):
    """A concurrent writer inserted the same row first; the operation can be retried."""


class SchemaOutOfDate(StoreError):
    """The database schema is behind this version of sangkien; run ``sangkien db upgrade``."""


def first_line(exc: BaseException) -> str:
    """The first line of *exc*'s message (for a log field or a one-line error), or its
    type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
