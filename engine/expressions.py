"""Guard and effect expressions: CEL, compiled once at load time, never ``eval``.

CEL (Common Expression Language) is non-Turing-complete, side-effect free and has no access
to the host: it is the language of admin-written policy in Kubernetes, Envoy and Google
IAM. We run it through the Rust implementation's Python bindings, which evaluate a compiled
program in a few microseconds.

At load time an expression is parsed (syntax errors keep their line and column), its free
names are checked against the scope the engine provides, and every ``data.<field>`` it reads
is reported so that the definition can check it against the declared fields.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

import cel

__all__ = [
    "SCOPE_NAMES",
    "CompiledExpression",
    "ExpressionError",
    "FieldRef",
    "compile_expression",
    "to_cel",
]

SCOPE_NAMES = frozenset({"data", "parent", "actor", "now", "state_entered_at", "instance", "input"})
"""Names an expression may use: see docs/workflow-language.md#expressions."""

_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_FUNCTIONS = frozenset(
    {
        "size",
        "contains",
        "startsWith",
        "endsWith",
        "matches",
        "has",
        "int",
        "uint",
        "double",
        "string",
        "bytes",
        "timestamp",
        "duration",
        "type",
        "dyn",
        "getFullYear",
        "getMonth",
        "getDayOfMonth",
        "getDate",
        "getDayOfWeek",
        "getDayOfYear",
        "getHours",
        "getMinutes",
        "getSeconds",
        "getMilliseconds",
        *_MACROS,
    }
)

_TOKEN = re.compile(
    r"""(?P<str>[rRbB]{0,2}(?:'''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))"""
    r"""|(?P<ident>[A-Za-z_][A-Za-z0-9_]*)"""
    r"""|(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[uU]?)"""
    r"""|(?P<ws>\s+)"""
    r"""|(?P<op>.)""",
    re.S,
)
_TYPE_NAMES = frozenset(
    {"int", "uint", "double", "string", "bytes", "bool", "list", "map", "null_type", "type"}
)
_GETTERS = frozenset(f for f in _FUNCTIONS if f.startswith("get"))
_PARSE_POS = re.compile(r"<input>:(\d+):(\d+): (.*?)(?:\n|$)")


class ExpressionError(ValueError):
    """An expression does not compile or uses a name outside its scope.

    ``line`` and ``column`` are 1-based positions inside the expression text.
    """

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        self.line = line
        self.column = column
        super().__init__(message)


@dataclass(frozen=True, slots=True)
class FieldRef:
    """A read of ``data.<name>`` (or ``parent.data.<name>`` when *parent*) at an offset."""

    name: str
    offset: int
    parent: bool = False


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    offset: int


def _tokens(source: str) -> list[_Token]:
    out = []
    for m in _TOKEN.finditer(source):
        kind = m.lastgroup or "op"
        if kind != "ws":
            out.append(_Token(kind, m.group(), m.start()))
    return out


def _line_col(source: str, offset: int) -> tuple[int, int]:
    line = source.count("\n", 0, offset) + 1
    col = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return line, col


def _scan(tokens: list[_Token]) -> tuple[list[FieldRef], set[str]]:
    """Find ``data.x`` / ``parent.data.x`` reads and comprehension variables."""
    refs: list[FieldRef] = []
    bound: set[str] = set()

    def at(i: int) -> _Token | None:
        return tokens[i] if 0 <= i < len(tokens) else None

    for i, tok in enumerate(tokens):
        if tok.kind != "ident":
            continue
        prev = at(i - 1)
        after_dot = prev is not None and prev.text == "."
        if tok.text in _MACROS and after_dot:
            nxt, var, comma = at(i + 1), at(i + 2), at(i + 3)
            if (
                nxt
                and nxt.text == "("
                and var
                and var.kind == "ident"
                and comma
                and comma.text == ","
            ):
                bound.add(var.text)
            continue
        if after_dot:
            continue
        if tok.text == "parent":
            dot, d = at(i + 1), at(i + 2)
            if dot and dot.text == "." and d and d.text == "data":
                ref = _member(tokens, i + 3)
                if ref is not None:
                    refs.append(FieldRef(ref[0], ref[1], parent=True))
            continue
        if tok.text != "data":
            continue
        ref = _member(tokens, i + 1)
        if ref is not None:
            refs.append(FieldRef(ref[0], ref[1]))
    return refs, bound


