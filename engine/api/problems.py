"""Errors as RFC 9457 ``application/problem+json``, translated at one boundary.

Every error the API returns has the same shape::

    {"type": "urn:sangkien:problem:transition-not-allowed", "title": "Transition not allowed",
     "status": 403, "detail": "...", "instance": "/v1/instances/…/fire", "request_id": "…",
     "reasons": ["role unit_head required; you have author"]}

plus ``problems`` (workflow file findings), ``errors`` (request validation) or
``current_state`` / ``expected_version`` (a concurrent change) where they apply.
:class:`ProblemRoute` does the translation inside each route, so a host that mounts the
API router in its own FastAPI app gets the same errors without installing handlers.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import structlog
from fastapi import Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from sangkien.calendar import DurationError
from sangkien.errors import (
    ConcurrencyConflict,
    DefinitionConflict,
    DefinitionError,
    IdempotencyKeyReused,
    InstanceNotFound,
    InvalidData,
    SangkienError,
    SchemaOutOfDate,
    StoreConflict,
    StoreError,
    TransitionNotAllowed,
    WorkflowNotFound,
)

__all__ = [
    "PROBLEM_JSON",
    "ApiError",
    "ProblemResponse",
    "ProblemRoute",
    "fast_route",
    "problem_for",
    "problem_route",
    "request_id_of",
]

log = structlog.get_logger("sangkien.api")

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "urn:sangkien:problem:"
REQUEST_ID_HEADER = "X-Request-ID"
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
_SCOPE_KEY = "sangkien.request_id"


class ProblemResponse(JSONResponse):
    """A JSON response with the ``application/problem+json`` media type."""

    media_type = PROBLEM_JSON


class ApiError(SangkienError):
    """An error the API answers with a problem document; raise it from routes."""

    def __init__(
        self,
        status: int,
        slug: str,
        title: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = extensions
        super().__init__(detail)


def request_id_of(scope: dict[str, Any] | Any, headers: Mapping[str, str] | None = None) -> str:
    """The request's id: the one already assigned, the caller's ``X-Request-ID``, or a new one."""
    found = scope.get(_SCOPE_KEY)
    if found:
        return str(found)
    given = (headers or {}).get(REQUEST_ID_HEADER.lower()) or (headers or {}).get(REQUEST_ID_HEADER)
    rid = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
    scope[_SCOPE_KEY] = rid
    return rid


def _problem_body(
    request: Request, status: int, slug: str, title: str, detail: str, extensions: Mapping[str, Any]
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "about:blank" if slug == "about:blank" else PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": request_id_of(request.scope, request.headers),
    }
    body.update(extensions)
    return body


def problem_response(
    request: Request,
    status: int,
    slug: str,
    title: str,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> ProblemResponse:
    """Build the problem+json response for one error."""
    body = _problem_body(request, status, slug, title, detail, extensions)
    out = dict(headers or {})
    out[REQUEST_ID_HEADER] = body["request_id"]
    return ProblemResponse(jsonable_encoder(body), status_code=status, headers=out)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        out.append({"loc": loc, "message": str(err.get("msg", "")), "type": err.get("type", "")})
    return out


def _http_title(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def problem_for(request: Request, exc: BaseException) -> ProblemResponse:
    """Translate *exc* into a problem response (never exposing a stack trace)."""
    if isinstance(exc, ApiError):
        return problem_response(
            request,
            exc.status,
            exc.slug,
            exc.title,
            exc.detail,
            headers=exc.headers,
            **exc.extensions,
        )
    if isinstance(exc, RequestValidationError):
        errors = _validation_errors(exc)
        first = errors[0] if errors else None
        detail = f"{'.'.join(first['loc'])}: {first['message']}" if first else "invalid request"
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        return problem_response(
            request, 422, "invalid-request", "Invalid request", detail, errors=errors
        )
    if isinstance(exc, StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else _http_title(exc.status_code)
        return problem_response(
            request,
            exc.status_code,
            "about:blank",
            _http_title(exc.status_code),
            detail,
            headers=dict(exc.headers or {}),
        )
    if isinstance(exc, SangkienError):
        return _domain_problem(request, exc)
    log.exception("api.unexpected_error", error_type=type(exc).__name__)
    return problem_response(
        request,
        500,
        "internal-error",
        "Internal server error",
        "an unexpected error occurred; the operators can find it in the logs by its request id",
    )


def _domain_problem(request: Request, exc: SangkienError) -> ProblemResponse:
    if isinstance(exc, InvalidData):
        return problem_response(
            request,
            422,
            "invalid-data",
            "Invalid data",
            str(exc),
            trigger=exc.trigger,
            reasons=exc.reasons,
        )
    if isinstance(exc, TransitionNotAllowed):
        return problem_response(
            request,
            403,
            "transition-not-allowed",
            "Transition not allowed",
            str(exc),
            trigger=exc.trigger,
            reasons=exc.reasons,
        )
    if isinstance(exc, InstanceNotFound):
        return problem_response(request, 404, "instance-not-found", "Instance not found", str(exc))
    if isinstance(exc, WorkflowNotFound):
        return problem_response(request, 404, "workflow-not-found", "Workflow not found", str(exc))
    if isinstance(exc, ConcurrencyConflict):
        return problem_response(
            request,
            409,
            "concurrent-change",
            "Concurrent change",
            str(exc),
            current_state=exc.current_state,
            expected_version=exc.expected_version,
        )
    if isinstance(exc, IdempotencyKeyReused):
        return problem_response(
            request, 422, "idempotency-key-reused", "Idempotency key reused", str(exc)
        )
    if isinstance(exc, DefinitionError):
        problems = [
            {"line": p.line, "column": p.column, "severity": p.severity, "message": p.message}
            for p in exc.problems
        ]
        return problem_response(
            request,
            422,
            "invalid-definition",
            "Invalid workflow definition",
            str(exc),
            problems=problems,
        )
    if isinstance(exc, DefinitionConflict):
        return problem_response(
            request, 409, "definition-conflict", "Definition conflict", str(exc)
        )
    if isinstance(exc, DurationError):
        return problem_response(request, 422, "invalid-duration", "Invalid duration", str(exc))
    if isinstance(exc, SchemaOutOfDate):
        return problem_response(
            request, 503, "schema-out-of-date", "Database schema out of date", str(exc)
        )
    if isinstance(exc, StoreError):
        # the engine reports a lost insert race as a StoreError; the caller may simply retry
        if isinstance(exc, StoreConflict):
            return problem_response(
                request,
                409,
                "concurrent-change",
                "Concurrent change",
                str(exc),
                current_state=None,
                expected_version=None,
            )
        log.error("api.store_error", error=str(exc))
        return problem_response(
            request,
            503,
            "store-unavailable",
            "Database unavailable",
            "the database failed or refused the operation; retry later",
            headers={"Retry-After": "5"},
        )
    return problem_response(request, 400, "refused", "Request refused", str(exc))


FastHandler = Callable[[Request], Awaitable[Response | None]]


class ProblemRoute(APIRoute):
    """An APIRoute that answers every error with problem+json and tags the request id.

    ``max_body`` (set by :func:`problem_route`) bounds the request body: a larger one is a
    413 problem before any of it is parsed. ``fast`` (set by :func:`fast_route`) is tried
    before FastAPI's own handling; it returns ``None`` to hand the request over to it.
    """

    max_body: int | None = None
    fast: FastHandler | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        limit = self.max_body
        fast = type(self).fast

        async def route_handler(request: Request) -> Response:
            rid = request_id_of(request.scope, request.headers)
            try:
                if limit is not None and request.method in ("POST", "PUT", "PATCH"):
                    await _read_bounded(request, limit)
                response = await fast(request) if fast is not None else None
                if response is None:
                    response = await handler(request)
            except Exception as exc:
                response = problem_for(request, exc)
            response.headers.setdefault(REQUEST_ID_HEADER, rid)
            return response

        return route_handler


def problem_route(max_body: int | None) -> type[ProblemRoute]:
    """A :class:`ProblemRoute` class that refuses request bodies above *max_body* bytes."""
    return type("ProblemRoute", (ProblemRoute,), {"max_body": max_body})


def fast_route(base: type[ProblemRoute], fast: FastHandler) -> type[ProblemRoute]:
    """A *base* route class whose requests go to *fast* first.

    *fast* serves the ordinary requests of one busy route without FastAPI's per-request
    dependency solving; for anything else (an invalid parameter or body, an unusual
    header) it returns ``None`` and FastAPI handles the request as declared, so that
    errors keep their exact shape. Errors it raises become problems like the route's own.
    """
    return type("FastProblemRoute", (base,), {"fast": staticmethod(fast)})


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413, "too-large", "Request too large", f"the request body exceeds {limit} bytes"
    )


async def _read_bounded(request: Request, limit: int) -> None:
    """Read the body into the request's cache, refusing it once it exceeds *limit* bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    # Starlette's Request.body() returns this cached value to the route's own parsing
    request._body = b"".join(chunks)
