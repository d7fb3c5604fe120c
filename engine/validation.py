"""Semantic checks of a structurally valid workflow: the graph, roles, fields, expressions."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from sangkien._yaml import Located
from sangkien.definition import guards_of
from sangkien.errors import Problem
from sangkien.expressions import CompiledExpression, ExpressionError, compile_expression

__all__ = ["check_semantics"]


def check_semantics(wf: Any, doc: Located) -> tuple[dict[str, CompiledExpression], list[Problem]]:
    """Return the compiled expressions of *wf* and every problem found in it."""
    return _Checker(wf, doc).run()


class _Checker:
    def __init__(self, wf: Any, doc: Located) -> None:
        self.wf = wf
        self.doc = doc
        self.problems: list[Problem] = []
        self.expressions: dict[str, CompiledExpression] = {}
        self.roles = set(wf.role_specs)
        self.fields = wf.fields

    def error(self, path: tuple[Any, ...], message: str, *, key: bool = False) -> None:
        self.problems.append(self.doc.problem(path, message, key=key))

    def warn(self, path: tuple[Any, ...], message: str, *, key: bool = False) -> None:
        self.problems.append(self.doc.problem(path, message, key=key, warning=True))

    def run(self) -> tuple[dict[str, CompiledExpression], list[Problem]]:
        self.check_roles()
        self.check_fields()
        self.check_states()
        self.check_start()
        self.check_transitions()
        self.check_graph()
        self.check_deadlines()
        return self.expressions, self.problems

    # ---------------------------------------------------------------- pieces

    def check_roles(self) -> None:
        if "system" in self.roles:
            self.error(("roles",), "role 'system' is reserved for the engine; choose another name")

    def check_fields(self) -> None:
        for name, spec in self.fields.items():
            path = ("fields", name)
            if spec.type == "enum" and not spec.values:
                self.error(path, f"field {name!r} is an enum and needs 'values'")
            if spec.values is not None and spec.type != "enum":
                self.error(
                    (*path, "values"),
                    f"'values' only applies to enum fields; {name!r} is {spec.type}",
                )
            if spec.items is not None and spec.type != "list":
                self.error(
                    (*path, "items"),
                    f"'items' only applies to list fields; {name!r} is {spec.type}",
                )
            if (spec.min is not None or spec.max is not None) and spec.type not in (
                "integer",
                "number",
            ):
                self.error(
                    path,
                    f"'min'/'max' only apply to integer and number fields; {name!r} is {spec.type}",
                )
            if spec.min is not None and spec.max is not None and spec.min > spec.max:
                self.error(
                    (*path, "min"),
                    f"field {name!r}: min {_num(spec.min)} is greater than max {_num(spec.max)}",
                )
            if spec.pattern is not None and spec.type not in ("string", "text"):
                self.error(
                    (*path, "pattern"),
                    f"'pattern' only applies to string fields; {name!r} is {spec.type}",
                )
            if spec.default is not None:
                from sangkien.fields import check_value

                err = check_value(name, spec, spec.default)
                if err:
                    self.error((*path, "default"), f"default: {err}")

    def check_states(self) -> None:
        states = self.wf.states
        initial = [n for n, s in states.items() if s.initial]
        if not initial:
            self.error(
                ("states",),
                "no initial state; mark exactly one state with 'initial: true'",
                key=True,
            )
        for extra in initial[1:]:
            self.error(
                ("states", extra),
                f"several initial states ({', '.join(initial)}); "
                "exactly one state may have 'initial: true'",
                key=True,
            )
        for name, spec in states.items():
            if spec.initial and spec.final:
                self.error(
                    ("states", name), f"state {name!r} cannot be both initial and final", key=True
                )

    def check_start(self) -> None:
        start = self.wf.start
        for i, role in enumerate(start.roles or []):
            self._role(("start", "roles", i), role)
        for i, f in enumerate(start.requires):
            self._field(("start", "requires", i), f)
        for j, f in enumerate(start.accepts or []):
            self._field(("start", "accepts", j), f)
        self._guards(("start", "when"), start.when, allow_state=False)
        for target, expr in start.set.items():
            self._field(("start", "set", target), target, key=True)
            self._expr(("start", "set", target), expr, allow_state=False)

    def check_transitions(self) -> None:
        states = self.wf.states
        seen: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, t in enumerate(self.wf.transitions):
            base = ("transitions", i)
            for j, src in enumerate(t.sources):
                path = (*base, "from", j) if isinstance(t.source, list) else (*base, "from")
                if src not in states:
                    self.error(
                        path,
                        f"transition {t.trigger!r} leaves unknown state {src!r}"
                        + _hint(src, states),
                    )
                elif states[src].final:
                    self.error(
                        path,
                        f"final state {src!r} cannot have outgoing transitions "
                        f"({t.trigger!r}); remove 'final' or the transition",
                    )
                seen[(t.trigger, src)].append(i)
            if t.to is not None and t.to not in states:
                self.error(
                    (*base, "to"),
                    f"transition {t.trigger!r} enters unknown state {t.to!r}{_hint(t.to, states)}",
                )
            for j, role in enumerate(t.roles):
                self._role((*base, "roles", j), role)
            for j, f in enumerate(t.requires):
                self._field((*base, "requires", j), f)
            for j, f in enumerate(t.accepts or []):
                self._field((*base, "accepts", j), f)
            self._guards((*base, "when"), t.when)
            for target, expr in t.set.items():
                self._field((*base, "set", target), target, key=True)
                self._expr((*base, "set", target), expr)
        for (trigger, src), idxs in seen.items():
            if len(idxs) < 2:
                continue
            guards = [
                tuple(g for g, _ in guards_of(self.wf.transitions[i].when)) or None for i in idxs
            ]
            unguarded = [i for i, g in zip(idxs, guards, strict=True) if not g]
            dup = len({g for g in guards if g}) < len([g for g in guards if g])
            if unguarded or dup:
                later = idxs[1]
                self.error(
                    ("transitions", later, "trigger"),
                    f"ambiguous transitions: {trigger!r} from {src!r} is defined "
                    f"{len(idxs)} times (transitions {', '.join(str(i + 1) for i in idxs)}) "
                    "without distinct 'when' guards to choose between them",
                )

    def check_graph(self) -> None:
        states = self.wf.states
        initial = [n for n, s in states.items() if s.initial]
        if not initial:
            return
        edges: dict[str, set[str]] = defaultdict(set)
        for t in self.wf.transitions:
            for src in t.sources:
                edges[src].add(t.to or src)
        reached = {initial[0]}
        todo = [initial[0]]
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt in states and nxt not in reached:
                    reached.add(nxt)
                    todo.append(nxt)
        for name, spec in states.items():
            if name not in reached and not spec.initial:
                self.error(
                    ("states", name),
                    f"state {name!r} is unreachable from the initial state {initial[0]!r}",
                    key=True,
                )
            elif not spec.final and not any(t != name for t in edges[name]):
                self.warn(
                    ("states", name),
                    f"state {name!r} is not final but no transition leads out of it",
                    key=True,
                )

    def check_deadlines(self) -> None:
        states = self.wf.states
        for name, spec in states.items():
            self._notify(("states", name, "notify"), spec.notify)
            if spec.deadline is not None:
                path = ("states", name, "deadline")
                if spec.final:
                    self.error(path, f"final state {name!r} cannot have a deadline", key=True)
                self._deadline(path, spec.deadline, owner_states=[name], clock=False)
        for i, tr in enumerate(self.wf.transitions):
            self._notify(("transitions", i, "notify"), tr.notify)
        triggers = {tr.trigger for tr in self.wf.transitions}
        for cname, clock in self.wf.clocks.items():
            cpath: tuple[Any, ...] = ("clocks", cname)
            seen: set[str] = set()
            for key in ("runs_in", "pauses_in"):
                for j, st in enumerate(getattr(clock, key)):
                    if st not in states:
                        self.error(
                            (*cpath, key, j),
                            f"clock {cname!r}: unknown state {st!r}" + _hint(st, states),
                        )
                    elif states[st].final:
                        self.error(
                            (*cpath, key, j),
                            f"clock {cname!r} cannot run or pause in "
                            f"final state {st!r}; it stops there by itself",
                        )
                    if st in seen:
                        self.error(
                            (*cpath, key, j),
                            f"clock {cname!r}: state {st!r} is listed "
                            "in both runs_in and pauses_in",
                        )
                    seen.add(st)
            for j, trig in enumerate(clock.stops_on):
                if trig not in triggers:
                    self.error(
                        (*cpath, "stops_on", j),
                        f"clock {cname!r} stops on unknown trigger {trig!r}"
                        + _hint(trig, triggers),
                    )
            for j, trig in enumerate(clock.starts_on or []):
                if trig not in triggers:
                    self.error(
                        (*cpath, "starts_on", j),
                        f"clock {cname!r} starts on unknown "
                        f"trigger {trig!r}" + _hint(trig, triggers),
                    )
            self._deadline(cpath, clock, owner_states=list(clock.runs_in), clock=True)

    def _deadline(
        self, path: tuple[Any, ...], d: Any, *, owner_states: list[str], clock: bool
    ) -> None:
        if d.at is not None and (d.after is not None or d.from_ is not None):
            self.error(
                (*path, "at"),
                "'at' gives the due time itself; do not combine it with 'after' or 'from'",
            )
        if clock and d.at is not None:
            self.error(
                (*path, "at"),
                "a clock counts a period: use 'after' (and optionally 'from'), not 'at'",
            )
        if d.at is None and d.after is None:
            self.error(path, "a deadline needs 'after' (a period) or 'at' (a due time)", key=True)
        if d.from_ is not None and d.after is None:
            self.error((*path, "from"), "'from' needs 'after': the period counted from it")
        if d.after is not None:
            self._duration((*path, "after"), d.after)
        for j, r in enumerate(d.remind):
            self._duration((*path, "remind", j), r)
        if d.from_ is not None:
            self._expr((*path, "from"), d.from_)
        if d.at is not None:
            self._expr((*path, "at"), d.at)
        self._notify((*path, "notify"), d.notify)
        for j, step in enumerate(d.escalate):
            spath = (*path, "escalate", j)
            self._duration((*spath, "after"), step.after)
            self._notify((*spath, "notify"), step.notify)
            for target, expr in step.set.items():
                self._field((*spath, "set", target), target, key=True)
                self._expr((*spath, "set", target), expr)
            if step.fire is not None:
                self._escalation_fire((*spath, "fire"), step.fire, owner_states)

    def _escalation_fire(self, path: tuple[Any, ...], trigger: str, states: list[str]) -> None:
        specs = [t for t in self.wf.transitions if t.trigger == trigger]
        if not specs:
            self.error(
                path,
                f"escalation fires unknown trigger {trigger!r}"
                + _hint(trigger, {t.trigger for t in self.wf.transitions}),
            )
            return
        if not any("system" in t.roles for t in specs):
            self.error(
                path,
                f"escalation fires {trigger!r}, but no {trigger!r} transition "
                "lists role 'system' (the engine acts as 'system')",
            )
            return
        leaving = {src for t in specs if "system" in t.roles for src in t.sources}
        missing = [st for st in states if st not in leaving]
        if missing:
            self.error(
                path,
                f"escalation fires {trigger!r}, but no {trigger!r} transition "
                f"for role 'system' leaves state {missing[0]!r}",
            )

    def _duration(self, path: tuple[Any, ...], text: str) -> None:
        from sangkien.calendar import DurationError, parse_duration

        try:
            parse_duration(text)
        except DurationError as exc:
            self.error(path, str(exc))

    def _notify(self, path: tuple[Any, ...], items: Any) -> None:
        for j, item in enumerate(items):
            recipients = [item] if isinstance(item, str) else list(item.to)
            for k, who in enumerate(recipients):
                where = (*path, j) if isinstance(item, str) else (*path, j, "to", k)
                if who in ("author", "actor", "starter") or who in self.roles:
                    continue
                if who.endswith("@parent"):
                    role = who[: -len("@parent")]
                    if role in self.roles:
                        continue
                    self.error(where, f"unknown role {role!r} in {who!r}" + _hint(role, self.roles))
                    continue
                if "@" in who or ":" in who:
                    continue  # a literal address (email, URL, channel-specific id)
                self.error(
                    where,
                    f"unknown recipient {who!r}: use a declared role, 'author', "
                    "'actor', or an address" + _hint(who, self.roles),
                )

    # ---------------------------------------------------------------- helpers

    def _role(self, path: tuple[Any, ...], role: str) -> None:
        if role != "system" and role not in self.roles:
            self.error(path, f"role {role!r} is not declared in 'roles'{_hint(role, self.roles)}")

    def _guards(self, path: tuple[Any, ...], when: Any, *, allow_state: bool = True) -> None:
        if when is None:
            return
        if isinstance(when, str):
            self._expr(path, when, allow_state=allow_state)
            return
        for j, g in enumerate(when):
            if isinstance(g, str):
                self._expr((*path, j), g, allow_state=allow_state)
            else:
                self._expr((*path, j, "check"), g.check, allow_state=allow_state)

    def _field(self, path: tuple[Any, ...], name: str, *, key: bool = False) -> None:
        if name not in self.fields:
            self.error(
                path,
                f"unknown field {name!r}; declare it under 'fields'{_hint(name, self.fields)}",
                key=key,
            )

    def _expr(self, path: tuple[Any, ...], source: str, *, allow_state: bool = True) -> None:
        scope = {"data", "actor", "now", "instance", "input"}
        if allow_state:
            scope.add("state_entered_at")
        if self.wf.parent:
            scope.add("parent")
        try:
            compiled = compile_expression(source, scope)
        except ExpressionError as exc:
            line, col = self.doc.text_position(path, exc.line, exc.column)
            msg = str(exc)
            if "'parent'" in msg and not self.wf.parent:
                msg = "expression uses 'parent' but the workflow declares no 'parent' workflow"
            self.problems.append(Problem(self.doc.file, line, col, msg))
            return
        for ref in compiled.field_refs:
            if ref.parent:
                continue  # the parent's fields are checked when the parent is known at runtime
            if ref.name not in self.fields:
                line, col = self.doc.text_position(path, *compiled.position(ref.offset))
                self.problems.append(
                    Problem(
                        self.doc.file,
                        line,
                        col,
                        f"unknown field {ref.name!r} in expression; declare it under 'fields'"
                        f"{_hint(ref.name, self.fields)}",
                    )
                )
        self.expressions[source] = compiled


def _hint(name: str, known: Any) -> str:
    import difflib

    match = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean {match[0]!r}?" if match else ""


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def check_notifications(
    definition: Any, templates: Any, channels: Any, lang: str = "vi"
) -> list[Problem]:
    """Check every notify item's template (exists, renders) and channels (known).

    Run where templates and adapters are known (``sangkien validate``, ``Engine.register``):
    a template that names a missing variable is an error here, never a blank in a letter.
    """
    from sangkien._yaml import load_yaml
    from sangkien.templates import sample_context

    doc = load_yaml(definition.source, definition.file)
    problems: list[Problem] = []
    known_channels = set(channels)
    context = sample_context(definition, lang)
    checked: dict[str, list[str]] = {}
    for path, items, default in _notify_sites(definition.model):
        for j, item in enumerate(items):
            chans: list[str]
            if isinstance(item, str):
                names, chans, ipath = [default], [], (*path, j)
            else:
                names, chans, ipath = [item.template or default], item.channels or [], (*path, j)
            for k, chan in enumerate(chans):
                if chan not in known_channels:
                    problems.append(
                        doc.problem(
                            (*ipath, "channels", k),
                            f"unknown channel {chan!r} (available: "
                            f"{', '.join(sorted(known_channels))})" + _hint(chan, known_channels),
                        )
                    )
            for name in names:
                tpath = (
                    (*ipath, "template") if not isinstance(item, str) and item.template else ipath
                )
                if not templates.exists(name):
                    problems.append(
                        doc.problem(
                            tpath, f"unknown template {name!r}" + _hint(name, templates.names())
                        )
                    )
                    continue
                if name not in checked:
                    checked[name] = templates.check(name, context)
                for issue in checked[name]:
                    problems.append(doc.problem(tpath, f"template {name!r}: {issue}"))
    return problems


def _notify_sites(wf: Any) -> list[tuple[tuple[Any, ...], Any, str]]:
    sites: list[tuple[tuple[Any, ...], Any, str]] = []
    for name, st in wf.states.items():
        sites.append((("states", name, "notify"), st.notify, "state_entered"))
        if st.deadline is not None:
            sites.extend(_deadline_sites(("states", name, "deadline"), st.deadline))
    for i, tr in enumerate(wf.transitions):
        sites.append((("transitions", i, "notify"), tr.notify, "transition"))
    for cname, clock in wf.clocks.items():
        sites.extend(_deadline_sites(("clocks", cname), clock))
    return sites


def _deadline_sites(path: tuple[Any, ...], d: Any) -> list[tuple[tuple[Any, ...], Any, str]]:
    out: list[tuple[tuple[Any, ...], Any, str]] = [((*path, "notify"), d.notify, "reminder")]
    for j, step in enumerate(d.escalate):
        out.append(((*path, "escalate", j, "notify"), step.notify, "escalation"))
    return out
