"""One ``transitions`` machine per workflow version, shared by every instance.

The Machine is built once per version (building one per instance costs far more, and leaks
models). It holds the graph: its events map each (state, trigger) to the transitions that
may be taken, in file order, each with its condition. Firing resolves the trigger through
that table and takes the first transition whose condition (the engine's checks: role,
data, guards) passes, as ``transitions`` does; the engine has no callbacks to run, and
changing the state is a database write, so the Machine's own state-changing machinery
(event data, queue, model attribute) is not used on the hot path — it cost more than the
checks themselves. :meth:`WorkflowMachine.dispatch` runs the Machine's full dispatch on a
state holder and gives the same answer; a test keeps the two in step.
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
        # (state, trigger) -> [(spec, destination)], from the Machine's own event table
        self._table: dict[tuple[str, str], list[tuple[TransitionSpec, str]]] = {}
        for trigger, ev in self._machine.events.items():
            for src, taken in ev.transitions.items():
                specs = [s for s in self._from.get(src, []) if s.trigger == trigger]
                assert len(specs) == len(taken), (trigger, src)
                self._table[(src, trigger)] = [
                    (spec, tr.dest if tr.dest is not None else src)
                    for spec, tr in zip(specs, taken, strict=True)
                ]

    def candidates(self, state: str, trigger: str | None = None) -> list[TransitionSpec]:
        """Transitions leaving *state* (for *trigger* only, if given), in file order."""
        specs = self._from.get(state, [])
        return [s for s in specs if trigger is None or s.trigger == trigger]

    def fire(self, state: str, trigger: str, ctx: Any) -> str | None:
        """Resolve *trigger*; return the new state, or None if every condition refused.

        *ctx* must offer ``check(spec) -> bool``; the first transition whose check passes
        is taken (file order), exactly as ``transitions`` evaluates conditions.
        """
        for spec, dest in self._table.get((state, trigger), ()):
            if ctx.check(spec):
                return dest
        return None

    def dispatch(self, state: str, trigger: str, ctx: Any) -> str | None:
        """:meth:`fire` through the Machine's own event dispatch (same answer, slower)."""
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
