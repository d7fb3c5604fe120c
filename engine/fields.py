"""Instance data checked against a workflow's declared fields."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any

__all__ = ["check_data", "check_value"]

_ITEM_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
}


def check_value(name: str, spec: Any, value: Any) -> str | None:
    """Return why *value* is not valid for field *name*, or None (null is always accepted)."""
    if value is None:
        return None
    t = spec.type
    if t in ("string", "text", "enum"):
        if not isinstance(value, str):
            return f"field {name!r} must be a string, got {_kind(value)}"
        if t == "enum" and value not in (spec.values or []):
            return f"field {name!r} must be one of {', '.join(spec.values or [])}; got {value!r}"
        if spec.min_length is not None and len(value) < spec.min_length:
            return f"field {name!r} must have at least {spec.min_length} characters"
        if spec.max_length is not None and len(value) > spec.max_length:
            return f"field {name!r} must have at most {spec.max_length} characters"
        if spec.pattern is not None and not re.fullmatch(spec.pattern, value):
            return f"field {name!r} does not match pattern {spec.pattern!r}"
        return None
    if t in ("integer", "number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"field {name!r} must be a number, got {_kind(value)}"
        if t == "integer" and not (isinstance(value, int) or float(value).is_integer()):
            return f"field {name!r} must be a whole number, got {value!r}"
        if isinstance(value, float) and not math.isfinite(value):
            return f"field {name!r} must be a finite number"
        if spec.min is not None and value < spec.min:
            return f"field {name!r} must be at least {_num(spec.min)}, got {value!r}"
        if spec.max is not None and value > spec.max:
            return f"field {name!r} must be at most {_num(spec.max)}, got {value!r}"
        return None
    if t == "boolean":
        return None if isinstance(value, bool) else f"field {name!r} must be true or false"
    if t == "date":
        if isinstance(value, date) and not isinstance(value, datetime):
            return None
        try:
            date.fromisoformat(str(value))
        except ValueError:
            return f"field {name!r} must be a date YYYY-MM-DD, got {value!r}"
        return None
    if t == "datetime":
        if isinstance(value, datetime):
            return None if value.tzinfo else f"field {name!r} needs a time zone"
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            return f"field {name!r} must be an ISO 8601 date-time, got {value!r}"
        return None if parsed.tzinfo else f"field {name!r} needs a time zone (e.g. +07:00)"
    if t == "list":
        if not isinstance(value, list):
            return f"field {name!r} must be a list, got {_kind(value)}"
        if spec.min_length is not None and len(value) < spec.min_length:
            return f"field {name!r} must have at least {spec.min_length} items"
        if spec.max_length is not None and len(value) > spec.max_length:
            return f"field {name!r} must have at most {spec.max_length} items"
        if spec.items:
            ok = _ITEM_TYPES[spec.items]
            for i, item in enumerate(value):
                if (isinstance(item, bool) and spec.items != "boolean") or not isinstance(item, ok):
                    return f"field {name!r}: item {i + 1} must be {spec.items}, got {_kind(item)}"
        return None
    if t == "object":
        return None if isinstance(value, dict) else f"field {name!r} must be a mapping"
    return f"field {name!r} has unknown type {t!r}"  # pragma: no cover - the model forbids it


def normalize(spec: Any, value: Any) -> Any:
    """Return *value* in its stored JSON form (dates as ISO text, integers as int)."""
    if value is None:
        return None
    if spec.type == "date" and isinstance(value, date):
        return value.isoformat()
    if spec.type == "date":
        return date.fromisoformat(str(value)).isoformat()
    if spec.type == "datetime":
        dt = (
            value
            if isinstance(value, datetime)
            else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        )
        return dt.isoformat()
    if spec.type == "integer" and isinstance(value, float):
        return int(value)
    return value


def check_data(
    fields: Mapping[str, Any], incoming: Mapping[str, Any], allowed: Any = None
) -> tuple[dict[str, Any], list[str]]:
    """Validate *incoming* against *fields*; return (normalized data, errors)."""
    out: dict[str, Any] = {}
    errors: list[str] = []
    if not isinstance(incoming, Mapping):
        return {}, ["data must be a mapping of field names to values"]
    for name, value in incoming.items():
        spec = fields.get(name)
        if spec is None:
            known = ", ".join(fields) or "none"
            errors.append(f"unknown field {name!r} (declared fields: {known})")
            continue
        if allowed is not None and name not in allowed:
            errors.append(
                f"field {name!r} cannot be given with this action (accepted: "
                f"{', '.join(allowed) or 'none'})"
            )
            continue
        err = check_value(name, spec, value)
        if err:
            errors.append(err)
        else:
            out[name] = normalize(spec, value)
    return out, errors


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)
