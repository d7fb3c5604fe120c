"""The embedding examples in docs/ run as written and show what docs/embedding.md says."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("embedding_*.py"))


@functools.cache
def _run(example: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SANGKIEN_")}
    return subprocess.run(
        [sys.executable, str(example)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_examples_exist_and_are_documented() -> None:
    """Every example is named in docs/embedding.md, and the three integration paths exist."""
    names = {p.name for p in EXAMPLES}
    assert {
        "embedding_router.py",
        "embedding_transaction.py",
        "embedding_webhooks.py",
    } <= names
    text = (ROOT / "docs" / "embedding.md").read_text(encoding="utf-8")
    for name in names:
        assert f"examples/{name}" in text, name


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(example: Path) -> None:
    """The example exits 0 without a traceback."""
    result = _run(example)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_transaction_example_rolls_back_together() -> None:
    """A host failure after the transition undoes both the host's row and the transition."""
    out = _run(ROOT / "docs" / "examples" / "embedding_transaction.py").stdout
    assert "after the rollback: draft | dossier: draft | events: 1" in out
    assert "after the retry: launched" in out


def test_webhook_example_verifies_signed_events() -> None:
    """The REST calls produce signed webhooks that a hand-written receiver verifies."""
    out = _run(ROOT / "docs" / "examples" / "embedding_webhooks.py").stdout
    assert "webhook instance.started v1: HS-2030-1 draft" in out
    assert "webhook transition.applied v1: HS-2030-1 launched" in out


def test_router_example_mounts_in_a_host_app() -> None:
    """The router serves under the host's prefix and answers refusals as problem+json."""
    out = _run(ROOT / "docs" / "examples" / "embedding_router.py").stdout
    assert "start: 201 draft" in out
    assert "launch by the officer: 403" in out
