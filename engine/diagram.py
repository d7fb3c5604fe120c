"""Render a workflow's graph as Mermaid or Graphviz DOT."""

from __future__ import annotations

from sangkien.definition import Definition

__all__ = ["to_dot", "to_mermaid"]


def to_mermaid(definition: Definition, lang: str = "vi") -> str:
    """Return a Mermaid ``stateDiagram-v2`` of *definition*."""
    wf = definition.model
    lines = ["stateDiagram-v2", f"    %% {definition.key} v{definition.version}"]
    for name in wf.states:
        lines.append(f"    {name} : {_quote(definition.label(name, lang))}")
    lines.append(f"    [*] --> {definition.initial_state}")
    for spec in wf.transitions:
        for src in spec.sources:
            lines.append(f"    {src} --> {spec.to or src} : {spec.trigger}")
    for name, s in wf.states.items():
        if s.final:
            lines.append(f"    {name} --> [*]")
    return "\n".join(lines) + "\n"


def to_dot(definition: Definition, lang: str = "vi") -> str:
    """Return a Graphviz DOT digraph of *definition*."""
    wf = definition.model
    out = [
        f'digraph "{definition.key}_v{definition.version}" {{',
        "    rankdir=LR;",
        "    node [shape=box, style=rounded];",
        "    __start [shape=point];",
    ]
    for name, s in wf.states.items():
        shape = ", peripheries=2" if s.final else ""
        out.append(f'    {name} [label="{_esc(definition.label(name, lang))}"{shape}];')
    out.append(f"    __start -> {definition.initial_state};")
    for spec in wf.transitions:
        for src in spec.sources:
            style = ", style=dashed" if spec.to is None else ""
            out.append(f'    {src} -> {spec.to or src} [label="{spec.trigger}"{style}];')
    out.append("}")
    return "\n".join(out) + "\n"


def _quote(text: str) -> str:
    return text.replace(":", "-").replace("\n", " ")


def _esc(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
