"""Request and response bodies of the REST API (they make the OpenAPI document precise)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sangkien.deadlines import DeadlineStatus
from sangkien.definition import Definition
from sangkien.errors import Problem as DefinitionProblem
from sangkien.model import Event, Instance, TriggerOption
from sangkien.outbox import OutboxMessage

__all__ = [
    "CampaignStats",
    "DeadlineOut",
    "EventOut",
    "ExtendRequest",
    "FireRequest",
    "InstanceOut",
    "InstancePage",
    "OutboxMessageOut",
    "OutboxPage",
    "Problem",
    "RetryRequest",
    "RetryResult",
    "StartRequest",
    "TriggerOut",
    "ValidationReport",
    "WorkflowDetail",
    "WorkflowSummary",
]

_Id = Field(min_length=1, max_length=128)


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- problems


class ProblemLocation(BaseModel):
    """One finding in a workflow file (1-based line and column)."""

    line: int
    column: int
    severity: Literal["error", "warning"]
    message: str

    @classmethod
    def of(cls, p: DefinitionProblem) -> ProblemLocation:
        return cls(line=p.line, column=p.column, severity=p.severity, message=p.message)


class FieldError(BaseModel):
    """One invalid part of a request."""

    loc: list[str] = Field(description="Where: e.g. ['body', 'data'] or ['query', 'limit'].")
    message: str
    type: str


class Problem(BaseModel):
    """An error, as RFC 9457 problem details (media type application/problem+json)."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI naming the kind of problem (urn:sangkien:problem:...).")
    title: str
    status: int
    detail: str = Field(description="What went wrong and what to do, for people.")
    instance: str = Field(description="Path of the request that failed.")
    request_id: str = Field(description="Quote it to the operators: the logs carry it.")
    reasons: list[str] | None = Field(
        None, description="Each rule that refused a start or a trigger."
    )
    trigger: str | None = None
    problems: list[ProblemLocation] | None = Field(None, description="Findings in a workflow file.")
    errors: list[FieldError] | None = Field(None, description="Invalid parts of the request.")
    current_state: str | None = Field(
        None, description="State of the instance after the concurrent change."
    )
    expected_version: int | None = None


# --------------------------------------------------------------------------- workflows


class WorkflowSummary(BaseModel):
    """A published workflow (its newest version)."""

    key: str
    version: int
    versions: list[int] = Field(description="Every published version, oldest first.")
    title: str
    description: str | None
    parent: str | None = Field(description="Workflow whose instances own this one's.")
    initial_state: str
    states: list[str]
    final_states: list[str]
    triggers: list[str]

    @classmethod
    def of(cls, d: Definition, versions: list[int], lang: str) -> WorkflowSummary:
        wf = d.model
        return cls(
            key=d.key,
            version=d.version,
            versions=versions,
            title=d.title(lang),
            description=wf.description,
            parent=wf.parent,
            initial_state=d.initial_state,
            states=list(wf.states),
            final_states=[n for n, s in wf.states.items() if s.final],
            triggers=sorted({t.trigger for t in wf.transitions}),
        )


class WorkflowDetail(WorkflowSummary):
    """A workflow version: its YAML source and the same as JSON."""

    source: str = Field(description="The YAML as published.")
    definition: dict[str, Any] = Field(
        description="The parsed definition (shape: `sangkien schema`)."
    )

    @classmethod
    def of_detail(cls, d: Definition, versions: list[int], lang: str) -> WorkflowDetail:
        base = WorkflowSummary.of(d, versions, lang)
        return cls(
            **base.model_dump(),
            source=d.source,
            definition=d.model.model_dump(mode="json", by_alias=True, exclude_none=True),
        )


class ValidationReport(BaseModel):
    """The result of checking a workflow file: the same findings as `sangkien validate`."""

    valid: bool
    workflow: str | None = Field(None, description="Its key, if it could be read.")
    version: int | None = None
    problems: list[ProblemLocation]


class SourceBody(_In):
    """A workflow's YAML, sent as JSON."""

    source: str = Field(max_length=1_000_000)


# --------------------------------------------------------------------------- instances


class InstanceOut(BaseModel):
    """One workflow instance (an initiative, a campaign...)."""

    id: str
    workflow: str
    workflow_version: int
    state: str
    state_entered_at: datetime
    data: dict[str, Any]
    unit: str
    parent_id: str | None
    external_ref: str | None
    created_by: str
    created_at: datetime
    updated_at: datetime
    version: int = Field(description="Optimistic-lock version: send it as expected_version.")

    @classmethod
    def of(cls, inst: Instance) -> InstanceOut:
        return cls.model_validate(inst.to_dict())


class InstancePage(BaseModel):
    """One page of instances; pass next_cursor as `cursor` for the next one."""

    items: list[InstanceOut]
    next_cursor: str | None = Field(description="Null on the last page.")


