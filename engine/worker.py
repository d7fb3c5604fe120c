"""Background loops: the deadline runner and the outbox dispatcher.

APScheduler only wakes the loops; the truth is in the database, so a worker that was down
catches up on everything that fell due, in order, when it starts again.
"""

from __future__ import annotations

import logging
import signal
import threading
from datetime import UTC, datetime
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from sangkien.errors import first_line
from sangkien.runtime import Engine

__all__ = ["Worker"]

log = structlog.get_logger("sangkien")


class Worker:
    """Runs the deadline runner and the outbox dispatcher every *interval* seconds."""

    def __init__(
        self, engine: Engine, *, interval: float = 5.0, batch: int = 200, dispatcher: Any = None
    ) -> None:
        self.engine = engine
        self.interval = interval
        self.batch = batch
        self.dispatcher = dispatcher
        self._scheduler = BackgroundScheduler(timezone=UTC)
        self._stopped = threading.Event()

    def tick(self) -> Any:
        """One pass of the deadline runner; errors are logged and retried next time."""
        try:
            result = self.engine.tick(limit=self.batch)
        except Exception as exc:  # the loop must survive a database restart
            log.error("worker.tick_failed", error=first_line(exc))
            return None
        if result.processed or result.retried:
            log.info(
                "worker.tick",
                fired=result.fired,
                skipped=result.skipped,
                cancelled=result.cancelled,
                retried=result.retried,
            )
        return result

    def dispatch(self) -> Any:
        """One pass of the outbox dispatcher; errors are logged and retried next time."""
        if self.dispatcher is None:
            return None
        try:
            result = self.dispatcher.run(limit=self.batch)
        except Exception as exc:  # the loop must survive a database restart
            log.error("worker.dispatch_failed", error=first_line(exc))
            return None
        if result.claimed or result.recorded_late:
            log.info(
                "worker.dispatch",
                delivered=result.delivered,
                retried=result.retried,
                dead=result.dead,
                recorded_late=result.recorded_late,
            )
        return result

    def start(self) -> None:
        """Start the loops in background threads (the first pass runs at once)."""
        # a pass that outlasts the interval is normal catch-up, not a warning worth a
        # stdlib log line interleaved with our structured ones
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
        self._scheduler.add_job(
            self.tick,
            "interval",
            seconds=self.interval,
            id="deadlines",
            max_instances=1,
            coalesce=True,
            next_run_time=datetime.now(UTC),
        )
        if self.dispatcher is not None:
            self._scheduler.add_job(
                self.dispatch,
                "interval",
                seconds=self.interval,
                id="outbox",
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now(UTC),
            )
        self._scheduler.start()
        log.info(
            "worker.started",
            interval_s=self.interval,
            batch=self.batch,
            database=self.engine.dialect,
        )

    def stop(self) -> None:
        """Stop taking new work and wait for the pass in flight to finish."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._scheduler.shutdown(wait=True)
        if self.dispatcher is not None:
            self.dispatcher.settle()  # what a pass the database cut short still holds
        log.info("worker.stopped")

    def run_forever(self, install_signals: bool = True) -> None:
        """Run until SIGINT/SIGTERM, then finish the pass in flight and return."""
        requested = threading.Event()
        if install_signals:

            def _handle(signum: int, _frame: Any) -> None:
                log.info("worker.signal", signal=signal.Signals(signum).name)
                requested.set()

            signal.signal(signal.SIGTERM, _handle)
            signal.signal(signal.SIGINT, _handle)
        self.start()
        while not requested.wait(0.5):
            pass
        self.stop()
