"""bench/chaos.py, small: its real workers, a SIGKILL and its counts by id, end to end.

The script itself restarts the database server only when asked (``--restart``), which the
suite never does: other tests share the server.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import PG_URL, require_postgresql

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "chaos.py"


def _row(out: str, label: str) -> str:
    """The count column of the result table's row starting with *label*."""
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith(label):
            return cells[1]
    raise AssertionError(f"no row {label!r} in:\n{out}")


@pytest.mark.postgresql
def test_a_small_chaos_run_counts_every_timer_and_message_by_id() -> None:
    require_postgresql()
    run = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--postgresql",
            PG_URL,
            "--instances",
            "60",
            "--workers",
            "2",
            "--kills",
            "1",
            "--fail",
            "0.1",
            "--timeout",
            "240",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = run.stdout
    assert run.returncode == 0, out + run.stderr[-3000:]
    assert out.rstrip().endswith("result: every timer fired once, every message settled")
    assert _row(out, "faults").startswith("1 SIGKILLs, 0 database restart(s)")
    assert _row(out, "timers fired").startswith("240 (240)")
    assert _row(out, "timer events twice") == "0"
    assert _row(out, "instances by state") == "{'expired': 60}"
    # 60 × (4 notices to the author + 5 events: started, 2 reminders, due, expired)
    delivered, received, missing = _row(out, "webhook ids").split(" / ")
    assert delivered == received == "540" and missing == "0"
    assert _row(out, "history chains") == "intact"
