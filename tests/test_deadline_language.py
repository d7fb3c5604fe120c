"""The deadline language: every misuse is refused at load time with its line and column.

Each case starts from one valid workflow (BASE) and changes one line; the expected position
is computed from the edited text (the line and column where the offending key or value
starts), so a message pointing anywhere else fails.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from sangkien import DefinitionError, Problem, parse_definition
from sangkien.definition import workflow_json_schema

BASE = textwrap.dedent("""\
    workflow: dl_lang
    version: 1
    title: Deadline language
    roles: [clerk, head]
    fields:
      due_on: {type: date}
      note: {type: string}
    states:
      draft: {initial: true}
      reviewing:
        deadline:
          after: 10 working days
          remind: [2 working days]
          notify: [head]
          escalate:
            - after: 1 working day
              notify: [head]
              fire: expire
      amending: {}
      expired: {final: true}
      done: {final: true}
    transitions:
      - trigger: submit
        from: draft
        to: reviewing
        roles: [clerk]
      - trigger: amend
        from: reviewing
        to: amending
        roles: [head]
      - trigger: resubmit
        from: amending
        to: reviewing
        roles: [clerk]
      - trigger: finish
        from: [reviewing, amending]
        to: done
        roles: [head]
      - trigger: expire
        from: reviewing
        to: expired
        roles: [system]
    clocks:
      handling:
        after: 20 working days
        runs_in: [reviewing]
        pauses_in: [amending]
    """)


def _edit(old: str, new: str, text: str = BASE) -> str:
    assert text.count(old) == 1, f"{old!r} must occur exactly once in the workflow"
    return text.replace(old, new)


def _at(text: str, needle: str, *, after: str | None = None) -> tuple[int, int]:
    """1-based (line, column) of the first *needle* (after the first *after*, if given)."""
    start = text.index(after) if after is not None else 0
    offset = text.index(needle, start)
    line = text.count("\n", 0, offset) + 1
    column = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _errors(text: str) -> list[Problem]:
    with pytest.raises(DefinitionError) as info:
        parse_definition(text, "wf.yaml")
    return [p for p in info.value.problems if p.severity == "error"]


def _expect(text: str, where: tuple[int, int], *fragments: str) -> Problem:
    """Assert one error at *where* whose message holds every fragment; return it."""
    errors = _errors(text)
    matching = [p for p in errors if all(f in p.message for f in fragments)]
    assert matching, f"no error containing {fragments!r}; got {[str(p) for p in errors]}"
    prob = matching[0]
    assert (prob.line, prob.column) == where, str(prob)
    assert prob.file == "wf.yaml"
    assert str(prob).startswith(f"wf.yaml:{where[0]}:{where[1]}: error: ")
    return prob


def test_base_workflow_with_deadline_and_clock_is_valid() -> None:
    """The unedited workflow (state deadline, escalation firing a system trigger, clock) loads."""
    d = parse_definition(BASE, "wf.yaml")
    assert d.has_deadlines
    spec = d.model.states["reviewing"].deadline
    assert spec is not None and spec.after == "10 working days"
    assert spec.escalate[0].fire == "expire"
    assert d.model.clocks["handling"].pauses_in == ["amending"]
    assert [p for p in d.warnings if p.severity == "error"] == []


def test_invalid_duration_text_is_reported_at_the_value() -> None:
    """`after: 10 wrking days` is refused at the duration's own line:col."""
    text = _edit("after: 10 working days", "after: 10 wrking days")
    prob = _expect(text, _at(text, "10 wrking days"))
    assert "wrking" in prob.message


def test_invalid_reminder_and_escalation_durations_are_reported() -> None:
    """A bad duration in `remind` and in an escalation step's `after` is each refused in place."""
    text = _edit("remind: [2 working days]", "remind: [2 fortnights]")
    text = _edit("- after: 1 working day", "- after: soon", text)
    errors = _errors(text)
    where = {(p.line, p.column) for p in errors}
    assert _at(text, "2 fortnights") in where
    assert _at(text, "soon") in where


