"""Workflow definitions: the YAML language as pydantic models, loaded and checked.

The models here are the single source of the language: ``sangkien schema`` prints their
JSON Schema and docs/workflow-language.md documents them key by key. A :class:`Definition`
is the immutable, validated result of loading one file; it never executes anything from it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sangkien._yaml import Located, load_yaml
from sangkien.errors import DefinitionError, Problem
from sangkien.expressions import CompiledExpression

__all__ = [
    "SYSTEM_ROLE",
    "ClockSpec",
    "DeadlineSpec",
    "Definition",
    "EscalationStep",
    "FieldSpec",
    "Guard",
    "NotifySpec",
    "RoleSpec",
    "StartSpec",
    "StateSpec",
    "TransitionSpec",
    "Workflow",
    "load_definition",
    "parse_definition",
]

SYSTEM_ROLE = "system"
"""Reserved role of the engine itself (deadline escalations); never granted to people."""

NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}$"
_NAME = re.compile(NAME_PATTERN)

Name = Annotated[str, Field(pattern=NAME_PATTERN, description="lower_snake_case identifier")]
Label = Annotated[
    str | dict[Annotated[str, Field(pattern=r"^[a-z]{2}(-[A-Za-z]{2})?$")], str],
    Field(description="Text shown to people: a string, or one string per language code (vi, en)."),
]
Expression = Annotated[
    str,
    Field(min_length=1, description="A CEL expression (see 'Expressions' in the language docs)."),
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RoleSpec(_Model):
    """A role people can hold in a unit."""

    label: Label | None = None
    description: str | None = None
    holder: Literal["unit", "starter"] = Field(
        "unit",
        description="'unit': granted by the actor's roles in the instance's unit. "
        "'starter': held on an instance only by the person who started it (e.g. author).",
    )


FieldType = Literal[
    "string", "text", "integer", "number", "boolean", "date", "datetime", "enum", "list", "object"
]


class FieldSpec(_Model):
    """One entry of instance data, validated on start and on every transition."""

    type: FieldType = Field(description="Value type.")
    required: bool = Field(False, description="Must be present from the start and never cleared.")
    label: Label | None = None
    description: str | None = None
    values: list[str] | None = Field(None, description="Allowed values; for type enum.")
    min: float | None = Field(None, description="Smallest allowed value (integer, number).")
    max: float | None = Field(None, description="Largest allowed value (integer, number).")
    min_length: int | None = Field(None, ge=0, description="Shortest length (string, text, list).")
    max_length: int | None = Field(None, ge=0, description="Longest length (string, text, list).")
    pattern: str | None = Field(None, description="Regular expression a string must match.")
    items: Literal["string", "integer", "number", "boolean", "object"] | None = Field(
        None, description="Type of each element; for type list."
    )
    default: Any = Field(None, description="Value set on start when none is given.")

    @field_validator("pattern")
    @classmethod
    def _pattern_compiles(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(
                    f"pattern does not compile as a regular expression: {exc}"
                ) from None
        return v


DurationText = Annotated[
    str,
    Field(
        min_length=1,
        description="A period: '10 working days', '1 month', '3 days', '2 weeks', '4 hours', "
        "'30 minutes', '1 year', or ISO 8601 ('P1M', 'P10D', 'PT4H').",
    ),
]


class NotifySpec(_Model):
    """Who to tell, and with which message template and channels."""

    to: list[str] = Field(
        min_length=1,
        description="Recipients: role names (resolved in the instance's unit), 'author' "
        "(whoever started the instance), 'actor' (whoever acted), or literal addresses.",
    )
    template: Name | None = Field(None, description="Message template name.")
    channels: list[Name] | None = Field(None, description="Channels (default: all configured).")


NotifyItem = Annotated[
    str | NotifySpec,
    Field(description="A recipient (role, 'author', 'actor') or a {to, template, channels} item."),
]


class EscalationStep(_Model):
    """What happens once a deadline has passed by *after*."""

    after: DurationText = Field(
        "0 days", description="Delay after the due time ('0 days': at due)."
    )
    label: Label | None = None
    notify: list[NotifyItem] = Field(default_factory=list, description="Who is told.")
    fire: Name | None = Field(
        None, description="Trigger fired by the engine (its roles must include 'system')."
    )
    set: dict[Name, Expression] = Field(
        default_factory=dict, description="Fields set by expression when the step runs."
    )


class DeadlineSpec(_Model):
    """When a state (or a clock) is due, with reminders before and escalations after."""

    label: Label | None = None
    after: DurationText | None = Field(
        None, description="Period counted from entering the state (or from 'from')."
    )
    from_: Expression | None = Field(
        None,
        alias="from",
        description="Expression giving the date or time the period counts from "
        "(e.g. data.first_applied_on); needs 'after'.",
    )
    at: Expression | None = Field(
        None, description="Expression giving the due date or time itself (no 'after')."
    )
    remind: list[DurationText] = Field(
        default_factory=list, description="Reminders, each this long before the due day."
    )
    notify: list[NotifyItem] = Field(
        default_factory=list, description="Who receives the reminders and the overdue notice."
    )
    escalate: list[EscalationStep] = Field(
        default_factory=list, description="Steps taken after the due time, in order."
    )


class ClockSpec(DeadlineSpec):
    """A named deadline that runs across several states and pauses in others."""

    runs_in: list[Name] = Field(min_length=1, description="States in which the clock runs.")
    pauses_in: list[Name] = Field(
        default_factory=list, description="States in which it waits (time there is not counted)."
    )
    starts_on: list[Name] | None = Field(
        None,
        description="Triggers that start the clock (default: entering a 'runs_in' state).",
    )
    stops_on: list[Name] = Field(
        default_factory=list,
        description="Triggers that stop the clock (it also stops in any state outside "
        "runs_in and pauses_in).",
    )


class StateSpec(_Model):
    """One state of the workflow."""

    label: Label | None = None
    description: str | None = None
    initial: bool = Field(False, description="Instances start here; exactly one state has it.")
    final: bool = Field(False, description="No transition leaves a final state.")
    deadline: DeadlineSpec | None = Field(None, description="When the state is due.")
    notify: list[NotifyItem] = Field(
        default_factory=list, description="Who is told when an instance enters the state."
    )


class Guard(_Model):
    """A guard with the message shown to people when it refuses."""

    check: Expression = Field(description="CEL expression that must be true.")
    message: Label | None = Field(None, description="Why the action is refused, for people.")


When = Annotated[
    Expression | list[Expression | Guard],
    Field(
        description="Guard(s): one CEL expression, or a list of expressions and "
        "{check, message} items that must all be true."
    ),
]


def guards_of(when: Any) -> list[tuple[str, Any]]:
    """Return the (expression, message) pairs of a ``when`` value, in order."""
    if when is None:
        return []
    if isinstance(when, str):
        return [(when, None)]
    return [(g, None) if isinstance(g, str) else (g.check, g.message) for g in when]


class StartSpec(_Model):
    """Who may start an instance, and under which condition."""

    roles: list[Name] | None = Field(
        None, description="Roles allowed to start (any role in the unit when omitted)."
    )
    when: When | None = Field(None, description="Guard(s) evaluated before starting.")
    requires: list[Name] = Field(default_factory=list, description="Fields that must be given.")
    accepts: list[Name] | None = Field(
        None, description="Fields the starter may give (any declared field when omitted)."
    )
    set: dict[Name, Expression] = Field(
        default_factory=dict, description="Fields computed on start, by expression."
    )


class TransitionSpec(_Model):
    """A trigger that moves instances from one or more states to another."""

    trigger: Name = Field(description="Name of the action, e.g. register.")
    source: Name | list[Name] = Field(
        alias="from", description="State or list of states it leaves; '*' is not supported."
    )
    to: Name | None = Field(
        None, description="State it enters; omit to stay in the same state (a recorded action)."
    )
    roles: list[Name] = Field(min_length=1, description="Roles allowed to fire it.")
    label: Label | None = None
    description: str | None = None
    when: When | None = Field(None, description="Guard(s) that must be true.")
    requires: list[Name] = Field(
        default_factory=list, description="Fields that must have a value after the transition."
    )
    accepts: list[Name] | None = Field(
        None, description="Fields the actor may send with it (any declared field when omitted)."
    )
    set: dict[Name, Expression] = Field(
        default_factory=dict, description="Fields computed by expression when it fires."
    )
    comment: Literal["optional", "required"] = Field(
        "optional", description="'required' for refusals and requests that must give reasons."
    )
    notify: list[NotifyItem] = Field(
        default_factory=list, description="Who is told when the transition happens."
    )

    @property
    def sources(self) -> list[str]:
        return [self.source] if isinstance(self.source, str) else list(self.source)


class Workflow(_Model):
    """A workflow definition file."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        populate_by_name=True,
        title="sangkien workflow",
        json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"},
    )

    workflow: Name = Field(description="Key of the workflow, e.g. initiative.")
    version: int = Field(ge=1, description="Bump it whenever the file changes once in use.")
    title: Label
    description: str | None = None
    calendar: Name = Field("vn", description="Business calendar for working-day deadlines.")
    parent: Name | None = Field(
        None, description="Key of the workflow whose instances own this one's (e.g. campaign)."
    )
    roles: list[Name] | dict[Name, RoleSpec] = Field(description="Roles used by this workflow.")
    fields: dict[Name, FieldSpec] = Field(default_factory=dict, description="Instance data.")
    start: StartSpec = Field(default_factory=StartSpec)
    states: dict[Name, StateSpec] = Field(min_length=1)
    transitions: list[TransitionSpec] = Field(default_factory=list)
    clocks: dict[Name, ClockSpec] = Field(
        default_factory=dict, description="Named deadlines spanning several states."
    )

    @property
    def role_specs(self) -> dict[str, RoleSpec]:
        if isinstance(self.roles, dict):
            return dict(self.roles)
        return {name: RoleSpec() for name in self.roles}


