"""``sangkien serve``: the REST API and, in the same process, the worker loops.

One command for a single office: the SQLite default is migrated and the shipped workflows
are published at startup; the deadline runner and the outbox dispatcher start with the app
and stop gracefully with it (SIGTERM or Ctrl-C finish the requests and the pass in flight).
"""

from __future__ import annotations

import ipaddress
import logging
import signal
import sys
from typing import Any

import structlog
from pydantic import SecretStr

from sangkien.api.context import ApiContext
from sangkien.api.settings import ApiSettings
from sangkien.errors import SangkienError
from sangkien.worker import Worker

__all__ = ["ServeError", "run", "start_worker"]

log = structlog.get_logger("sangkien.api")


class ServeError(SangkienError):
    """The server cannot start as configured; the message says what to set."""


class _ApiWorker(Worker):
    """The worker, with its passes counted in the app's metrics."""

    def __init__(self, engine: Any, *, metrics: Any, **kwargs: Any) -> None:
        super().__init__(engine, **kwargs)
        self._metrics = metrics

    def tick(self) -> Any:
        result = super().tick()
        self._metrics.observe_tick(result)
        return result


def start_worker(ctx: ApiContext, settings: Any = None) -> Worker:
    """Start the deadline runner and the outbox dispatcher for *ctx*'s engine."""
    from sangkien.bootstrap import dispatcher_from_settings
    from sangkien.config import Settings

    dispatcher = dispatcher_from_settings(ctx.engine, settings or Settings())
    worker = _ApiWorker(
        ctx.engine,
        metrics=ctx.metrics,
        interval=ctx.settings.worker_interval,
        dispatcher=dispatcher,
    )
    worker.start()
    return worker


def _loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host  # noqa: S104 (display only)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}"


def run(
    settings: Any = None,
    api_settings: ApiSettings | None = None,
    host: str | None = None,
    port: int | None = None,
    *,
    worker: bool = True,
) -> None:
    """Serve the API with uvicorn until SIGTERM or Ctrl-C.

    Without any credential configured, the server accepts tokens signed with the demo
    secret (see ``sangkien token``), and only on a loopback address.
    """
    import uvicorn

    from sangkien.api.app import create_app
    from sangkien.api.tokens import DEMO_SECRET
    from sangkien.config import Settings
    from sangkien.logs import configure_logging

    settings = settings or Settings()
    api_settings = api_settings or ApiSettings()
    host = host or api_settings.host
    port = api_settings.port if port is None else port
    fmt = configure_logging(settings.log_format, settings.log_level)
    demo = not api_settings.has_credentials()
    if demo:
        if not _loopback(host):
            raise ServeError(
                f"no credentials configured and {host} is not a loopback address: set "
                "SANGKIEN_JWT_SECRET, SANGKIEN_JWT_JWKS_URL (or _FILE) or "
                "SANGKIEN_API_KEYS_FILE before serving on the network"
            )
        api_settings = api_settings.model_copy(update={"jwt_secret": SecretStr(DEMO_SECRET)})
    api_settings = api_settings.model_copy(update={"worker": worker})
    app = create_app(settings, api_settings=api_settings)
    engine = app.state.sangkien.engine
    url = _url(host, port)
    _announce(fmt, url, engine.dialect, worker=worker, docs=api_settings.docs, demo=demo)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        # uvicorn's lines go through ours (JSON in production), at the configured level
        log_config=None,
        log_level=logging.getLevelName(settings.log_level.upper()),  # WARN, FATAL too
        access_log=False,  # the app logs one structured line per request
        lifespan="on",
        timeout_graceful_shutdown=15,
        server_header=False,
    )
    server = uvicorn.Server(config)

    def _stopped(signum: int, _frame: Any) -> None:
        # uvicorn re-raises the signal it shut down on; this turns SIGTERM into exit 0
        log.info("server.stopped", signal=signal.Signals(signum).name)

    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        server.run()
    finally:
        signal.signal(signal.SIGTERM, previous)


_DEMO_HINT = "DEMO secret (loopback only); get a token with: sangkien token --sub pham.van.duc"


def _announce(fmt: str, url: str, dialect: str, *, worker: bool, docs: bool, demo: bool) -> None:
    """Where the server listens: a few lines for a person at a terminal, one log line (JSON)
    for a log collector, so that every line it reads is one it can parse."""
    links = {
        "docs": f"{url}/docs" if docs else "off",
        "health": f"{url}/healthz",
        "ready": f"{url}/readyz",
        "metrics": f"{url}/metrics",
    }
    if fmt != "console":
        extra = {"auth": _DEMO_HINT} if demo else {}
        log.info("server.listening", url=url, database=dialect, worker=worker, **links, **extra)
        return
    out = sys.stderr
    print(f"sangkien API on {url}  ({dialect}, worker {'on' if worker else 'off'})", file=out)
    print(f"  docs:    {links['docs']}", file=out)
    print(
        f"  health:  {links['health']}   ready: {links['ready']}   metrics: {links['metrics']}",
        file=out,
    )
    if demo:
        print(f"  auth:    {_DEMO_HINT}", file=out)
    out.flush()