def _member(tokens: list[_Token], i: int) -> tuple[str, int] | None:
    """Read ``.name`` or ``["name"]`` starting at token *i*."""
    if i + 1 >= len(tokens):
        return None
    if tokens[i].text == "." and tokens[i + 1].kind == "ident":
        return tokens[i + 1].text, tokens[i + 1].offset
    if (
        tokens[i].text == "["
        and tokens[i + 1].kind == "str"
        and i + 2 < len(tokens)
        and tokens[i + 2].text == "]"
    ):
        raw = tokens[i + 1].text.lstrip("rRbB")
        return raw.strip("'\""), tokens[i + 1].offset
    return None


class CompiledExpression:
    """A compiled CEL program plus what it reads; evaluate with :meth:`evaluate`."""

    __slots__ = ("_program", "field_refs", "names", "source")

    def __init__(self, source: str, program: Any, names: frozenset[str], refs: list[FieldRef]):
        self.source = source
        self._program = program
        self.names = names
        self.field_refs = refs

    def position(self, offset: int) -> tuple[int, int]:
        """Return the 1-based (line, column) of *offset* in the source."""
        return _line_col(self.source, offset)

    def evaluate(self, scope: Mapping[str, Any]) -> Any:
        """Run the program; raises ``ExpressionError`` if evaluation fails."""
        try:
            # hand CEL only the variables this expression reads: converting the rest costs
            return self._program.execute({k: scope[k] for k in self.names if k in scope})
        except KeyError as exc:
            raise ExpressionError(f"no value for {exc.args[0]!r}") from None
        except Exception as exc:  # the bindings raise RuntimeError/TypeError/ValueError
            raise ExpressionError(str(exc).split(". ")[0]) from None

    def __repr__(self) -> str:
        return f"CompiledExpression({self.source!r})"


def compile_expression(source: str, scope: Iterable[str] = SCOPE_NAMES) -> CompiledExpression:
    """Compile *source* or raise :class:`ExpressionError` with its position."""
    if not isinstance(source, str) or not source.strip():
        raise ExpressionError("expression is empty")
    try:
        program = cel.compile(source)
    except Exception as exc:
        message = str(exc)
        m = _PARSE_POS.search(message)
        if m:
            text = m.group(3).replace("Syntax error: ", "")
            raise ExpressionError(
                f"expression does not compile: {text}", int(m.group(1)), int(m.group(2))
            ) from None
        raise ExpressionError(f"expression does not compile: {message}") from None
    tokens = _tokens(source)
    refs, bound = _scan(tokens)
    allowed = set(scope) | bound | _TYPE_NAMES
    variables = set(program.variables())

    def free(i: int, tok: _Token) -> bool:
        return i == 0 or tokens[i - 1].text != "."

    for name in sorted(variables - allowed):
        offset = next(
            (
                t.offset
                for i, t in enumerate(tokens)
                if t.kind == "ident" and t.text == name and free(i, t)
            ),
            0,
        )
        line, col = _line_col(source, offset)
        raise ExpressionError(
            f"unknown name {name!r} in expression; available: {', '.join(sorted(scope))}", line, col
        )
    for fn in program.functions():
        if fn[:1] in "_@!-" or fn in _FUNCTIONS:
            continue
        offset = next(
            (
                t.offset
                for i, t in enumerate(tokens)
                if t.text == fn and i + 1 < len(tokens) and tokens[i + 1].text == "("
            ),
            0,
        )
        line, col = _line_col(source, offset)
        raise ExpressionError(f"unknown function {fn!r} in expression", line, col)
    for i, tok in enumerate(tokens[:-2]):
        if tok.text in _GETTERS and tokens[i + 1].text == "(" and tokens[i + 2].text != ")":
            line, col = _line_col(source, tokens[i + 2].offset)
            raise ExpressionError(
                f"{tok.text}() takes no time-zone argument here; timestamps are UTC "
                "(compare dates, or add duration('7h') for Vietnam time)",
                line,
                col,
            )
    return CompiledExpression(source, program, frozenset(variables & set(scope)), refs)


def to_cel(value: Any) -> Any:
    """Convert stored JSON-ish data into values CEL understands (dates become timestamps)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(0), tzinfo=UTC)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): to_cel(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_cel(v) for v in value]
    return value