@dataclass(frozen=True)
class Definition:
    """An immutable, validated workflow with its compiled expressions."""

    model: Workflow
    source: str
    file: str
    content_hash: str
    expressions: Mapping[str, CompiledExpression] = field(default_factory=dict)
    warnings: tuple[Problem, ...] = ()

    @property
    def key(self) -> str:
        return self.model.workflow

    @property
    def version(self) -> int:
        return self.model.version

    @property
    def initial_state(self) -> str:
        return next(name for name, s in self.model.states.items() if s.initial)

    @cached_property
    def has_deadlines(self) -> bool:
        return bool(self.model.clocks) or any(s.deadline for s in self.model.states.values())

    @cached_property
    def starter_roles(self) -> frozenset[str]:
        return frozenset(n for n, r in self.model.role_specs.items() if r.holder == "starter")

    def expression(self, source: str) -> CompiledExpression:
        return self.expressions[source]

    def label(self, state: str, lang: str = "vi") -> str:
        spec = self.model.states.get(state)
        return _text(spec.label if spec else None, lang) or state

    def title(self, lang: str = "vi") -> str:
        return _text(self.model.title, lang) or self.key

    def coerce_for_cel(self, data: Mapping[str, Any]) -> dict[str, Any]:
        """Return *data* with date/datetime fields as aware datetimes for expressions."""
        from sangkien.expressions import to_cel

        out: dict[str, Any] = {}
        fields = self.model.fields
        for k, v in data.items():
            spec = fields.get(k)
            if spec is not None and isinstance(v, str) and spec.type in ("date", "datetime"):
                out[k] = to_cel(_parse_temporal(v, spec.type))
            else:
                out[k] = to_cel(v)
        return out


