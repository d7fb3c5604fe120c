"""Prometheus metrics of one API app, in its own registry (no process-global state).

Counters are updated where the work happens (the API's start/fire routes, the in-process
worker's ticks); the outbox gauges are read from the database when /metrics is scraped.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from sangkien.errors import first_line
from sangkien.outbox import counts
from sangkien.runtime import Engine

__all__ = ["CONTENT_TYPE", "Metrics"]

log = structlog.get_logger("sangkien.api")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _OutboxCollector(Collector):
    """Outbox rows per status, counted on scrape."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "sangkien_outbox_messages",
            "Outbox messages per status (pending: waiting to be sent; dead: given up).",
            labels=["status"],
        )
        try:
            found = counts(self.engine)
        except Exception as exc:  # a scrape must not fail because the database is down
            log.warning("metrics.outbox_unavailable", error=first_line(exc))
            return
        for status in sorted({"pending", "dead", *found}):
            family.add_metric([status], found.get(status, 0))
        yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())


class Metrics:
    """The metrics of one app; render them with :meth:`render`."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.started = Counter(
            "sangkien_instances_started",
            "Instances started through the API.",
            ["workflow"],
            registry=r,
        )
        self.transitions = Counter(
            "sangkien_transitions",
            "Triggers applied through the API (transitions and recorded actions).",
            ["workflow", "trigger"],
            registry=r,
        )
        self.refusals = Counter(
            "sangkien_refusals",
            "Starts and triggers the engine refused (role, unit, guard or data).",
            ["workflow", "trigger"],
            registry=r,
        )
        self.conflicts = Counter(
            "sangkien_conflicts", "Fires that lost an optimistic-lock race.", registry=r
        )
        self.writes_in_threads = Counter(
            "sangkien_writes_in_threads",
            "Starts and fires run in a worker thread rather than on the event loop: no kept"
            " connection was free, another writer held the SQLite lock, or the Engine keeps"
            " its writes off the loop.",
            registry=r,
        )
        self.timers_fired = Counter(
            "sangkien_timers_fired",
            "Reminders, due notices and escalations fired by the in-process worker.",
            registry=r,
        )
        self.worker_errors = Counter(
            "sangkien_worker_tick_failures", "Worker passes that failed.", registry=r
        )
        self.http_latency = Histogram(
            "sangkien_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ["method", "route", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        r.register(_OutboxCollector(engine))

    def observe_tick(self, result: Any) -> None:
        """Record one worker pass (``None`` when it failed)."""
        if result is None:
            self.worker_errors.inc()
            return
        self.timers_fired.inc(getattr(result, "fired", 0))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
