"""Hostile or malformed input to the workflow loader fails safely, as a DefinitionError.

Workflow files are written by administrators and may be pasted from anywhere: loading one must
never execute code, never eat memory or time, and never surface as anything but a
:class:`~sangkien.errors.DefinitionError` whose problems point at the offending place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sangkien._yaml import MAX_BYTES, MAX_NODES, load_yaml
from sangkien.definition import parse_definition
from sangkien.errors import DefinitionError, Problem

VALID = """\
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

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _problems(source: str | bytes, file: str = "hostile.yaml") -> list[Problem]:
    with pytest.raises(DefinitionError) as info:
        parse_definition(source, file)
    assert info.value.problems
    return info.value.problems


def _first(source: str | bytes) -> Problem:
    return _problems(source)[0]


def _only_definition_errors(source: str | bytes) -> None:
    """Parse *source*; anything raised other than DefinitionError fails the calling test."""
    try:
        parse_definition(source, "fuzz.yaml")
    except DefinitionError as exc:
        assert exc.problems
        for p in exc.problems:
            assert p.line >= 1 and p.column >= 1, str(p)
            assert p.message, str(p)


# --------------------------------------------------------------------------- tags


def test_valid_workflow_loads() -> None:
    """The workflow the hostile variants are built from is itself valid."""
    assert parse_definition(VALID).key == "initiative"


def test_python_object_apply_tag_is_refused_without_running_it(tmp_path: Path) -> None:
    """'!!python/object/apply:os.system' is refused at its position and never executed."""
    marker = tmp_path / "pwned"
    source = f'workflow: !!python/object/apply:os.system ["touch {marker}"]\nversion: 1\n'
    p = _first(source)
    assert (p.line, p.column) == (1, 11), str(p)
    assert "python/object/apply:os.system" in p.message
    assert "not allowed" in p.message
    assert not marker.exists()


@pytest.mark.parametrize(
    ("source", "tag", "line", "col"),
    [
        pytest.param(
            "workflow: a\nversion: !!python/name:os.system\n",
            "!!python/name:os.system",
            2,
            10,
            id="python-name",
        ),
        pytest.param(
            "workflow: a\nstates:\n  x: !!python/object:os.system {a: 1}\n",
            "python/object:os.system",
            3,
            6,
            id="python-object-mapping",
        ),
        pytest.param("workflow: !foo initiative\n", "!foo", 1, 11, id="custom-scalar"),
        pytest.param("workflow: a\nroles: !foo [author]\n", "!foo", 2, 8, id="custom-sequence"),
        pytest.param("!foo\nworkflow: a\n", "!foo", 1, 1, id="custom-on-document"),
        pytest.param(
            "workflow: !<tag:example.com,2000:x> a\n",
            "tag:example.com,2000:x",
            1,
            11,
            id="verbatim",
        ),
        pytest.param("workflow: !!binary aGk=\n", "!!binary", 1, 11, id="binary"),
        pytest.param("roles: !!set {a, b}\n", "set", 1, 8, id="set"),
    ],
)
def test_non_plain_tags_are_refused(source: str, tag: str, line: int, col: int) -> None:
    """Any tag outside plain YAML data is refused with a message naming it, at the tag."""
    p = _first(source)
    assert (p.line, p.column) == (line, col), str(p)
    assert tag in p.message, str(p)
    assert "not allowed" in p.message


def test_merge_keys_are_refused() -> None:
    """'<<' merge keys are refused rather than silently merged."""
    p = _first("base: &b {initial: true}\nstates:\n  draft:\n    <<: *b\n")
    assert (p.line, p.column) == (4, 5), str(p)
    assert "merge keys" in p.message


# --------------------------------------------------------------------------- size and aliases


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_fails_fast_with_the_limit() -> None:
    """A 'billion laughs' alias bomb (9 levels of 9) is refused, naming the value limit."""
    p = _first(_alias_bomb())
    assert str(MAX_NODES) in p.message
    assert "alias" in p.message


def test_alias_bomb_inside_a_workflow_is_refused() -> None:
    """An alias bomb hidden in a field default of an otherwise valid workflow is refused."""
    bomb = _alias_bomb().replace("\n", "\n  ")
    source = VALID + "extra:\n  " + bomb
    assert str(MAX_NODES) in _first(source).message


def test_plain_aliases_still_work() -> None:
    """Ordinary anchors and aliases below the limit are expanded as YAML says."""
    doc = load_yaml("roles: &r [author]\nalso: *r\n")
    assert doc.data == {"roles": ["author"], "also": ["author"]}


@pytest.mark.parametrize("kind", [bytes, str])
def test_file_over_max_bytes_is_refused(kind: type) -> None:
    """A file larger than MAX_BYTES is refused before parsing, naming the limit."""
    source = "#" * (MAX_BYTES + 1)
    p = _first(source.encode() if kind is bytes else source)
    assert (p.line, p.column) == (1, 1)
    assert str(MAX_BYTES) in p.message


def test_file_of_exactly_max_bytes_is_parsed() -> None:
    """A file of exactly MAX_BYTES is not refused for its size (here: it is only a comment)."""
    p = _first(b"#" * MAX_BYTES)
    assert str(MAX_BYTES) not in p.message
    assert "empty" in p.message


# --------------------------------------------------------------------------- encoding