def _text(label: Any, lang: str) -> str | None:
    if label is None:
        return None
    if isinstance(label, str):
        return label
    return label.get(lang) or label.get("vi") or next(iter(label.values()), None)


def _parse_temporal(value: str, kind: str) -> date | datetime:
    if kind == "date":
        return date.fromisoformat(value)
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --------------------------------------------------------------------------- loading


def load_definition(path: str | Path) -> Definition:
    """Read, parse and validate a workflow file; raise :class:`DefinitionError` if invalid."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DefinitionError(
            [Problem(str(path), 1, 1, f"cannot read file: {exc.strerror}")]
        ) from None
    return parse_definition(raw, str(path))


def parse_definition(source: str | bytes, file: str = "<string>") -> Definition:
    """Parse and validate workflow YAML given as text or bytes."""
    from sangkien.validation import check_semantics

    located = load_yaml(source, file)
    text = source.decode("utf-8") if isinstance(source, bytes) else source
    if not isinstance(located.data, dict):
        raise DefinitionError(
            [
                located.problem(
                    (),
                    "expected a mapping with 'workflow', 'version', "
                    "'states', 'transitions' at the top level",
                )
            ]
        )
    try:
        model = Workflow.model_validate(located.data)
    except ValidationError as exc:
        raise DefinitionError(_structural_problems(exc, located)) from None
    expressions, problems = check_semantics(model, located)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise DefinitionError(sorted(problems, key=lambda p: (p.line, p.column)))
    canonical = json.dumps(
        model.model_dump(mode="json", by_alias=True),
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return Definition(
        model=model,
        source=text,
        file=file,
        content_hash=hashlib.sha256(canonical.encode()).hexdigest(),
        expressions=expressions,
        warnings=tuple(problems),
    )


def _structural_problems(exc: ValidationError, located: Located) -> list[Problem]:
    problems: dict[tuple[int, int, str], Problem] = {}
    for err in _pick_union_members(exc.errors(), located.data):
        path = _data_path(located.data, err["loc"])
        message = _message(err, path)
        at_key = err["type"] == "extra_forbidden" or (err["loc"] and err["loc"][-1] == "[key]")
        prob = located.problem(path, message, key=bool(at_key))
        problems.setdefault((prob.line, prob.column, prob.message), prob)
    # unknown keys first at a place: "did you mean" explains the "missing" beside it
    order = {True: 0, False: 1}
    return sorted(
        problems.values(), key=lambda p: (p.line, p.column, order["unknown key" in p.message])
    )


_MODEL_TAGS = {
    "RoleSpec",
    "FieldSpec",
    "Guard",
    "StartSpec",
    "NotifySpec",
    "EscalationStep",
    "DeadlineSpec",
    "ClockSpec",
    "StateSpec",
    "TransitionSpec",
}


def _member_shape(part: Any) -> type | None:
    """The input shape a pydantic union-member tag in an error location expects."""
    if not isinstance(part, str):
        return None
    if part in ("str", "constrained-str"):
        return str
    if part.startswith("list["):
        return list
    if part.startswith("dict[") or part in _MODEL_TAGS:
        return dict
    return None


def _pick_union_members(errors: list[Any], data: Any) -> list[Any]:
    """Drop errors from union members whose shape does not match the input's shape."""
    groups: dict[tuple[Any, ...], list[tuple[bool, Any]]] = {}
    for err in errors:
        cur = data
        mismatch = False
        prefix: tuple[Any, ...] | None = None
        for n, part in enumerate(err["loc"]):
            want = _member_shape(part)
            if want is not None:
                if prefix is None:
                    prefix = tuple(err["loc"][:n])
                if cur is not None and not isinstance(cur, want):
                    mismatch = True
                    break
                continue
            if (isinstance(cur, dict) and part in cur) or (
                isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
            ):
                cur = cur[part]
            else:
                cur = None
        key = prefix if prefix is not None else tuple(err["loc"])
        groups.setdefault(key, []).append((mismatch, err))
    kept = []
    for members in groups.values():
        good = [e for m, e in members if not m]
        kept.extend(good or [members[0][1]])
    return kept