def test_at_combined_with_after_is_refused() -> None:
    """A deadline with both `at` and `after` is refused at the `at` value."""
    text = _edit(
        "      after: 10 working days\n", "      after: 10 working days\n      at: data.due_on\n"
    )
    _expect(text, _at(text, "data.due_on"), "'at' gives the due time itself")


def test_at_combined_with_from_is_refused() -> None:
    """A deadline with both `at` and `from` is refused at the `at` value."""
    text = _edit(
        "      after: 10 working days\n",
        "      from: now\n      at: data.due_on\n",
    )
    _expect(text, _at(text, "data.due_on"), "'at' gives the due time itself")


def test_clock_with_at_is_refused() -> None:
    """A clock counts a period: `at` on a clock is refused at its value."""
    text = _edit("    after: 20 working days\n", "    at: data.due_on\n")
    _expect(text, _at(text, "data.due_on"), "a clock counts a period")


def test_deadline_without_after_or_at_is_refused_at_its_key() -> None:
    """A deadline giving neither `after` nor `at` is refused at the `deadline` key."""
    text = _edit("      after: 10 working days\n", "")
    _expect(text, _at(text, "deadline:"), "needs 'after' (a period) or 'at'")


def test_from_without_after_is_refused() -> None:
    """`from` alone (no period) is refused at the `from` value."""
    text = _edit("      after: 10 working days\n", "      from: data.due_on\n")
    _expect(text, _at(text, "data.due_on"), "'from' needs 'after'")


def test_from_with_unknown_field_is_refused_in_the_expression() -> None:
    """`from: data.due_date` names an undeclared field: refused inside the expression."""
    text = _edit(
        "      after: 10 working days\n", "      from: data.due_date\n      after: 1 year\n"
    )
    _expect(text, _at(text, "due_date"), "unknown field 'due_date'")


def test_escalation_firing_an_unknown_trigger_is_refused() -> None:
    """`fire: expyre` (no such trigger) is refused at the value, suggesting `expire`."""
    text = _edit("fire: expire", "fire: expyre")
    _expect(text, _at(text, "expyre"), "unknown trigger 'expyre'", "did you mean 'expire'")


def test_escalation_firing_a_trigger_without_role_system_is_refused() -> None:
    """`fire: finish` (a trigger people fire, not role system) is refused at the value."""
    text = _edit("fire: expire", "fire: finish")
    _expect(text, _at(text, "finish", after="fire:"), "lists role 'system'")


def test_escalation_firing_a_trigger_that_does_not_leave_the_state_is_refused() -> None:
    """A system trigger that does not leave the deadline's state is refused at `fire`."""
    text = _edit(
        "  - trigger: expire\n    from: reviewing\n",
        "  - trigger: expire\n    from: amending\n",
    )
    _expect(text, _at(text, "expire", after="fire:"), "leaves state 'reviewing'")


def test_clock_escalation_must_leave_every_running_state() -> None:
    """A clock's escalation `fire` must leave every state the clock runs in."""
    text = _edit(
        "    pauses_in: [amending]\n",
        "    pauses_in: [amending]\n    escalate:\n      - fire: expire\n",
    )
    text = _edit("    runs_in: [reviewing]\n", "    runs_in: [reviewing, draft]\n", text)
    _expect(text, _at(text, "expire", after="clocks:"), "leaves state 'draft'")


def test_clock_running_in_an_unknown_state_is_refused() -> None:
    """`runs_in: [reviewng]` is refused at the list item, suggesting `reviewing`."""
    text = _edit("runs_in: [reviewing]", "runs_in: [reviewng]")
    _expect(text, _at(text, "reviewng"), "unknown state 'reviewng'", "did you mean 'reviewing'")


def test_clock_running_in_a_final_state_is_refused() -> None:
    """`runs_in: [reviewing, done]` (done is final) is refused at the `done` item."""
    text = _edit("runs_in: [reviewing]", "runs_in: [reviewing, done]")
    _expect(text, _at(text, "done]"), "final state 'done'")


def test_clock_pausing_in_a_final_state_is_refused() -> None:
    """`pauses_in: [expired]` (final) is refused at the item."""
    text = _edit("pauses_in: [amending]", "pauses_in: [expired]")
    _expect(text, _at(text, "expired]"), "final state 'expired'")


