"""Routes under /v1/instances: start, list, read, fire, triggers, history and deadlines."""

import base64
import binascii
import json
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from sangkien.api.context import REPLAYED_HEADER, ApiContext, idempotency_header
from sangkien.api.idempotency import IDEMPOTENCY_HEADER
from sangkien.api.problems import ApiError, fast_route
from sangkien.api.schemas import (
    DeadlineOut,
    EventOut,
    ExtendRequest,
    FireRequest,
    InstanceOut,
    InstancePage,
    StartRequest,
    TriggerOut,
)
from sangkien.errors import (
    ConcurrencyConflict,
    InstanceNotFound,
    SangkienError,
    TransitionNotAllowed,
)
from sangkien.model import Actor, Instance

__all__ = ["instances_router"]

_CURSOR_PREFIX = "v1:"
_MAX_ID = 64
_MAX_KEY = 255  # the Idempotency-Key header's max_length
InstanceId = Annotated[str, Path(min_length=1, max_length=_MAX_ID, description="Instance id.")]


def encode_cursor(last_id: str) -> str:
    """An opaque cursor that resumes a listing after *last_id*."""
    return base64.urlsafe_b64encode((_CURSOR_PREFIX + last_id).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The id a cursor resumes after; a 422 problem if it was not made by this API."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raw = ""
    if not raw.startswith(_CURSOR_PREFIX) or len(raw) <= len(_CURSOR_PREFIX):
        raise ApiError(
            422,
            "invalid-cursor",
            "Invalid cursor",
            "cursor is not one this API returned; start again without it",
        )
    return raw[len(_CURSOR_PREFIX) :]


def _replayed(inst: Instance) -> dict[str, str] | None:
    return {REPLAYED_HEADER: "true"} if inst.replayed else None


def _overridden(request: Request) -> bool:
    """Whether the app replaces dependencies (tests do): then FastAPI must solve them."""
    return bool(getattr(request.scope.get("app"), "dependency_overrides", None))


def instances_router(ctx: ApiContext, *, fast: bool = False) -> APIRouter:
    """The instance routes of one API.

    With *fast*, ordinary fires skip FastAPI's dependency solving (see ``fire_fast``): only
    for an app that adds no dependencies of its own to these routes, as :func:`create_app`.
    """
    router = ctx.router("/v1/instances", tags=["instances"])
    engine = ctx.engine
    metrics = ctx.metrics
    actor_dep = Depends(ctx.actor)

    def refused(workflow: str | None, trigger: str, instance_id: str | None = None) -> None:
        """Count a refusal; unknown trigger names share one label (they come from callers)."""
        label = "<unknown>"
        try:
            if workflow is None and instance_id is not None:
                workflow = engine.get(instance_id).workflow
            if workflow is not None:
                d = engine.definition(workflow)
                if trigger == "start" or any(t.trigger == trigger for t in d.model.transitions):
                    label = trigger
        except SangkienError:
            workflow = None
        metrics.refusals.labels(workflow=workflow or "", trigger=label).inc()

    def apply_start(body: StartRequest, actor: Actor, idempotency_key: str | None) -> Response:
        try:
            inst = engine.start(
                body.workflow,
                actor=actor,
                unit=body.unit,
                data=body.data,
                parent=body.parent,
                external_ref=body.external_ref,
                comment=body.comment,
                idempotency_key=idempotency_key,
                version=body.version,
            )
        except TransitionNotAllowed:
            refused(body.workflow, "start")
            raise
        if not inst.replayed:
            metrics.started.labels(workflow=inst.workflow).inc()
        return ctx.model_json(InstanceOut.of(inst), 201, _replayed(inst))

    @router.post(
        "",
        response_model=InstanceOut,
        status_code=201,
        summary="Start an instance",
        responses={201: {"headers": {REPLAYED_HEADER: {"schema": {"type": "string"}}}}},
    )
    async def start(
        body: StartRequest,
        actor: Annotated[Actor, actor_dep],
        idempotency_key: Annotated[str | None, idempotency_header()] = None,
    ) -> Response:
        """Start an instance of a workflow in a unit (default: the caller's)."""
        return await ctx.write(apply_start, body, actor, idempotency_key)

    @router.get("", response_model=InstancePage, summary="List instances")
    def list_instances(
        actor: Annotated[Actor, actor_dep],
        workflow: Annotated[str | None, Query(max_length=64)] = None,
        state: Annotated[str | None, Query(max_length=64)] = None,
        unit: Annotated[str | None, Query(max_length=128)] = None,
        parent: Annotated[str | None, Query(max_length=64)] = None,
        overdue: Annotated[
            bool, Query(description="Only instances with a deadline already past due.")
        ] = False,
        cursor: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> InstancePage:
        """Instances the caller's units cover, oldest first, one page at a time."""
        after = decode_cursor(cursor) if cursor else None
        items: list[Instance] = []
        if overdue:
            source = _overdue_instances(
                ctx, actor, workflow=workflow, state=state, unit=unit, parent=parent, after=after
            )
            for inst in source:
                items.append(inst)
                if len(items) > limit:
                    break
        else:
            items = engine.list(
                workflow=workflow,
                state=state,
                unit=unit,
                parent=parent,
                actor=actor,
                after=after,
                limit=limit + 1,
            )
        more = len(items) > limit
        page = items[:limit]
        return InstancePage(
            items=[InstanceOut.of(i) for i in page],
            next_cursor=encode_cursor(page[-1].id) if more and page else None,
        )

    @router.get("/{instance_id}", response_model=InstanceOut, summary="Read an instance")
    def get_instance(instance_id: InstanceId, actor: Annotated[Actor, actor_dep]) -> InstanceOut:
        """One instance; outside the caller's units it does not exist (404)."""
        return InstanceOut.of(engine.get(instance_id, actor=actor))

    def apply_fire(
        instance_id: str, body: FireRequest, actor: Actor, idempotency_key: str | None
    ) -> Response:
        try:
            inst = engine.fire(
                instance_id,
                body.trigger,
                actor=actor,
                data=body.data,
                comment=body.comment,
                idempotency_key=idempotency_key,
                expected_version=body.expected_version,
            )
        except TransitionNotAllowed:
            refused(None, body.trigger, instance_id)
            raise
        except ConcurrencyConflict:
            metrics.conflicts.inc()
            raise
        if not inst.replayed:
            metrics.transitions.labels(workflow=inst.workflow, trigger=body.trigger).inc()
        return ctx.model_json(InstanceOut.of(inst), 200, _replayed(inst))

    async def fire(
        instance_id: InstanceId,
        body: FireRequest,
        actor: Annotated[Actor, actor_dep],
        idempotency_key: Annotated[str | None, idempotency_header()] = None,
    ) -> Response:
        """Fire a trigger as the caller; 403 names the rule that refused it.

        With ``expected_version``, a change since that version is a 409 carrying the
        instance's ``current_state``.
        """
        return await ctx.write(apply_fire, instance_id, body, actor, idempotency_key)

    async def fire_fast(request: Request) -> Response | None:
        """An ordinary fire without FastAPI's per-request dependency solving.

        The same steps in the same order as the declared route: the JSON body is parsed,
        the caller authenticated, then the parameters validated. Anything out of the
        ordinary returns ``None``: FastAPI then handles the request as declared, so that
        its errors keep their exact shape.
        """
        headers = request.headers
        if headers.get("content-type") != "application/json" or _overridden(request):
            return None
        try:
            raw = json.loads(await request.body())
        except Exception:  # FastAPI answers each way a body fails to parse in its own way
            return None
        actor = await ctx.caller(request)
        instance_id = request.path_params.get("instance_id")
        key = headers.get(IDEMPOTENCY_HEADER)
        if not isinstance(instance_id, str) or not 1 <= len(instance_id) <= _MAX_ID:
            return None
        if key is not None and not 1 <= len(key) <= _MAX_KEY:
            return None
        try:
            body = FireRequest.model_validate(raw)
        except ValidationError:
            return None
        return await ctx.write(apply_fire, instance_id, body, actor, key)

    router.add_api_route(
        "/{instance_id}/fire",
        fire,
        methods=["POST"],
        response_model=InstanceOut,
        summary="Fire a trigger",
        responses={200: {"headers": {REPLAYED_HEADER: {"schema": {"type": "string"}}}}},
        route_class_override=fast_route(ctx.route_class, fire_fast) if fast else None,
    )

    @router.get(
        "/{instance_id}/triggers", response_model=list[TriggerOut], summary="Available triggers"
    )
    def triggers(instance_id: InstanceId, actor: Annotated[Actor, actor_dep]) -> list[TriggerOut]:
        """Triggers leaving the current state, each allowed for the caller or refused with
        reasons (data-dependent checks are left to the fire itself)."""
        return [TriggerOut.of(o) for o in engine.available(instance_id, actor=actor)]

    @router.get("/{instance_id}/history", response_model=list[EventOut], summary="History")
    def history(instance_id: InstanceId, actor: Annotated[Actor, actor_dep]) -> list[EventOut]:
        """The instance's hash-chained history, oldest first."""
        return [EventOut.of(e) for e in engine.history(instance_id, actor=actor)]

    @router.get(
        "/{instance_id}/deadlines", response_model=list[DeadlineOut], summary="Open deadlines"
    )
    def deadlines(instance_id: InstanceId, actor: Annotated[Actor, actor_dep]) -> list[DeadlineOut]:
        """The instance's open deadlines: due time, how late, escalation step."""
        return [DeadlineOut.of(d) for d in engine.deadlines(instance_id, actor=actor)]

    @router.post(
        "/{instance_id}/deadlines/extend",
        response_model=list[DeadlineOut],
        summary="Extend deadlines",
    )
    def extend(
        request: Request,
        instance_id: InstanceId,
        body: ExtendRequest,
        actor: Annotated[Actor, actor_dep],
        idempotency_key: Annotated[str | None, idempotency_header()] = None,
    ) -> JSONResponse:
        """Move the instance's open deadline(s) later, with a reason recorded in history.

        Allowed to the roles in ``SANGKIEN_EXTEND_ROLES`` (default: admin, unit_head,
        committee_chair) whose unit covers the instance's.
        """
        allowed = ctx.settings.extend_roles
        engine.get(instance_id, actor=actor)  # 404 before 403 outside the caller's units
        if not set(allowed) & actor.roles:
            have = ", ".join(sorted(actor.roles)) or "no role"
            reason = f"role {' or '.join(allowed)} required to extend deadlines; you have {have}"
            raise ApiError(
                403,
                "transition-not-allowed",
                "Transition not allowed",
                f"'extend' refused on instance {instance_id!r}: {reason}",
                trigger="extend",
                reasons=[reason],
            )

        def run() -> tuple[int, Any]:
            items = engine.extend_deadline(
                instance_id,
                actor=actor,
                reason=body.reason,
                by=body.by,
                until=body.until,
                deadline=body.deadline,
            )
            return 200, [DeadlineOut.of(d) for d in items]

        return ctx.idempotent(request, actor, idempotency_key, body.model_dump(mode="json"), run)

    return router


def _overdue_instances(
    ctx: ApiContext,
    actor: Actor,
    *,
    workflow: str | None,
    state: str | None,
    unit: str | None,
    parent: str | None,
    after: str | None,
) -> Iterator[Instance]:
    """Instances with a deadline past due, by id, matching the filters."""
    late = ctx.engine.overdue(unit=unit, workflow=workflow, actor=actor, limit=10_000)
    ids = sorted({d.instance_id for d in late if after is None or d.instance_id > after})
    for iid in ids:
        try:
            inst = ctx.engine.get(iid, actor=actor)
        except InstanceNotFound:  # gone between the two reads, or out of scope
            continue
        if state is not None and inst.state != state:
            continue
        if parent is not None and inst.parent_id != parent:
            continue
        yield inst
