"""Routes for operators: the outbox (admin), health, readiness and metrics."""

from typing import Annotated, Any

import sqlalchemy as sa
import structlog
from fastapi import APIRouter, Depends, Path, Query, Request, Response

from sangkien.api.context import ApiContext, idempotency_header
from sangkien.api.metrics import CONTENT_TYPE
from sangkien.api.problems import ApiError
from sangkien.api.schemas import (
    Health,
    OutboxMessageOut,
    OutboxPage,
    Readiness,
    RetryRequest,
    RetryResult,
)
from sangkien.errors import InstanceNotFound, first_line
from sangkien.model import Actor
from sangkien.outbox import counts, get_message, list_messages, retry_dead

__all__ = ["health_router", "outbox_router"]

log = structlog.get_logger("sangkien.api")

OutboxStatus = Annotated[
    str | None,
    Query(pattern="^(pending|delivering|delivered|dead)$", description="Only this status."),
]


def outbox_router(ctx: ApiContext) -> APIRouter:
    """The outbox administration routes (admin role only)."""
    router = ctx.router("/v1/outbox", tags=["outbox"])
    engine = ctx.engine
    admin_dep = Depends(ctx.admin)

    @router.get("", response_model=OutboxPage, summary="List outbox messages (admin)")
    def list_outbox(
        _admin: Annotated[Actor, admin_dep],
        status: OutboxStatus = None,
        instance: Annotated[str | None, Query(max_length=64)] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> OutboxPage:
        """Notifications and webhooks, newest first, with the count of rows per status."""
        items = list_messages(engine, status=status, instance_id=instance, limit=limit)
        return OutboxPage(items=[OutboxMessageOut.of(m) for m in items], counts=counts(engine))

    @router.get("/{message_id}", response_model=OutboxMessageOut, summary="Read a message (admin)")
    def get_outbox_message(
        message_id: Annotated[str, Path(min_length=1, max_length=64)],
        _admin: Annotated[Actor, admin_dep],
    ) -> OutboxMessageOut:
        """One message with its rendered body and payload."""
        try:
            return OutboxMessageOut.of(get_message(engine, message_id), full=True)
        except InstanceNotFound:
            raise ApiError(
                404,
                "message-not-found",
                "Message not found",
                f"outbox message {message_id!r} not found",
            ) from None

    @router.post("/retry", response_model=RetryResult, summary="Queue dead messages again (admin)")
    def retry(
        request: Request,
        body: RetryRequest,
        admin: Annotated[Actor, admin_dep],
        idempotency_key: Annotated[str | None, idempotency_header()] = None,
    ) -> Response:
        """Put dead messages back in the queue (attempts reset): by ids, by instance, or all."""

        def run() -> tuple[int, Any]:
            n = retry_dead(engine, ids=body.ids, instance_id=body.instance, all_dead=body.all_dead)
            return 200, RetryResult(retried=n)

        return ctx.idempotent(request, admin, idempotency_key, body.model_dump(mode="json"), run)

    return router


def health_router(ctx: ApiContext) -> APIRouter:
    """Liveness, readiness and Prometheus metrics (no credentials needed)."""
    router = ctx.router(tags=["operations"], errors=False)
    engine = ctx.engine

    @router.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> Health:
        """The process answers (it does not touch the database)."""
        # async: answered by the event loop itself, never queued behind the thread pool
        return Health(status="ok")

    @router.get(
        "/readyz",
        response_model=Readiness,
        summary="Readiness",
        responses={503: {"description": "The database does not answer."}},
    )
    def readyz() -> Readiness:
        """The database answers ``SELECT 1``; 503 while it does not."""
        try:
            with engine._read() as conn:
                conn.execute(sa.text("SELECT 1")).scalar_one()
        except Exception as exc:
            log.warning("api.not_ready", error=first_line(exc))
            raise ApiError(
                503,
                "not-ready",
                "Not ready",
                "the database does not answer; see the server log",
                headers={"Retry-After": "5"},
            ) from None
        return Readiness(status="ready", database=engine.dialect)

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    def metrics() -> Response:
        """Counters, the HTTP latency histogram and outbox gauges, in Prometheus text."""
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    return router
