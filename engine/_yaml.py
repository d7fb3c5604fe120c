"""Load YAML safely, keeping the position of every key and value.

Only plain data is built: mappings, sequences, strings, numbers, booleans and null. Any
explicit tag outside the YAML 1.2 core schema (``!!python/object`` and the like) is refused,
duplicate keys are errors (YAML itself keeps the last one silently), and aliases are counted
while expanding so that an alias bomb fails fast instead of eating memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError

from sangkien.errors import DefinitionError, Problem, first_line

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "Located", "load_yaml"]

MAX_BYTES = 1_000_000
"""Largest workflow file accepted; real definitions are a few kilobytes."""

MAX_NODES = 100_000
"""Most values a document may expand to (aliases included) before it is refused."""

_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {
    _TAG + "str",
    _TAG + "int",
    _TAG + "float",
    _TAG + "bool",
    _TAG + "null",
    _TAG + "timestamp",
}

MAX_DEPTH = 64
"""Deepest nesting accepted; workflows need fewer than ten levels."""

Path = tuple[str | int, ...]


@dataclass
class Located:
    """Plain data plus the 1-based (line, column) of each path's key and value."""

    data: Any
    file: str
    values: dict[Path, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Path, tuple[int, int]] = field(default_factory=dict)
    styles: dict[Path, str | None] = field(default_factory=dict)
    spans: dict[Path, tuple[int, int]] = field(default_factory=dict)
    text: str = ""

    def text_position(self, path: Path, line: int, column: int) -> tuple[int, int]:
        """Map a 1-based (line, column) inside the string at *path* to a file position.

        The parsed string and its source text differ (quotes, escapes, folding, block
        indentation) only in whitespace and escape characters, so each non-blank character
        of the value is matched, in order, to the source.
        """
        key = tuple(path)
        span = self.spans.get(key)
        value = self._value_at(key)
        if span is None or not isinstance(value, str):
            return self.position(key)
        lines = value.split("\n")
        line = max(1, min(line, len(lines)))
        offset = sum(len(x) + 1 for x in lines[: line - 1]) + column - 1
        start, end = span
        style = self.styles.get(key)
        j = start
        if style in ("|", ">"):
            j = self.text.find("\n", start, end) + 1 or start
        elif style in ('"', "'"):
            j = start + 1
        target = j
        for k, ch in enumerate(value):
            if ch.isspace():
                if k == offset:
                    target = j
                    break
                continue
            while j < end and self.text[j] != ch:
                j += 1
            if k == offset:
                target = j
                break
            j += 1
        else:
            target = j
        target = min(target, max(start, end - 1) if end > start else start)
        line_no = self.text.count("\n", 0, target) + 1
        col = target - (self.text.rfind("\n", 0, target) + 1) + 1
        return line_no, col

    def _value_at(self, path: Path) -> Any:
        cur = self.data
        for part in path:
            try:
                cur = cur[part]
            except (KeyError, IndexError, TypeError):
                return None
        return cur

    def position(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """Return the closest known position for *path* (its key if *key*, else its value)."""
        p = tuple(path)
        while True:
            if key and p in self.keys:
                return self.keys[p]
            if p in self.values:
                return self.values[p]
            if not p:
                return (1, 1)
            p = p[:-1]

    def problem(
        self, path: Path, message: str, *, key: bool = False, warning: bool = False
    ) -> Problem:
        line, col = self.position(path, key=key)
        return Problem(self.file, line, col, message, "warning" if warning else "error")


class _Builder:
    def __init__(self, doc: Located) -> None:
        self.doc = doc
        self.count = 0
        self.problems: list[Problem] = []

    def _pos(self, node: Node) -> tuple[int, int]:
        return (node.start_mark.line + 1, node.start_mark.column + 1)

    def _fail(self, node: Node, message: str) -> Problem:
        line, col = self._pos(node)
        return Problem(self.doc.file, line, col, message)

    def build(self, node: Node, path: Path) -> Any:
        if len(path) > MAX_DEPTH:
            raise DefinitionError(
                [self._fail(node, f"document is nested more than {MAX_DEPTH} levels deep")]
            )
        self.count += 1
        if self.count > MAX_NODES:
            raise DefinitionError(
                [
                    self._fail(
                        node,
                        f"document expands to more than {MAX_NODES} values "
                        "(alias bomb?); refusing to load it",
                    )
                ]
            )
        self.doc.values[path] = self._pos(node)
        if isinstance(node, ScalarNode):
            self.doc.styles[path] = node.style
            self.doc.spans[path] = (node.start_mark.index, node.end_mark.index)
            return self._scalar(node)
        if isinstance(node, SequenceNode):
            self._check_tag(node, _TAG + "seq")
            return [self.build(item, (*path, i)) for i, item in enumerate(node.value)]
        if isinstance(node, MappingNode):
            self._check_tag(node, _TAG + "map")
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    self.problems.append(self._fail(key_node, "mapping keys must be plain scalars"))
                    continue
                if key_node.tag == _TAG + "merge":
                    self.problems.append(
                        self._fail(key_node, "merge keys ('<<') are not supported")
                    )
                    continue
                key = str(self._scalar(key_node))
                if key in out:
                    first = self.doc.keys[(*path, key)]
                    self.problems.append(
                        self._fail(
                            key_node,
                            f"duplicate key {key!r} (first defined at line {first[0]}); "
                            "YAML would silently keep only the last one",
                        )
                    )
                    continue
                self.doc.keys[(*path, key)] = self._pos(key_node)
                out[key] = self.build(value_node, (*path, key))
            return out
        raise DefinitionError([self._fail(node, "unsupported YAML node")])  # pragma: no cover

    def _check_tag(self, node: Node, expected: str) -> None:
        if node.tag != expected:
            raise DefinitionError(
                [
                    self._fail(
                        node, f"tag {node.tag!r} is not allowed; only plain YAML data is accepted"
                    )
                ]
            )

    def _scalar(self, node: ScalarNode) -> Any:
        tag = node.tag or ""
        if tag not in _SCALAR_TAGS:
            short = tag.replace(_TAG, "!!")
            raise DefinitionError(
                [
                    self._fail(
                        node, f"tag {short!r} is not allowed; only plain YAML data is accepted"
                    )
                ]
            )
        text = node.value
        if tag == _TAG + "null":
            return None
        if tag == _TAG + "bool":
            return text.lower() == "true"
        if tag == _TAG + "int":
            try:
                return int(text.replace("_", ""), 0)
            except ValueError:
                return int(text.replace("_", ""))
        if tag == _TAG + "float":
            low = text.lower()
            if low in (".nan",):
                return float("nan")
            if low in (".inf", "+.inf"):
                return float("inf")
            if low == "-.inf":
                return float("-inf")
            return float(text.replace("_", ""))
        return text  # str and timestamps stay text; fields parse dates themselves


def load_yaml(source: str | bytes, file: str = "<string>") -> Located:
    """Parse *source* into :class:`Located` data or raise :class:`DefinitionError`."""
    if isinstance(source, bytes):
        if len(source) > MAX_BYTES:
            raise DefinitionError(
                [Problem(file, 1, 1, f"file is {len(source)} bytes; the limit is {MAX_BYTES}")]
            )
        try:
            text = source.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = source[: exc.start].count(b"\n") + 1
            line_start = source.rfind(b"\n", 0, exc.start) + 1
            col = len(source[line_start : exc.start].decode("utf-8", "replace")) + 1
            raise DefinitionError(
                [
                    Problem(
                        file, line, col, f"file is not valid UTF-8 (byte 0x{source[exc.start]:02x})"
                    )
                ]
            ) from None
    else:
        text = source
        if len(text) > MAX_BYTES:
            raise DefinitionError(
                [Problem(file, 1, 1, f"file is {len(text)} characters; the limit is {MAX_BYTES}")]
            )
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\x00" in text:
        i = text.index("\x00")
        line = text[:i].count("\n") + 1
        col = i - (text.rfind("\n", 0, i) + 1) + 1
        raise DefinitionError(
            [Problem(file, line, col, "file contains NUL characters; not a text file")]
        )
    yaml = YAML(typ="safe", pure=True)
    try:
        node = yaml.compose(text)
    except ReaderError as exc:
        pos = exc.position
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        raise DefinitionError(
            [Problem(file, line, col, f"control character U+{ord(char):04X} is not allowed")]
        ) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
        what = " ".join(x for x in (exc.context, exc.problem) if x) or "invalid YAML"
        if "\t" in what or "tab" in what.lower():
            what += " (indent with spaces, not tabs)"
        raise DefinitionError([Problem(file, line, col, f"YAML syntax: {what}")]) from None
    except RecursionError:
        raise DefinitionError([Problem(file, 1, 1, "document is nested too deeply")]) from None
    except (YAMLError, ValueError) as exc:
        raise DefinitionError([Problem(file, 1, 1, f"YAML syntax: {first_line(exc)}")]) from None
    doc = Located(data=None, file=file, text=text)
    if node is None:
        raise DefinitionError([Problem(file, 1, 1, "file is empty; expected a workflow mapping")])
    builder = _Builder(doc)
    try:
        doc.data = builder.build(node, ())
    except RecursionError:
        raise DefinitionError([Problem(file, 1, 1, "document is nested too deeply")]) from None
    if builder.problems:
        raise DefinitionError(builder.problems)
    return doc