def test_state_in_both_runs_in_and_pauses_in_is_refused() -> None:
    """A state listed in both `runs_in` and `pauses_in` is refused at its second listing."""
    text = _edit("pauses_in: [amending]", "pauses_in: [amending, reviewing]")
    _expect(text, _at(text, "reviewing]", after="pauses_in"), "both runs_in and pauses_in")


def test_clock_starting_on_an_unknown_trigger_is_refused() -> None:
    """`starts_on: [submitt]` is refused at the item, suggesting `submit`."""
    text = _edit(
        "    pauses_in: [amending]\n", "    pauses_in: [amending]\n    starts_on: [submitt]\n"
    )
    _expect(text, _at(text, "submitt"), "unknown trigger 'submitt'", "did you mean 'submit'")


def test_unknown_notify_recipient_is_refused() -> None:
    """`notify: [heda]` on a deadline is refused at the recipient, suggesting `head`."""
    text = _edit("      notify: [head]\n      escalate:", "      notify: [heda]\n      escalate:")
    _expect(text, _at(text, "heda"), "unknown recipient 'heda'", "did you mean 'head'")


def test_unknown_recipient_in_an_escalation_notify_item_is_refused() -> None:
    """An escalation `notify: [{to: [...]}]` item with an unknown role is refused at it."""
    text = _edit("          notify: [head]\n", "          notify: [{to: [clerk, boss]}]\n")
    _expect(text, _at(text, "boss"), "unknown recipient 'boss'")


def test_addresses_and_builtin_recipients_are_accepted() -> None:
    """Recipients 'author', 'actor' and literal addresses (with @ or :) are valid."""
    text = _edit(
        "      notify: [head]\n      escalate:",
        "      notify: [author, actor, boss@example.vn, 'zalo:123']\n      escalate:",
    )
    parse_definition(text, "wf.yaml")


def test_deadline_on_a_final_state_is_refused_at_its_key() -> None:
    """A final state cannot have a deadline: refused at the `deadline` key."""
    text = _edit(
        "  done: {final: true}\n", "  done:\n    final: true\n    deadline:\n      after: 1 day\n"
    )
    _expect(
        text, _at(text, "deadline:", after="  done:"), "final state 'done' cannot have a deadline"
    )


def test_unknown_key_in_deadline_is_refused() -> None:
    """A misspelt deadline key (`remnd`) is refused structurally at the key."""
    text = _edit("remind: [2 working days]", "remnd: [2 working days]")
    errors = _errors(text)
    assert _at(text, "remnd") in {(p.line, p.column) for p in errors}


def test_every_error_is_reported_at_once_in_file_order() -> None:
    """Several deadline mistakes in one file are all reported, sorted by position."""
    text = _edit("after: 10 working days", "after: 10 wrking days")
    text = _edit("fire: expire", "fire: expyre", text)
    text = _edit("runs_in: [reviewing]", "runs_in: [reviewng]", text)
    errors = _errors(text)
    where = [(p.line, p.column) for p in errors]
    assert where == sorted(where)
    for needle in ("10 wrking days", "expyre", "reviewng"):
        assert _at(text, needle) in where


def test_json_schema_describes_deadlines_clocks_and_escalations() -> None:
    """The published JSON Schema has deadline (on states), clocks and escalate with their keys."""
    schema = workflow_json_schema()
    json.dumps(schema)  # serializable for editors
    defs = schema["$defs"]
    assert "clocks" in schema["properties"]
    assert "deadline" in defs["StateSpec"]["properties"]
    deadline = defs["DeadlineSpec"]["properties"]
    for key in ("after", "from", "at", "remind", "notify", "escalate", "label"):
        assert key in deadline, key
    assert "from_" not in deadline
    clock = defs["ClockSpec"]["properties"]
    for key in ("runs_in", "pauses_in", "starts_on", "after", "escalate"):
        assert key in clock, key
    assert "runs_in" in defs["ClockSpec"].get("required", [])
    step = defs["EscalationStep"]["properties"]
    for key in ("after", "notify", "fire", "set", "label"):
        assert key in step, key
    assert defs["DeadlineSpec"].get("additionalProperties") is False
    assert "NotifySpec" in defs and "to" in defs["NotifySpec"]["properties"]
