"""Every broken workflow in tests/corpus/ is refused with the right message at the right place.

Each corpus file is a small valid workflow (see ``BASE`` below) with one thing broken. Its first
line pins what the engine must say about it::

    # expect: LINE:COL: substring of the message

LINE:COL is the 1-based position of the faulty token itself (checked by eye), and the substring
must appear in the message of the first error reported. Files whose expectation the engine does
not meet yet because of a known engine bug are listed in ``ENGINE_BUGS`` (strict xfail), so the
test turns red as soon as the bug is fixed and the entry can go.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sangkien.definition import load_definition, parse_definition
from sangkien.errors import DefinitionError, Problem

HERE = Path(__file__).parent
CORPUS = HERE / "corpus"
WORKFLOWS = HERE.parent / "workflows"
CORPUS_FILES = sorted(CORPUS.glob("*.yaml"))
SHIPPED_WORKFLOWS = sorted(WORKFLOWS.glob("*.yaml"))

EXPECT = re.compile(r"^# expect: (\d+):(\d+): (.+?)\s*$")

# The valid workflow every corpus file starts from: each file drops or adds a field, state or
# transition it does not need, and breaks exactly one thing.
BASE = """\
workflow: initiative
version: 1
title: Initiative
roles: [author, unit_head]
fields:
  title: {type: string, required: true}
  score: {type: number, min: 0, max: 100}
states:
  draft:
    initial: true
  done:
    final: true
transitions:
  - trigger: finish
    from: draft
    to: done
    roles: [author]
    when: "size(data.title) > 0"
"""

# Corpus files the engine gets wrong today; the reason names the engine code at fault.
ENGINE_BUGS: dict[str, str] = {}

# Tell-tales of an internal error leaking into what a user reads.
LEAKS = (
    "Traceback",
    'File "',
    "ValidationError",
    "pydantic",
    "input_value",
    "For further information",
    "<input>",
    "RecursionError",
    "object at 0x",
)


def _expectation(path: Path) -> tuple[int, int, str]:
    first = path.read_bytes().split(b"\n", 1)[0].decode("utf-8")
    m = EXPECT.match(first)
    assert m, f"{path.name}: first line must be '# expect: LINE:COL: message substring'"
    return int(m.group(1)), int(m.group(2)), m.group(3)


def _params(files: list[Path]) -> list[object]:
    out = []
    for f in files:
        marks = []
        if f.name in ENGINE_BUGS:
            marks.append(pytest.mark.xfail(strict=True, reason=ENGINE_BUGS[f.name]))
        out.append(pytest.param(f, id=f.stem, marks=marks))
    return out


def _first_error(path: Path) -> tuple[DefinitionError, Problem]:
    with pytest.raises(DefinitionError) as info:
        load_definition(path)
    errors = [p for p in info.value.problems if p.severity == "error"]
    assert errors, f"{path.name}: DefinitionError without any error-severity problem"
    return info.value, errors[0]


def test_corpus_is_big_enough() -> None:
    """The corpus holds at least 30 broken files and names every known-bug file that exists."""
    assert len(CORPUS_FILES) >= 30
    names = {f.name for f in CORPUS_FILES}
    assert set(ENGINE_BUGS) <= names


def test_base_workflow_is_valid() -> None:
    """The workflow the corpus files start from loads without errors or warnings."""
    definition = parse_definition(BASE, "base.yaml")
    assert definition.key == "initiative"
    assert definition.warnings == ()


@pytest.mark.parametrize("path", [pytest.param(f, id=f.stem) for f in CORPUS_FILES])
def test_expectation_points_into_the_file(path: Path) -> None:
    """Each pinned LINE:COL exists in its file, so a typo in an expectation cannot hide."""
    line, col, _ = _expectation(path)
    lines = path.read_bytes().decode("utf-8").splitlines() or [""]
    assert 1 <= line <= len(lines), f"line {line} is outside {path.name}"
    assert 1 <= col <= len(lines[line - 1]) + 1, f"column {col} is past the end of line {line}"


@pytest.mark.parametrize("path", _params(CORPUS_FILES))
def test_corpus_first_error(path: Path) -> None:
    """The first error of each broken file has the pinned line, column and message."""
    line, col, substring = _expectation(path)
    _, first = _first_error(path)
    assert first.file == str(path)
    assert (first.line, first.column) == (line, col), str(first)
    assert substring in first.message, str(first)


@pytest.mark.parametrize("path", [pytest.param(f, id=f.stem) for f in CORPUS_FILES])
def test_corpus_messages_are_clean(path: Path) -> None:
    """Every problem prints as one 'file:line:col: severity: message' line with no internals."""
    exc, _ = _first_error(path)
    texts = [str(exc), *(str(p) for p in exc.problems)]
    for text in texts:
        assert "\n" not in text, text
        for leak in LEAKS:
            assert leak not in text, f"{leak!r} leaked into: {text}"
    for p in exc.problems:
        assert p.line >= 1 and p.column >= 1, str(p)
        assert str(p).startswith(f"{path}:{p.line}:{p.column}: {p.severity}: "), str(p)
        assert p.message.strip(), str(p)


# --------------------------------------------------------------------------- CLI


PROBLEM_LINE = re.compile(
    r"^(?P<file>.+):(?P<line>\d+):(?P<col>\d+): (?P<sev>error|warning): (?P<msg>.+)$"
)


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    pytest.importorskip("sangkien.cli")  # the lead removes this once the CLI has landed
    return subprocess.run(
        [sys.executable, "-m", "sangkien", "validate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.slow
@pytest.mark.parametrize("path", _params(CORPUS_FILES))
def test_cli_validate_reports_corpus_file(path: Path) -> None:
    """`sangkien validate FILE` exits 1 and prints the pinned problem first, with no traceback."""
    line, col, substring = _expectation(path)
    proc = _run_cli(path.name, cwd=CORPUS)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode == 1, output
    problems = [m for m in map(PROBLEM_LINE.match, output.splitlines()) if m]
    assert problems, f"no 'FILE:LINE:COL: error: message' line in:\n{output}"
    first = next(m for m in problems if m["sev"] == "error")
    assert first["file"] == path.name, output
    assert (int(first["line"]), int(first["col"])) == (line, col), output
    assert substring in first["msg"], output


@pytest.mark.slow
@pytest.mark.parametrize("path", [pytest.param(f, id=f.stem) for f in SHIPPED_WORKFLOWS])
def test_cli_validate_accepts_shipped_workflow(path: Path) -> None:
    """`sangkien validate` exits 0 on every workflow shipped in workflows/, printing no error."""
    proc = _run_cli(str(path), cwd=HERE.parent)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode == 0, output
    assert ": error: " not in output, output


@pytest.mark.slow
def test_cli_validate_accepts_base_workflow(tmp_path: Path) -> None:
    """`sangkien validate` exits 0 on the valid base workflow and prints no problem line."""
    (tmp_path / "base.yaml").write_text(BASE, encoding="utf-8")
    proc = _run_cli("base.yaml", cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode == 0, output
    assert not any(PROBLEM_LINE.match(x) for x in output.splitlines()), output


@pytest.mark.slow
def test_cli_validate_missing_file(tmp_path: Path) -> None:
    """`sangkien validate` on a file that does not exist exits 1 without a traceback."""
    proc = _run_cli("nowhere.yaml", cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    assert proc.returncode == 1, output
    assert "nowhere.yaml" in output, output
