"""Logging: the per-fire logger bound once still follows structlog's configuration."""

from __future__ import annotations

import io

import structlog

from sangkien.logs import configure_logging, hot_logger


def test_the_fire_log_line_follows_a_reconfiguration() -> None:
    saved = structlog.get_config()
    hot = hot_logger("sangkien")
    first, second = io.StringIO(), io.StringIO()
    try:
        configure_logging("json", "INFO", stream=first)
        hot.get().info("transition", instance_id="a")
        configure_logging("json", "WARNING", stream=second)
        hot.get().info("transition", instance_id="b")  # filtered out now
        configure_logging("json", "INFO", stream=second)
        with structlog.testing.capture_logs() as captured:
            hot.get().info("transition", instance_id="c")
        hot.get().info("transition", instance_id="d")
    finally:
        structlog.configure(**saved)
    assert '"instance_id": "a"' in first.getvalue()
    assert '"instance_id": "b"' not in second.getvalue()
    assert [e["instance_id"] for e in captured] == ["c"]
    assert '"instance_id": "d"' in second.getvalue()  # capture_logs put the renderer back
