"""Logging: the per-fire logger follows structlog's configuration; library records join ours."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import sys
import threading
from pathlib import Path

import structlog

from sangkien.logs import configure_logging, hot_logger

# each test finds logging as it was, and leaves it so (conftest.py: _logging_as_it_was)


def test_the_fire_log_line_follows_a_reconfiguration() -> None:
    hot = hot_logger("sangkien")
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "INFO", stream=first)
    hot.get().info("transition", instance_id="a")
    configure_logging("json", "WARNING", stream=second)
    hot.get().info("transition", instance_id="b")  # filtered out now
    configure_logging("json", "INFO", stream=second)
    with structlog.testing.capture_logs() as captured:
        hot.get().info("transition", instance_id="c")
    hot.get().info("transition", instance_id="d")
    assert '"instance_id": "a"' in first.getvalue()
    assert '"instance_id": "b"' not in second.getvalue()
    assert [e["instance_id"] for e in captured] == ["c"]
    assert '"instance_id": "d"' in second.getvalue()  # capture_logs put the renderer back


def test_library_records_are_lines_of_the_same_format() -> None:
    """The standard library's loggers (APScheduler, uvicorn, httpx) write JSON lines too:
    their warnings and errors, a traceback as one string; their chatter
    at INFO stays out."""
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out)
    logging.getLogger("apscheduler.scheduler").warning("maximum number reached: %s", "tick")
    logging.getLogger("httpx").info("HTTP Request: POST http://x")
    structlog.get_logger().info("transition", instance_id="a")
    try:
        raise ValueError("bad thing")
    except ValueError:
        logging.getLogger("sqlalchemy.pool").exception("pool failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["event"], e["level"], e.get("logger")) for e in lines] == [
        ("maximum number reached: tick", "warning", "apscheduler.scheduler"),
        ("transition", "info", None),
        ("pool failed", "error", "sqlalchemy.pool"),
    ]
    assert "ValueError: bad thing" in lines[2]["exception"]


def test_console_format_renders_library_records_too() -> None:
    out = io.StringIO()
    configure_logging("console", "INFO", stream=out)
    logging.getLogger("apscheduler.scheduler").warning("run late by %d s", 3)
    assert "run late by 3 s" in out.getvalue()
    assert "[apscheduler.scheduler]" in out.getvalue()


def test_lines_from_threads_of_both_never_interleave(tmp_path: Path) -> None:
    """structlog writes a line and its newline under a lock of its own: records of the
    standard library take the same lock, so no line lands inside another (as APScheduler's
    warnings did in a worker's JSON log)."""
    path = tmp_path / "log.jsonl"
    n = 2000
    switch = sys.getswitchinterval()
    # unbuffered like a process's stderr: every write is a system call of its own
    stderr_like = io.TextIOWrapper(io.FileIO(path, "w"), encoding="utf-8", write_through=True)
    with stderr_like as out:
        configure_logging("json", "INFO", stream=out)

        def ours(k: int) -> None:
            for i in range(n):
                structlog.get_logger().info("transition", thread=k, i=i)

        def theirs(k: int) -> None:
            for i in range(n):
                logging.getLogger("apscheduler").warning("late %d %d", k, i)

        sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
        try:
            threads = [
                threading.Thread(target=f, args=(k,)) for k, f in enumerate([ours, theirs] * 2)
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
        finally:
            sys.setswitchinterval(switch)
    lines = path.read_text(encoding="utf-8").splitlines()
    events = [json.loads(line) for line in lines]  # each line is one whole JSON object
    assert len(events) == 4 * n
    assert sum(e["event"] == "transition" for e in events) == 2 * n


def test_lines_held_until_commit_are_logged_after_it_or_dropped() -> None:
    from sangkien.logs import held_until_commit, when_committed

    said: list[str] = []
    when_committed(said.append, "outside")  # no transaction: at once
    assert said == ["outside"]
    with held_until_commit():
        when_committed(said.append, "kept")
        with held_until_commit():  # a savepoint released: its lines wait for the commit
            when_committed(said.append, "savepoint kept")
        with contextlib.suppress(RuntimeError), held_until_commit():
            when_committed(said.append, "savepoint rolled back")
            raise RuntimeError("the savepoint rolled back")
        assert said == ["outside"]
    assert said == ["outside", "kept", "savepoint kept"]
    with contextlib.suppress(RuntimeError), held_until_commit():
        when_committed(said.append, "rolled back")
        raise RuntimeError("the commit failed")
    assert said[-1] == "savepoint kept"

    def broken(_line: str) -> None:
        raise BrokenPipeError("stderr is gone")

    with held_until_commit():  # a line that cannot be written stops neither the others...
        when_committed(broken, "lost")
        when_committed(said.append, "after a broken one")
    assert said[-1] == "after a broken one"  # ...nor the caller, whose work was committed


def test_a_host_keeps_its_own_logging_with_stdlib_false() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out, stdlib=False)
    structlog.get_logger().info("transition", instance_id="a")
    assert root.handlers == handlers and root.level == level  # untouched
    assert json.loads(out.getvalue())["instance_id"] == "a"
