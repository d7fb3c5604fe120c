"""The app factory and the mountable router of the REST API.

    from sangkien.api import create_app
    app = create_app()                     # Settings() and ApiSettings() from SANGKIEN_*

    # or, inside a host FastAPI app, with the host's own Engine:
    host.include_router(create_router(engine, ApiSettings(jwt_secret=...)), prefix="/wf")

Nothing here reads the environment or touches the database at import time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import structlog
from fastapi import APIRouter, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from sangkien.api.context import ApiContext
from sangkien.api.instances import instances_router
from sangkien.api.middleware import RequestContextMiddleware
from sangkien.api.operations import health_router, outbox_router
from sangkien.api.problems import PROBLEM_JSON, problem_for
from sangkien.api.settings import ApiSettings
from sangkien.api.supervision import supervision_router
from sangkien.api.workflows import workflows_router
from sangkien.errors import StoreError
from sangkien.runtime import Engine

__all__ = ["create_app", "create_router", "register_workflows"]

log = structlog.get_logger("sangkien.api")

_DESCRIPTION = """\
Workflows for initiative campaigns (sáng kiến): start instances, fire triggers, read history
and deadlines, supervise campaigns.

**Auth**: `Authorization: Bearer <JWT>` (claims `sub`, `roles`, `unit` or `units`) or
`X-API-Key`. **Errors** are `application/problem+json` (RFC 9457) with a `request_id`.
**Retries**: send `Idempotency-Key` on every POST.
"""


def create_router(
    engine: Engine,
    api_settings: ApiSettings | None = None,
    *,
    context: ApiContext | None = None,
) -> APIRouter:
    """The /v1 routes, ready to include in a host FastAPI app.

    The routes translate their own errors to problem+json, so the host needs no exception
    handlers. Pass *context* to share metrics and settings with an app built by
    :func:`create_app`.
    """
    ctx = context or ApiContext(engine, api_settings or ApiSettings())
    router = APIRouter()
    _take_routes(router, _v1_routers(ctx, fast=False))
    return router


def _v1_routers(ctx: ApiContext, *, fast: bool) -> list[APIRouter]:
    return [
        workflows_router(ctx),
        instances_router(ctx, fast=fast),
        supervision_router(ctx),
        outbox_router(ctx),
    ]


def _take_routes(router: APIRouter, parts: list[APIRouter]) -> None:
    """Put the routes of *parts* straight into *router*, in order.

    Each route is complete on its own (path, error responses, route class), so nothing is
    lost by not including the parts as routers, while FastAPI matches a request again at
    every level of included routers: taking the routes saved 45–85 µs of CPU per fire.
    """
    for part in parts:
        router.routes.extend(part.routes)


def register_workflows(engine: Engine, paths: list[Path]) -> list[str]:
    """Publish every workflow file found in *paths* (files or folders of ``*.yaml``)."""
    published = []
    for base in paths:
        files = sorted([*base.glob("*.yaml"), *base.glob("*.yml")]) if base.is_dir() else [base]
        for f in files:
            try:
                d = engine.register(f)
            except StoreError:
                # another process published the same file at the same moment: now it is there
                d = engine.register(f)
            published.append(f"{d.key} v{d.version}")
    return published


def create_app(
    settings: Any = None,
    *,
    engine: Engine | None = None,
    api_settings: ApiSettings | None = None,
) -> FastAPI:
    """Build the REST API app.

    Without *engine*, one is built from *settings* (default ``Settings()`` from the
    environment) with the configured workflows published; the app then closes it on
    shutdown. With ``api_settings.worker`` the deadline runner and the outbox dispatcher
    run inside the app's process between startup and shutdown.
    """
    api_settings = api_settings or ApiSettings()
    owns_engine = engine is None
    if engine is None:
        from sangkien.bootstrap import engine_from_settings
        from sangkien.config import Settings
        from sangkien.logs import configure_logging

        settings = settings or Settings()
        # standalone (e.g. `uvicorn --factory`): this app is the server, so it sets up logs;
        # a host that passes its own engine keeps its logging configuration
        configure_logging(settings.log_format, settings.log_level)
        engine = engine_from_settings(settings)
        try:
            register_workflows(engine, settings.workflow_paths())
        except BaseException:
            engine.close()
            raise
    ctx = ApiContext(engine, api_settings)
    if not api_settings.has_credentials():
        log.warning(
            "api.no_credentials",
            hint="every request will be refused: set SANGKIEN_JWT_SECRET, SANGKIEN_JWT_JWKS_URL "
            "or SANGKIEN_API_KEYS_FILE",
        )

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        worker = None
        if api_settings.worker:
            from sangkien.api.server import start_worker

            worker = await run_in_threadpool(start_worker, ctx, settings)
        try:
            yield
        finally:
            if worker is not None:
                await run_in_threadpool(worker.stop)
            if owns_engine:
                engine.close()

    docs = api_settings.docs
    app = FastAPI(
        title="sangkien",
        version=_version(),
        description=_DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
    )
    app.state.sangkien = ctx
    # straight into the app's own router: the app adds no dependencies of its own to the
    # routes, so fires may take the fast path; app.dependency_overrides still apply to them
    ctx.overrides_provider = app
    _take_routes(app.router, [health_router(ctx), *_v1_routers(ctx, fast=True)])
    for exc_type in (StarletteHTTPException, RequestValidationError, Exception):
        app.add_exception_handler(exc_type, _handler)
    if api_settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=api_settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "X-API-Key",
                "X-Request-ID",
                "X-Sangkien-Unit",
            ],
            expose_headers=["X-Request-ID", "Idempotency-Replayed", "WWW-Authenticate"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=ctx.metrics)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    return app


async def _handler(request: Request, exc: Exception) -> Response:
    return problem_for(request, exc)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sangkien")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """OpenAPI with every error response documented as application/problem+json."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        doc = get_openapi(
            title=app.title,
            version=app.version,
            description=app.description,
            routes=app.routes,
        )
        for path in doc.get("paths", {}).values():
            for op in path.values():
                for code, resp in op.get("responses", {}).items():
                    content = resp.get("content")
                    if code[:1] in ("4", "5") and content:
                        # errors are problem+json whatever the route's own media type
                        first = content.get("application/json") or next(iter(content.values()))
                        resp["content"] = {PROBLEM_JSON: first}
        schemas = doc.get("components", {}).get("schemas", {})
        text = str(doc.get("paths"))
        for unused in ("HTTPValidationError", "ValidationError"):
            if unused in schemas and f"/{unused}'" not in text:
                del schemas[unused]
        app.openapi_schema = doc
        return doc

    return openapi
