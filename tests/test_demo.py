"""`sangkien demo` runs a whole campaign and shows every state in order."""

from __future__ import annotations

import os
import subprocess
import sys

from sangkien.demo import run_demo

MAIN_PATH = ["launched", "registered", "applied", "evaluated", "recognized"]


def test_demo_initiative_follows_the_main_path() -> None:
    """One initiative passes exactly launched → registered → applied → evaluated → recognized."""
    lines: list[str] = []
    paths = run_demo(echo=lines.append)
    assert paths["initiative A"] == MAIN_PATH
    assert paths["campaign"] == [
        "draft",
        "launched",
        "registration_closed",
        "evaluation",
        "concluded",
    ]
    assert paths["initiative B"][-1] == "not_recognized"
    assert "amendment_requested" in paths["initiative B"]
    assert paths["initiative C"][-1] == "withdrawn"
    assert any("REFUSED" in line for line in lines)
    assert any("intact" in line for line in lines)


def test_demo_command_prints_states_in_order() -> None:
    """The CLI demo prints the main path of initiative A in order and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANGKIEN_")}
    proc = subprocess.run(
        [sys.executable, "-m", "sangkien", "demo", "--lang", "en"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    summary = [line for line in proc.stdout.splitlines() if line.strip().startswith("initiative A")]
    assert summary[-1].split(None, 2)[2] == " -> ".join(MAIN_PATH)
    assert "Traceback" not in proc.stderr
