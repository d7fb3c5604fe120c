"""Routes under /v1/workflows: list, read, draw, validate and publish definitions."""

from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, PlainTextResponse

from sangkien.api.context import ApiContext, idempotency_header
from sangkien.api.problems import ApiError
from sangkien.api.schemas import (
    ProblemLocation,
    SourceBody,
    ValidationReport,
    WorkflowDetail,
    WorkflowSummary,
)
from sangkien.definition import Definition, parse_definition
from sangkien.diagram import to_dot, to_mermaid
from sangkien.errors import DefinitionError, Problem
from sangkien.model import Actor
from sangkien.store import schema as t

__all__ = ["workflows_router"]

_SOURCE_FILE = "<request>"
_YAML_TYPES = ("text/yaml", "application/yaml", "application/x-yaml", "text/x-yaml", "text/plain")

_SOURCE_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "text/yaml": {"schema": {"type": "string"}},
            "application/json": {"schema": SourceBody.model_json_schema()},
        },
    }
}


def _versions(ctx: ApiContext) -> dict[str, list[int]]:
    d = t.definitions
    with ctx.engine._read() as conn:
        rows = conn.execute(sa.select(d.c.key, d.c.version).order_by(d.c.key, d.c.version))
        out: dict[str, list[int]] = {}
        for key, version in rows:
            out.setdefault(key, []).append(int(version))
    return out


async def _source(request: Request) -> tuple[str, Any]:
    """The YAML text of the request (raw YAML, or JSON ``{"source": ...}``) and its body."""
    raw = await request.body()
    media = request.headers.get("content-type", "text/yaml").split(";")[0].strip().lower()
    if media == "application/json" or media.endswith("+json"):
        import json

        try:
            parsed = SourceBody.model_validate(json.loads(raw or b"null"))
        except ValueError as exc:
            raise ApiError(
                422,
                "invalid-request",
                "Invalid request",
                'expected a JSON object {"source": "<workflow YAML>"}',
                errors=[{"loc": ["body"], "message": str(exc).splitlines()[0], "type": "json"}],
            ) from None
        return parsed.source, {"source": parsed.source}
    if media not in _YAML_TYPES:
        raise ApiError(
            415,
            "unsupported-media-type",
            "Unsupported media type",
            f"send the workflow as text/yaml or as application/json {{'source': ...}}, not {media}",
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(
            422,
            "invalid-request",
            "Invalid request",
            f"the workflow is not UTF-8 text (byte {exc.start})",
        ) from None
    return text, {"source": text}


def _report(text: str) -> tuple[ValidationReport, Definition | None]:
    problems: list[Problem]
    definition: Definition | None = None
    try:
        definition = parse_definition(text, _SOURCE_FILE)
        problems = list(definition.warnings)
    except DefinitionError as exc:
        problems = exc.problems
    report = ValidationReport(
        valid=definition is not None,
        workflow=definition.key if definition else None,
        version=definition.version if definition else None,
        problems=[ProblemLocation.of(p) for p in problems],
    )
    return report, definition


def workflows_router(ctx: ApiContext) -> APIRouter:
    """The workflow definition routes of one API."""
    router = ctx.router("/v1/workflows", tags=["workflows"])
    actor_dep = Depends(ctx.actor)

    @router.get("", response_model=list[WorkflowSummary], summary="List published workflows")
    def list_workflows(_actor: Annotated[Actor, actor_dep]) -> list[WorkflowSummary]:
        """Every published workflow, at its newest version."""
        out = []
        for key, versions in _versions(ctx).items():
            d = ctx.engine.definition(key)
            out.append(WorkflowSummary.of(d, versions, ctx.lang))
        return out

    @router.get("/{key}", response_model=WorkflowDetail, summary="Read a workflow")
    def get_workflow(
        key: str,
        _actor: Annotated[Actor, actor_dep],
        version: Annotated[int | None, Query(ge=1, description="Default: newest.")] = None,
    ) -> WorkflowDetail:
        """One version of a workflow: its YAML source and the same as JSON."""
        d = ctx.engine.definition(key, version)
        return WorkflowDetail.of_detail(d, _versions(ctx).get(key, [d.version]), ctx.lang)

    @router.get(
        "/{key}/diagram",
        response_class=PlainTextResponse,
        summary="Draw a workflow",
        responses={
            200: {
                "content": {"text/plain": {"schema": {"type": "string"}}},
                "description": "Mermaid stateDiagram-v2 or Graphviz DOT source.",
            }
        },
    )
    def diagram(
        key: str,
        _actor: Annotated[Actor, actor_dep],
        format: Annotated[Literal["mermaid", "dot"], Query()] = "mermaid",
        version: Annotated[int | None, Query(ge=1)] = None,
        lang: Annotated[Literal["vi", "en"] | None, Query()] = None,
    ) -> PlainTextResponse:
        """The workflow's graph as Mermaid (default) or Graphviz DOT text."""
        d = ctx.engine.definition(key, version)
        draw = to_dot if format == "dot" else to_mermaid
        return PlainTextResponse(draw(d, lang or ctx.lang))

    @router.post(
        "/validate",
        response_model=ValidationReport,
        summary="Validate a workflow file",
        openapi_extra=_SOURCE_BODY,
    )
    async def validate(
        request: Request,
        actor: Annotated[Actor, actor_dep],
        idempotency_key: Annotated[str | None, idempotency_header()] = None,
    ) -> JSONResponse:
        """Check workflow YAML; the findings are those of `sangkien validate`.

        Send the YAML as text/yaml, or as application/json ``{"source": "..."}``. An invalid
        file is a 200 with ``valid: false``: the request itself succeeded.
        """
        text, body = await _source(request)

        def run() -> tuple[int, Any]:
            return 200, _report(text)[0]

        return await run_in_threadpool(ctx.idempotent, request, actor, idempotency_key, body, run)

    @router.post(
        "",
        response_model=WorkflowDetail,
        status_code=201,
        summary="Publish a workflow (admin)",
        openapi_extra=_SOURCE_BODY,
    )
    async def publish(
        request: Request,
        actor: Annotated[Actor, Depends(ctx.admin)],
        idempotency_key: Annotated[str | None, idempotency_header()] = None,
    ) -> JSONResponse:
        """Publish a definition; a changed file in use must bump its `version` (409 if not)."""
        text, body = await _source(request)

        def run() -> tuple[int, Any]:
            report, definition = _report(text)
            if definition is None:
                errors = [p for p in report.problems if p.severity == "error"]
                first = errors[0] if errors else None
                detail = (
                    f"{_SOURCE_FILE}:{first.line}:{first.column}: {first.message}"
                    if first
                    else "invalid workflow"
                )
                raise ApiError(
                    422,
                    "invalid-definition",
                    "Invalid workflow definition",
                    detail,
                    problems=[p.model_dump() for p in report.problems],
                )
            published = ctx.engine.register(definition)
            versions = _versions(ctx).get(published.key, [published.version])
            return 201, WorkflowDetail.of_detail(published, versions, ctx.lang)

        return await run_in_threadpool(ctx.idempotent, request, actor, idempotency_key, body, run)

    return router
