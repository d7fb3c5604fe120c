"""One ``transitions`` machine per workflow version, shared by every instance.

Instances are never added to the machine: a tiny state holder is dispatched against it with
``machine.events[trigger].trigger(holder, ctx=...)``. Building a Machine per instance costs
far more (and leaks models); the graph is the same for all instances of a version.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from transitions import Machine, MachineError

from sangkien.definition import Definition, TransitionSpec

__all__ = ["StateHolder", "WorkflowMachine", "machine_for"]


class StateHolder:
    """The only thing the machine sees of an instance: its current state."""

    __slots__ = ("state",)

    def __init__(self, state: str) -> None:
        self.state = state


Check = Callable[[TransitionSpec, Any], bool]


class WorkflowMachine:
    """The compiled graph of one workflow version."""

    def __init__(self, definition: Definition) -> None:
        self.definition = definition
        wf = definition.model
        transitions: list[dict[str, Any]] = []
        for spec in wf.transitions:
            transitions.append(
                {
                    "trigger": spec.trigger,
                    "source": spec.sources,
                    "dest": spec.to,  # None: an internal transition (stays, no exit/enter)
                    "conditions": [_condition(spec)],
                }
            )
        self._machine = Machine(
            model=None,
            states=list(wf.states),
            transitions=transitions,
            initial=definition.initial_state,
            auto_transitions=False,
            send_event=True,
            ignore_invalid_triggers=False,
        )
        self.triggers = frozenset(t.trigger for t in wf.transitions)
        self._from: dict[str, list[TransitionSpec]] = {}
        for spec in wf.transitions:
            for src in spec.sources:
                self._from.setdefault(src, []).append(spec)

    def candidates(self, state: str, trigger: str | None = None) -> list[TransitionSpec]:
        """Transitions leaving *state* (for *trigger* only, if given), in file order."""
        specs = self._from.get(state, [])
        return [s for s in specs if trigger is None or s.trigger == trigger]

    def fire(self, state: str, trigger: str, ctx: Any) -> str | None:
        """Dispatch *trigger*; return the new state, or None if every guard refused.

        *ctx* must offer ``check(spec) -> bool``; the first transition whose check passes
        is taken (file order), exactly as ``transitions`` evaluates conditions.
        """
        holder = StateHolder(state)
        try:
            done = self._machine.events[trigger].trigger(holder, ctx=ctx)
        except (KeyError, MachineError):
            return None
        return holder.state if done else None


def _condition(spec: TransitionSpec) -> Callable[[Any], bool]:
    def condition(event: Any) -> bool:
        return bool(event.kwargs["ctx"].check(spec))

    return condition


_cache: dict[tuple[str, int, str], WorkflowMachine] = {}
_lock = threading.Lock()


def machine_for(definition: Definition) -> WorkflowMachine:
    """Return the cached machine of *definition* (built on first use)."""
    key = (definition.key, definition.version, definition.content_hash)
    found = _cache.get(key)
    if found is not None:
        return found
    with _lock:
        found = _cache.get(key)
        if found is None:
            found = _cache[key] = WorkflowMachine(definition)
        return found