def _data_path(data: Any, loc: tuple[Any, ...]) -> tuple[str | int, ...]:
    """Keep the loc elements that name real keys/indexes (dropping union member tags)."""
    path: list[str | int] = []
    cur = data
    for part in loc:
        in_dict = isinstance(cur, dict) and isinstance(part, str) and part in cur
        in_list = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        if in_dict or in_list:
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, dict) and isinstance(part, str) and _looks_like_key(part):
            path.append(part)  # an unknown or missing key: point at it or at its mapping
            cur = None
    return tuple(path)


def _looks_like_key(part: str) -> bool:
    return bool(re.match(r"^[A-Za-z_][\w-]*$", part)) and not part.startswith(("list", "dict"))


def _model_at(path: tuple[str | int, ...]) -> type[BaseModel] | None:
    """Resolve which model class owns the mapping at *path* (for key suggestions)."""
    ann: Any = Workflow
    for part in path:
        ann = _unwrap(ann)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            f = next((f for n, f in ann.model_fields.items() if (f.alias or n) == part), None)
            if f is None:
                return None
            ann = f.annotation
        else:
            origin = typing.get_origin(ann)
            args = typing.get_args(ann)
            if origin in (list, dict) and args:
                ann = args[-1]
            else:
                return None
    ann = _unwrap(ann)
    return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None


