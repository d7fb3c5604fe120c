"""What every route needs: the engine, the settings, the caller, metrics and safe retries."""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import structlog
from anyio import CancelScope, CapacityLimiter, to_thread
from anyio.lowlevel import RunVar
from fastapi import APIRouter, Header, Request, Security
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from sangkien.api.auth import API_KEY_HEADER, UNIT_HEADER, Authenticator, WouldBlock
from sangkien.api.idempotency import (
    IDEMPOTENCY_HEADER,
    IdempotencyStore,
    check_key,
    fingerprint,
)
from sangkien.api.metrics import Metrics
from sangkien.api.problems import ApiError, problem_route
from sangkien.api.schemas import Problem
from sangkien.api.settings import ApiSettings
from sangkien.model import Actor
from sangkien.runtime import Engine
from sangkien.store.writer import OffLoop, run_on_loop

__all__ = ["ApiContext"]


def _retrieved(task: "asyncio.Future[Any]") -> None:
    """Mark the outcome of a write whose request went away as seen (it is logged already)."""
    if not task.cancelled():
        task.exception()


def _asyncio() -> bool:
    """Whether the running event loop is asyncio's (writes on the loop await its sockets)."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # trio, or no loop
        return False


log = structlog.get_logger("sangkien.api")

T = TypeVar("T")

# starts and fires run at once, as many as the Engine keeps connections for writes (its
# keep_connections default): past that each write checks a connection out of the pool
WRITE_CONCURRENCY = 4

REPLAYED_HEADER = "Idempotency-Replayed"
JSON = "application/json"
ACTOR_SCOPE_KEY = "sangkien.actor"

# the problem+json answers every authenticated route may give, for the OpenAPI document
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Missing or invalid credentials."},
    403: {"model": Problem, "description": "Refused: the rule that refused it is in reasons."},
    404: {"model": Problem, "description": "Not found, or outside the caller's units."},
    409: {"model": Problem, "description": "A concurrent change, or a key still in use."},
    422: {"model": Problem, "description": "The request is invalid."},
}

_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="A JWT with claims sub, roles (list) and unit (or units + X-Sangkien-Unit).",
)
_api_key = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    scheme_name="apiKey",
    description="A static API key from the keys file (bound to roles and a unit).",
)


class ApiContext:
    """Shared state of one API: built once per app (or per mounted router)."""

    def __init__(
        self,
        engine: Engine,
        settings: ApiSettings,
        *,
        metrics: Metrics | None = None,
        authenticator: Authenticator | None = None,
        idempotency: IdempotencyStore | None = None,
        write_concurrency: int = WRITE_CONCURRENCY,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics or Metrics(engine)
        self.auth = authenticator or Authenticator(settings)
        self.idempotency = idempotency or IdempotencyStore(
            engine._db, engine.clock, lease=settings.idempotency_lease
        )
        self.lang = engine.lang
        self.route_class = problem_route(settings.max_body_bytes)
        self.actor = self._actor_dependency()
        self.admin = self._admin_dependency()
        self.write_concurrency = write_concurrency
        # one limiter per event loop serving the app (anyio's own thread limiter does the same)
        self._writers: RunVar[CapacityLimiter] = RunVar("sangkien.api.writers")
        self._on_loop = engine.writes_on_loop  # fixed with the Engine: checked once
        # whose dependency_overrides the routes of ``router()`` honour: the app, once
        # create_app takes the routes into its own router (an including app otherwise)
        self.overrides_provider: Any = None

    async def write(self, func: Callable[..., T], *args: Any) -> T:
        """Run the engine write *func(*args)* (a start, a fire).

        It runs on the event loop (:func:`~sangkien.store.writer.run_on_loop`): a hop to a
        worker thread and back cost about a fifth of the server's time per fire. On
        PostgreSQL its waits for the server await the socket there; on SQLite it never
        waits for the write lock. A write that finds no kept connection free, or the SQLite
        file locked by another writer, runs in a worker thread instead. Once begun, a write
        runs to its end even if the client goes away, on the loop or in a thread alike.
        *func* must do its waiting through the Engine: anything else that blocks would
        block the loop.

        At most ``write_concurrency`` run at once; the others wait on the event loop. More
        would not write faster (SQLite has one writer, and past the Engine's kept
        connections each write checks one out of the pool), while every extra thread
        competes with the event loop for the interpreter and slows every request: with 32
        clients firing at once, fires went about 25 % faster with 4 than with anyio's 40.
        """
        try:
            limiter = self._writers.get()
        except LookupError:
            limiter = CapacityLimiter(self.write_concurrency)
            self._writers.set(limiter)
        if self._on_loop and _asyncio():
            async with limiter:
                with CancelScope(shield=True):
                    # a task of its own: a request cancelled outright (asyncio's cancel,
                    # which no anyio shield stops) leaves the write to finish
                    write = asyncio.ensure_future(run_on_loop(func, *args))
                    write.add_done_callback(_retrieved)
                    try:
                        return await asyncio.shield(write)
                    except OffLoop:
                        pass  # this one goes to a thread (which keeps the connection it opens)
        self.metrics.writes_in_threads.inc()
        return await to_thread.run_sync(func, *args, limiter=limiter)

    def router(
        self, prefix: str = "", *, tags: list[str] | None = None, errors: bool = True
    ) -> APIRouter:
        """A router for routes of this API: problem+json errors, documented (*errors*).

        Each route carries its error responses itself, so that an app may take the routes
        straight into its own router (see :func:`~sangkien.api.app.create_app`).
        """
        return APIRouter(
            prefix=prefix,
            tags=list(tags or []),
            route_class=self.route_class,
            responses=ERROR_RESPONSES if errors else None,
            dependency_overrides_provider=self.overrides_provider,
        )

    # -- dependencies

    def _actor_dependency(self) -> Callable[..., Awaitable[Actor]]:
        caller = self.caller

        # async (see caller): a sync dependency would cost every request a trip to the
        # thread pool on top of the one the route itself takes; the parameters other than
        # request are read by caller itself and are declared here for the OpenAPI document
        async def current_actor(
            request: Request,
            _bearer_token: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
            _key: Annotated[str | None, Security(_api_key)],
            _unit: Annotated[
                str | None,
                Header(
                    alias=UNIT_HEADER,
                    description="Which of the token's units to act for (default: the first).",
                ),
            ] = None,
        ) -> Actor:
            return await caller(request)

        return current_actor

    async def caller(self, request: Request) -> Actor:
        """The authenticated caller of *request* (a 401/403 :class:`ApiError` if none).

        Checking a token is CPU work, done on the event loop; only a key that must first
        be fetched from the identity provider sends the check to a worker thread.
        """
        try:
            principal = self.auth.authenticate_nowait(request)
        except WouldBlock:
            principal = await run_in_threadpool(self.auth.authenticate, request)
        request.scope[ACTOR_SCOPE_KEY] = principal.actor.id
        return principal.actor

    def _admin_dependency(self) -> Callable[..., Awaitable[Actor]]:
        role = self.settings.admin_role
        current_actor = self.actor

        async def admin_actor(actor: Annotated[Actor, Security(current_actor)]) -> Actor:
            if role not in actor.roles:
                raise ApiError(
                    403,
                    "admin-required",
                    "Administrator role required",
                    f"role {role} required; you have {', '.join(sorted(actor.roles)) or 'no role'}",
                    reasons=[f"role {role} required"],
                )
            return actor

        return admin_actor

    # -- responses

    @staticmethod
    def json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
        """A JSON response of *body* (pydantic models and dataclasses are encoded)."""
        return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)

    @staticmethod
    def model_json(
        body: BaseModel, status: int = 200, headers: dict[str, str] | None = None
    ) -> Response:
        """The JSON response of one pydantic model, serialized by pydantic in one pass.

        Same bytes as :meth:`json` for the API's output models (compact, UTF-8), without
        FastAPI validating the returned model again or encoding it field by field.
        """
        return Response(
            body.model_dump_json(), status_code=status, headers=headers, media_type=JSON
        )

    def idempotent(
        self,
        request: Request,
        actor: Actor,
        key: str | None,
        body: Any,
        run: Callable[[], tuple[int, Any]],
    ) -> JSONResponse:
        """Run *run* once per Idempotency-Key; replays get the stored response back.

        *body* is the request as parsed (it is fingerprinted); *run* returns the status code
        and the body of a successful response. Errors are not stored: the key may be retried.
        """
        if not key:
            status, out = run()
            return self.json(out, status)
        key = check_key(key)
        digest = fingerprint(request.method, request.url.path, jsonable_encoder(body))
        stored = self.idempotency.claim(actor.id, key, digest)
        if stored is not None:
            return JSONResponse(
                stored.body, status_code=stored.status_code, headers={REPLAYED_HEADER: "true"}
            )
        try:
            status, out = run()
            encoded = jsonable_encoder(out)
        except BaseException:
            self.idempotency.release(actor.id, key)
            raise
        self.idempotency.complete(actor.id, key, status, encoded)
        return JSONResponse(encoded, status_code=status)


def idempotency_header() -> Any:
    """The ``Idempotency-Key`` header parameter of a POST route."""
    return Header(
        alias=IDEMPOTENCY_HEADER,
        max_length=255,
        description="Makes the POST safe to retry: a replay returns the first response; "
        "the same key with a different request is refused (422).",
    )
