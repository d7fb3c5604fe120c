"""The event hash is SHA-256 over one canonical JSON text, however it is put together."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sangkien.history import event_hash


def _reference(**e: Any) -> str:
    """The definition: the canonical JSON of the event's fields in this order."""
    body = json.dumps(
        [
            e["prev_hash"],
            e["instance_id"],
            e["seq"],
            e["kind"],
            e["trigger"],
            e["from_state"],
            e["to_state"],
            e["actor_id"],
            sorted(e["actor_roles"]),
            e["actor_unit"],
            e["at"].isoformat(timespec="microseconds"),
            e["data_delta"],
            e["comment"],
            e["detail"],
        ],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


text = st.text()  # any Unicode: quotes, backslashes, control characters, Vietnamese
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
events = st.fixed_dictionaries(
    {
        "prev_hash": text,
        "instance_id": text,
        "seq": st.integers(min_value=0, max_value=2**63),
        "kind": text,
        "trigger": st.none() | text,
        "from_state": st.none() | text,
        "to_state": text,
        "actor_id": text,
        "actor_roles": st.lists(text, max_size=3) | st.tuples(text, text),
        "actor_unit": st.none() | text,
        "at": st.datetimes(timezones=st.just(UTC)),
        "data_delta": st.dictionaries(text, json_values, max_size=4),
        "comment": st.none() | text,
        "detail": st.none() | st.dictionaries(text, json_values, max_size=3),
    }
)


@settings(max_examples=400, deadline=None)
@given(events)
def test_the_hash_is_the_canonical_json_of_the_event(e: dict[str, Any]) -> None:
    assert event_hash(**e) == _reference(**e)


def test_values_of_other_types_hash_as_the_encoder_writes_them() -> None:
    at = datetime(2026, 3, 4, 5, 6, 7, 890, tzinfo=timezone(timedelta(hours=7)))
    base: dict[str, Any] = {
        "prev_hash": "0" * 64,
        "instance_id": "i-1",
        "seq": 3,
        "kind": "transition",
        "trigger": "nộp",
        "from_state": 'dự "thảo"',
        "to_state": "đã\\nộp\n",
        "actor_id": "ánh",
        "actor_roles": ["b", "a"],
        "actor_unit": None,
        "at": at,
        "data_delta": {"z": 1, "a": [datetime(2026, 1, 1, tzinfo=UTC)]},
        "comment": None,
        "detail": None,
    }
    variants: list[Mapping[str, Any]] = [
        base,
        {**base, "seq": True},  # a bool is written true, not 1
        {**base, "actor_roles": {"b", "a"}},  # a set: sorted all the same
        {**base, "data_delta": MappingProxyType({"k": "v"})},  # not a dict: written by str()
        {**base, "detail": {"x": {"y": None}}},
        {**base, "trigger": 7},
    ]
    for v in variants:
        assert event_hash(**v) == _reference(**v)