class StartRequest(_In):
    """Start an instance of a workflow."""

    workflow: str = Field(min_length=1, max_length=64)
    version: int | None = Field(None, ge=1, description="Default: the newest version.")
    unit: str | None = Field(None, max_length=128, description="Default: the caller's unit.")
    data: dict[str, Any] = Field(default_factory=dict)
    parent: str | None = Field(None, max_length=36, description="Parent instance id.")
    external_ref: str | None = Field(None, max_length=255, description="Id in the host system.")
    comment: str | None = Field(None, max_length=10_000)


class FireRequest(_In):
    """Fire a trigger on an instance."""

    trigger: str = Field(min_length=1, max_length=64)
    data: dict[str, Any] = Field(default_factory=dict)
    comment: str | None = Field(None, max_length=10_000)
    expected_version: int | None = Field(
        None, ge=1, description="Refuse (409) if the instance changed since this version."
    )


class TriggerOut(BaseModel):
    """A trigger leaving the current state, and whether the caller may fire it now."""

    trigger: str
    to_state: str | None = Field(description="Null for an action that keeps the state.")
    allowed: bool
    reasons: list[str]
    label: str | None

    @classmethod
    def of(cls, t: TriggerOption) -> TriggerOut:
        return cls.model_validate(t.to_dict())


class ActorOut(BaseModel):
    """Who acted."""

    id: str
    roles: list[str]
    unit: str | None


class EventOut(BaseModel):
    """One entry of an instance's hash-chained history."""

    instance_id: str
    seq: int
    kind: str
    trigger: str | None
    from_state: str | None
    to_state: str
    actor: ActorOut
    at: datetime
    data_delta: dict[str, Any]
    comment: str | None
    detail: dict[str, Any] | None
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, e: Event) -> EventOut:
        return cls.model_validate(e.to_dict())


class DeadlineOut(BaseModel):
    """An open deadline as supervisors see it."""

    instance_id: str
    workflow: str
    unit: str
    state: str
    deadline: str = Field(description="'state:<state>' or 'clock:<clock>'.")
    label: str | None
    title: str | None
    due_at: datetime
    status: str
    overdue: bool
    late_by_seconds: int = Field(description="Negative while not yet due.")
    working_days_late: int
    escalation_step: int
    escalation_steps: int
    next_action_at: datetime | None

    @classmethod
    def of(cls, d: DeadlineStatus) -> DeadlineOut:
        return cls.model_validate(d.to_dict())


class ExtendRequest(_In):
    """Move an instance's open deadline(s) later; the reason is recorded in history."""

    reason: str = Field(min_length=1, max_length=10_000)
    by: str | None = Field(None, max_length=64, description="Period to add: '10 working days'.")
    until: date | None = Field(None, description="New due date (end of that day).")
    deadline: str | None = Field(
        None, max_length=64, description="Only this deadline ('state' or a clock name)."
    )

    @model_validator(mode="after")
    def _one_of(self) -> ExtendRequest:
        if (self.by is None) == (self.until is None):
            raise ValueError("give either `by` (a period) or `until` (a date)")
        if not self.reason.strip():
            raise ValueError("a reason is required to extend a deadline")
        return self


# --------------------------------------------------------------------------- campaigns


class CampaignStats(BaseModel):
    """What happened inside a campaign: its child instances the caller can see."""

    campaign: InstanceOut
    total: int
    by_state: dict[str, int]
    by_unit: dict[str, dict[str, int]] = Field(description="unit -> state -> count.")
    recognized: list[InstanceOut] = Field(description="Children in the recognized state.")


# --------------------------------------------------------------------------- outbox


class OutboxMessageOut(BaseModel):
    """One outbox row (a notification or a webhook) and its delivery state."""

    id: str
    kind: str
    channel: str
    recipient: str
    recipient_name: str | None
    instance_id: str | None
    template: str | None
    subject: str
    status: str = Field(description="pending, delivering, delivered or dead.")
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    created_at: datetime
    delivered_at: datetime | None
    body: str | None = None
    payload: dict[str, Any] | None = None

    @classmethod
    def of(cls, m: OutboxMessage, *, full: bool = False) -> OutboxMessageOut:
        return cls.model_validate(m.to_dict(full=full))


class OutboxPage(BaseModel):
    """Outbox messages, newest first, with the number of rows per status."""

    items: list[OutboxMessageOut]
    counts: dict[str, int]


class RetryRequest(_In):
    """Which dead messages to queue again: ids, one instance's, or all of them."""

    ids: list[str] = Field(default_factory=list, max_length=1000)
    instance: str | None = Field(None, max_length=36)
    all_dead: bool = False

    @model_validator(mode="after")
    def _one_of(self) -> RetryRequest:
        given = sum([bool(self.ids), self.instance is not None, self.all_dead])
        if given != 1:
            raise ValueError("give exactly one of `ids`, `instance` or `all_dead: true`")
        return self


class RetryResult(BaseModel):
    """How many dead messages were queued again."""

    retried: int


# --------------------------------------------------------------------------- operations


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Readiness: the database answers."""

    status: Literal["ready"]
    database: str