@pytest.mark.parametrize(
    ("source", "line", "col", "byte"),
    [
        pytest.param(b"\xffworkflow: a\n", 1, 1, "0xff", id="first-byte"),
        pytest.param(b"workflow: a\nversion: 1\ntitle: ab\xffcd\n", 3, 10, "0xff", id="mid-line"),
        pytest.param(b"workflow: a\ntitle: ab\xc3\n", 2, 10, "0xc3", id="truncated-sequence"),
        pytest.param(b"\xff\xfew\x00o\x00", 1, 1, "0xff", id="utf-16"),
    ],
)
def test_non_utf8_bytes_are_reported_with_position(
    source: bytes, line: int, col: int, byte: str
) -> None:
    """Bytes that are not UTF-8 are refused at the line and column of the first bad byte."""
    p = _first(source)
    assert (p.line, p.column) == (line, col), str(p)
    assert "UTF-8" in p.message
    assert byte in p.message


def test_non_utf8_column_counts_characters() -> None:
    """The column of a bad byte counts characters, like every other column, not bytes."""
    p = _first("title: Sáng kiến ".encode() + b"\xff\n")
    assert (p.line, p.column) == (1, 18), str(p)


@pytest.mark.parametrize("kind", [bytes, str])
def test_nul_bytes_are_refused(kind: type) -> None:
    """A NUL character is refused as 'not a text file' on its line."""
    source = "workflow: a\nversion: 1\ntitle: ab\x00cd\n"
    p = _first(source.encode() if kind is bytes else source)
    assert p.line == 3, str(p)
    assert "NUL" in p.message


def test_nul_byte_column() -> None:
    """A NUL character is reported at its own column."""
    p = _first("workflow: a\nversion: 1\ntitle: ab\x00cd\n")
    assert (p.line, p.column) == (3, 10), str(p)


@pytest.mark.parametrize("kind", [bytes, str])
def test_bom_is_accepted(kind: type) -> None:
    """A leading UTF-8 byte order mark is ignored."""
    source = "\ufeff" + VALID
    definition = parse_definition(source.encode() if kind is bytes else source)
    assert definition.key == "initiative"


def test_bom_does_not_shift_columns() -> None:
    """Positions in a file with a BOM are those an editor shows (the BOM takes no column)."""
    p = _first(("\ufeff" + VALID.replace("workflow: initiative", "workflow: Bad")).encode())
    assert (p.line, p.column) == (1, 11), str(p)
    assert "not a valid name" in p.message


def test_control_character_is_refused() -> None:
    """A C0 control character (other than tab and newline) is refused as a DefinitionError."""
    _first("workflow: a\nversion: 1\ntitle: ab\x07cd\n")


def test_control_character_position_and_one_line_message() -> None:
    """A control character is reported at its own line and column in a one-line message."""
    p = _first("workflow: a\nversion: 1\ntitle: ab\x07cd\n")
    assert (p.line, p.column) == (3, 10), str(p)
    assert "\n" not in p.message


# --------------------------------------------------------------------------- nesting


@pytest.mark.parametrize(
    "source",
    [
        pytest.param("[" * 10000, id="open-flow-sequences"),
        pytest.param("[" * 10000 + "]" * 10000, id="closed-flow-sequences"),
        pytest.param("{a: " * 10000 + "}" * 10000, id="flow-mappings"),
        pytest.param("- " * 5000 + "x\n", id="block-sequences"),
        pytest.param(
            "workflow: a\nfields:\n  x: {type: list, default: " + "[" * 10000 + "]" * 10000 + "}\n",
            id="inside-a-field-default",
        ),
    ],
)
def test_deep_nesting_is_a_definition_error(source: str) -> None:
    """Absurdly deep nesting gives a DefinitionError, never a RecursionError or a traceback."""
    p = _first(source)
    assert p.line >= 1 and p.column >= 1


def test_moderately_deep_default_is_a_definition_error() -> None:
    """Nesting deep enough to break serialization but not the YAML parser is refused cleanly."""
    depth = 300
    source = VALID.replace(
        "  score: {type: number, min: 0, max: 100}",
        "  score: {type: number, min: 0, max: 100}\n  extra: {type: list, default: "
        + "[" * depth
        + "]" * depth
        + "}",
    )
    _first(source)


# --------------------------------------------------------------------------- fuzzing

_YAML_PIECES = st.sampled_from(
    [
        *":-[]{},&*!|>#'\"\n \t?%@`.\\",
        "data.",
        "workflow",
        "states",
        "initial",
        "true",
        "&&",
        "(",
        ")",
        "  ",
        "\n  ",
        "\n    ",
        "x",
        "1",
        "<<",
        "!!python/name:os.system",
        "&a",
        "*a",
    ]
)
_YAMLISH = st.lists(_YAML_PIECES, max_size=60).map("".join)


@FUZZ
@given(st.binary())
def test_random_bytes_only_raise_definition_error(source: bytes) -> None:
    """Arbitrary bytes either load or raise DefinitionError; nothing else escapes."""
    _only_definition_errors(source)


@FUZZ
@given(st.text())
def test_random_text_only_raises_definition_error(source: str) -> None:
    """Arbitrary text either loads or raises DefinitionError; nothing else escapes."""
    _only_definition_errors(source)


@FUZZ
@given(_YAMLISH)
def test_yaml_like_text_only_raises_definition_error(source: str) -> None:
    """Text made of YAML punctuation and keywords either loads or raises DefinitionError."""
    _only_definition_errors(source)


@FUZZ
@given(st.integers(0, len(VALID)), st.integers(0, 40), _YAMLISH)
def test_mangled_workflow_only_raises_definition_error(
    start: int, length: int, insert: str
) -> None:
    """A valid workflow with a slice replaced by YAML-like junk loads or raises DefinitionError."""
    _only_definition_errors(VALID[:start] + insert + VALID[start + length :])