def _unwrap(ann: Any) -> Any:
    while True:
        origin = typing.get_origin(ann)
        if origin is Annotated:
            ann = typing.get_args(ann)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            containers = [a for a in args if typing.get_origin(a) in (list, dict)]
            ann = (
                models
                or [a for a in containers if typing.get_origin(a) is dict]
                or containers
                or args
            )[0]
        else:
            return ann


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [f.alias or n for n, f in model.model_fields.items()]


_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "dict_type": "a mapping",
    "list_type": "a list",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _message(err: Any, path: tuple[str | int, ...]) -> str:
    kind = err["type"]
    loc = err["loc"]
    where = str(path[-1]) if path else "file"
    if kind == "extra_forbidden":
        key = str(loc[-1])
        owner = _model_at(path[:-1])
        allowed = _keys_of(owner) if owner else []
        hint = difflib.get_close_matches(key, allowed, n=1)
        msg = f"unknown key {key!r}"
        if hint:
            msg += f"; did you mean {hint[0]!r}?"
        if allowed:
            msg += f" (allowed: {', '.join(allowed)})"
        return msg
    if kind == "missing":
        return f"missing required key {str(loc[-1])!r}"
    got = err.get("input")
    shown = (
        json.dumps(got, ensure_ascii=False, default=str)
        if not isinstance(got, dict)
        else "a mapping"
    )
    if kind in _TYPE_WORDS:
        return f"{where}: expected {_TYPE_WORDS[kind]}, got {shown}"
    if kind == "string_pattern_mismatch":
        if loc and loc[-1] == "[key]":
            return f"{shown} is not a valid name (use lower_snake_case: letters, digits, _)"
        return f"{where}: {shown} is not a valid name (use lower_snake_case: letters, digits, _)"
    if kind == "string_too_short":
        return f"{where}: must not be empty"
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{where}: {shown} is not allowed; expected {expected}"
    if kind in ("greater_than_equal", "too_short", "too_long", "less_than_equal"):
        return f"{where}: {err['msg'].lower()}"
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    return f"{where}: {msg}"


def workflow_json_schema() -> dict[str, Any]:
    """Return the JSON Schema of the workflow language (for editors)."""
    return Workflow.model_json_schema(by_alias=True)


def is_name(value: str) -> bool:
    return bool(_NAME.match(value))


__all__ += ["guards_of", "is_name", "workflow_json_schema"]
