"""structlog setup for the command line and servers (libraries embedding us keep theirs)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from contextlib import suppress
from contextvars import ContextVar
from typing import Any, Literal

import structlog

__all__ = ["configure_logging", "held_until_commit", "hot_logger", "when_committed"]

_SECRET_KEYS = ("password", "secret", "token", "api_key", "authorization")


def _redact(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if any(s in key.lower() for s in _SECRET_KEYS):
            event[key] = "***"
    return event


def configure_logging(
    fmt: Literal["auto", "json", "console"] = "auto",
    level: str = "INFO",
    stream: object = None,
    *,
    stdlib: bool = True,
) -> Literal["json", "console"]:
    """Log one line per event to *stream* (stderr): console in a terminal, JSON otherwise.

    With *stdlib* (the command line and the servers), the process's standard-library
    logging goes the same way: the root logger gets the handler that writes libraries'
    records (uvicorn, APScheduler, SQLAlchemy; Python's warnings too) as our lines, and
    level WARNING or *level* if higher. A host with its own logging passes
    ``stdlib=False``, which configures structlog only. Returns the format chosen.
    """
    out = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(out, "isatty", lambda: False)() else "json"
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer(ensure_ascii=False)
    )
    # a traceback is one JSON string (the console renderer lays it out itself)
    last: list[structlog.typing.Processor] = [_redact, renderer]
    if fmt != "console":
        last.insert(0, structlog.processors.format_exc_info)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *last,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(out),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    if stdlib:
        root = logging.getLogger()
        for old in [h for h in root.handlers if isinstance(h, _SameStream)]:
            root.removeHandler(old)
        root.addHandler(_SameStream(out, last))
        # libraries speak up for warnings and errors only (httpx, for one, logs every
        # request at INFO); a server lets its own lifecycle lines through (sangkien.api.server)
        wanted = logging.getLevelName(level.upper())
        root.setLevel(max(logging.WARNING, wanted if isinstance(wanted, int) else 0))
        logging.captureWarnings(True)
    return fmt


class _SameStream(logging.Handler):
    """Records of the standard library's loggers (uvicorn, APScheduler, SQLAlchemy) as lines
    of the same format as ours, written by structlog's writer for the same stream.

    Each is then one whole line (JSON in production), and never lands inside one of ours:
    structlog writes a line and its newline under a lock of its own, which a plain
    ``logging.StreamHandler`` does not take.
    """

    def __init__(self, out: Any, last: list[structlog.typing.Processor]) -> None:
        super().__init__()
        self._printer = structlog.PrintLogger(out)
        self.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *last],
                foreign_pre_chain=[
                    structlog.contextvars.merge_contextvars,
                    structlog.stdlib.add_log_level,
                    structlog.stdlib.add_logger_name,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                ],
            )
        )

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._printer.msg(self.format(record))
        except Exception:  # as logging's own handlers do: never raise into the caller
            self.handleError(record)


class _HotLogger:
    """A logger bound once per structlog configuration, for lines logged on every fire.

    ``structlog.get_logger()`` returns a proxy that binds a new logger on every call
    (about 5 µs); this keeps the bound one until ``structlog.configure`` changes the
    processors, wrapper class or logger factory. Processors changed in place (as
    ``structlog.testing.capture_logs`` does) are seen, being the same list.
    """

    __slots__ = ("_bound", "_key", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._key: tuple[int, Any, Any] | None = None
        self._bound: Any = None

    def get(self) -> Any:
        cfg = structlog.get_config()
        key = (id(cfg["processors"]), cfg["wrapper_class"], cfg["logger_factory"])
        if key != self._key:
            self._bound = structlog.get_logger(self._name).bind()
            self._key = key
        return self._bound


def hot_logger(name: str) -> _HotLogger:
    """A logger for the hot path: ``hot_logger(name).get().info(...)``."""
    return _HotLogger(name)


# the log calls held back by the write transaction in progress (see held_until_commit)
_HELD: ContextVar[list[Callable[[], Any]] | None] = ContextVar("sangkien.logs.held", default=None)


def when_committed(log_call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Log ``log_call(*args, **kwargs)`` once the write transaction in progress commits.

    A line that says a timer fired or a message was written is then only ever logged for
    work that was kept: a transaction rolled back (a worker killed, the database gone at
    commit, a conflict retried) leaves no line behind. Outside such a transaction (and in
    a host's own transaction, whose commit the engine does not see) it is logged at once.
    """
    held = _HELD.get()
    if held is None:
        log_call(*args, **kwargs)
    else:
        held.append(lambda: log_call(*args, **kwargs))


class _Held:
    """The :func:`held_until_commit` block (a class: it is entered on every fire)."""

    __slots__ = ("_held", "_parent", "_token")

    def __enter__(self) -> None:
        self._parent = _HELD.get()
        self._held: list[Callable[[], Any]] = []
        self._token = _HELD.set(self._held)

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        _HELD.reset(self._token)
        if exc_type is not None:
            return  # rolled back: its lines go with it
        if self._parent is not None:
            self._parent.extend(self._held)  # a savepoint: they wait for the outer commit
            return
        for call in self._held:
            with suppress(Exception):  # a log line failing never undoes what was committed
                call()


def held_until_commit() -> _Held:
    """Hold the :func:`when_committed` lines of the block; log them if it ends normally
    (put it outside the transaction, so that it ends after the commit), drop them if it
    raises. Around a savepoint, its lines join the enclosing block's on success and are
    dropped with the savepoint on failure."""
    return _Held()
