"""Unit hierarchy used for authorization: a unit's officers act on its sub-units' instances."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

__all__ = ["FlatUnits", "StaticUnitTree", "UnitTree"]


@runtime_checkable
class UnitTree(Protocol):
    """Answers which units an actor's unit covers (itself and everything below it)."""

    def covers(self, actor_unit: str, unit: str) -> bool: ...

    def subtree(self, unit: str) -> frozenset[str] | None:
        """All units under *unit*, itself included; None if unbounded/unknown."""
        ...


class FlatUnits:
    """No hierarchy: a unit covers only itself."""

    def covers(self, actor_unit: str, unit: str) -> bool:
        return actor_unit == unit

    def subtree(self, unit: str) -> frozenset[str] | None:
        return frozenset({unit})


class StaticUnitTree:
    """A hierarchy given as ``{unit: parent_unit_or_None}``."""

    def __init__(self, parents: Mapping[str, str | None]) -> None:
        self._parents = dict(parents)
        children: dict[str, set[str]] = {}
        for child, parent in self._parents.items():
            if parent is not None:
                children.setdefault(parent, set()).add(child)
        self._children = children

    def covers(self, actor_unit: str, unit: str) -> bool:
        seen: set[str] = set()
        cur: str | None = unit
        while cur is not None and cur not in seen:
            if cur == actor_unit:
                return True
            seen.add(cur)
            cur = self._parents.get(cur)
        return False

    def subtree(self, unit: str) -> frozenset[str] | None:
        out = {unit}
        todo = [unit]
        while todo:
            for child in self._children.get(todo.pop(), ()):
                if child not in out:
                    out.add(child)
                    todo.append(child)
        return frozenset(out)
