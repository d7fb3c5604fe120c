"""Who holds which role in which unit, and how units nest and replace one another.

Units and their hierarchy are data, never code: on 2025-07-01 the district level was abolished
and units merged, so each :class:`Unit` carries its validity dates and, once it ends, the
``successor`` that took over its records. Historical instances keep the unit they had;
:meth:`Directory.current` says which unit answers for that unit today, and coverage follows the
successor mappings so that the officers of a merged commune see the old district's records.

A host that already keeps people and units plugs in its own object with the
:class:`Directory` methods; :class:`YamlDirectory` is the default, read from a YAML file
(``config/data/directory.yaml`` ships as a demo).

    SangkienError
    └── DirectoryError     a directory file is invalid (carries every Problem found)
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

from sangkien._yaml import Located, load_yaml
from sangkien.errors import DefinitionError, Problem, SangkienError

__all__ = [
    "Directory",
    "DirectoryError",
    "Person",
    "Unit",
    "YamlDirectory",
    "load_directory",
    "shipped_directory_file",
]

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_TOP_KEYS = ("units", "people")
_UNIT_KEYS = ("name", "parent", "level", "valid_from", "valid_to", "successor")
_PERSON_KEYS = ("name", "contacts", "roles")


class DirectoryError(SangkienError):
    """A directory file is invalid; ``problems`` lists every error found, with positions."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        first = str(self.problems[0]) if self.problems else "invalid directory"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(first + more)


@dataclass(frozen=True, slots=True)
class Person:
    """Someone who can be notified: ``contacts`` maps a channel to an address."""

    id: str
    name: str
    contacts: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class Unit:
    """An administrative unit, valid from/to the given days (inclusive; None: open-ended).

    ``successor`` is the unit that took over this one's records once it ended (a merger or
    the abolition of the district level).
    """

    id: str
    name: str
    parent: str | None = None
    level: str | None = None
    valid_from: date | None = None
    valid_to: date | None = None
    successor: str | None = None

    def valid_on(self, day: date) -> bool:
        """Return whether the unit existed on *day*."""
        if self.valid_from is not None and day < self.valid_from:
            return False
        return self.valid_to is None or day <= self.valid_to


@runtime_checkable
class Directory(Protocol):
    """Units, people and their roles; also the engine's :class:`~sangkien.units.UnitTree`.

    A unit covers itself, its descendants and, through successor mappings, every unit it
    replaced together with their descendants. Unknown unit ids cover only themselves.
    """

    def unit(self, unit_id: str) -> Unit | None:
        """Return the unit, or None if unknown."""
        ...

    def parent(self, unit_id: str) -> str | None:
        """Return the id of the unit's parent, or None for a top unit or an unknown one."""
        ...

    def holders(self, role: str, unit_id: str) -> list[Person]:
        """Return the people holding *role* in exactly *unit_id* (not in sub-units)."""
        ...

    def person(self, person_id: str) -> Person | None:
        """Return the person, or None if unknown."""
        ...

    def current(self, unit_id: str, on: date) -> str:
        """Return the unit answering for *unit_id* on *on*, following successors."""
        ...

    def covers(self, actor_unit: str, unit: str) -> bool:
        """Return whether officers of *actor_unit* act on instances of *unit*."""
        ...

    def subtree(self, unit: str) -> frozenset[str]:
        """Return every unit *unit* covers, itself included."""
        ...


class YamlDirectory:
    """A :class:`Directory` read from YAML; immutable once built and safe to share."""

    def __init__(
        self,
        units: Iterable[Unit],
        people: Iterable[Person],
        roles: Iterable[tuple[str, str, str]] = (),
        *,
        file: str = "<data>",
    ) -> None:
        """Build from objects; *roles* holds ``(person_id, role, unit_id)`` triples.

        The objects are checked like a file's contents; :class:`DirectoryError` reports the
        problems (positioned at *file*, line 1).
        """
        self.file = file
        self._units: dict[str, Unit] = {}
        self._people: dict[str, Person] = {}
        problems: list[Problem] = []
        for u in units:
            if u.id in self._units:
                problems.append(Problem(file, 1, 1, f"unit {u.id!r} is listed twice"))
            self._units[u.id] = u
        for p in people:
            if p.id in self._people:
                problems.append(Problem(file, 1, 1, f"person {p.id!r} is listed twice"))
            self._people[p.id] = p
        grants = list(roles)
        for person_id, role, unit_id in grants:
            if person_id not in self._people:
                problems.append(
                    Problem(file, 1, 1, f"role {role!r} is given to unknown person {person_id!r}")
                )
            if unit_id not in self._units:
                problems.append(
                    Problem(
                        file,
                        1,
                        1,
                        f"{person_id}: role {role!r} is held in unknown unit {unit_id!r}",
                    )
                )
        problems.extend(_check_links(self._units, lambda _uid, _key: (file, 1, 1)))
        if problems:
            raise DirectoryError(problems)
        self._finish(grants)

    def _finish(self, grants: Iterable[tuple[str, str, str]]) -> None:
        holders: dict[tuple[str, str], list[str]] = {}
        for person_id, role, unit_id in grants:
            ids = holders.setdefault((role, unit_id), [])
            if person_id not in ids:
                ids.append(person_id)
        self._holders = {k: tuple(v) for k, v in holders.items()}
        children: dict[str, set[str]] = {}
        for u in self._units.values():
            if u.parent is not None:
                children.setdefault(u.parent, set()).add(u.id)
            if u.successor is not None:
                children.setdefault(u.successor, set()).add(u.id)
        # "below" = children plus replaced units: everything a unit's subtree reaches in one step
        self._below = {k: frozenset(v) for k, v in children.items()}
        self._subtrees: dict[str, frozenset[str]] = {}

    # -- construction from YAML

    @classmethod
    def from_file(cls, path: str | Path) -> YamlDirectory:
        """Read and check a directory file; raise :class:`DirectoryError` if it is invalid."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except OSError as exc:
            raise DirectoryError(
                [Problem(str(path), 1, 1, f"cannot read directory file: {exc.strerror}")]
            ) from None
        try:
            located = load_yaml(raw, str(path))
        except DefinitionError as exc:
            raise DirectoryError(exc.problems) from None
        return cls._from_located(located)

    @classmethod
    def from_data(cls, data: Mapping[str, Any], file: str = "<data>") -> YamlDirectory:
        """Build from already-parsed data shaped like the file (positions are line 1)."""
        return cls._from_located(Located(data=data, file=file))

    @classmethod
    def _from_located(cls, doc: Located) -> YamlDirectory:
        parsed = _Parser(doc)
        units, people, grants = parsed.parse()
        if not parsed.problems:
            parsed.problems.extend(
                _check_links(units, lambda uid, key: _where(doc, ("units", uid, key)))
            )
        if parsed.problems:
            raise DirectoryError(sorted(parsed.problems, key=lambda p: (p.line, p.column)))
        self = cls.__new__(cls)
        self.file = doc.file
        self._units = units
        self._people = people
        self._finish(grants)
        return self

    # -- the Directory protocol

    def unit(self, unit_id: str) -> Unit | None:
        """Return the unit, or None if unknown."""
        return self._units.get(unit_id)

    def parent(self, unit_id: str) -> str | None:
        """Return the id of the unit's parent, or None for a top unit or an unknown one."""
        u = self._units.get(unit_id)
        return u.parent if u else None

    def holders(self, role: str, unit_id: str) -> list[Person]:
        """Return the people holding *role* in exactly *unit_id*, in file order."""
        return [self._people[pid] for pid in self._holders.get((role, unit_id), ())]

    def person(self, person_id: str) -> Person | None:
        """Return the person, or None if unknown."""
        return self._people.get(person_id)

    def current(self, unit_id: str, on: date) -> str:
        """Return the unit answering for *unit_id* on *on*, following successors.

        A unit valid on that day (or one with no successor, or an unknown id) answers for
        itself; successor chains were checked for cycles when the directory was loaded.
        """
        if isinstance(on, datetime):
            raise TypeError("current() takes a date; convert a datetime with Calendar.local_date")
        cur = unit_id
        while True:
            u = self._units.get(cur)
            if u is None or u.successor is None or u.valid_on(on):
                return cur
            if u.valid_to is not None and on > u.valid_to:
                cur = u.successor
            else:
                return cur  # before the unit existed: nothing replaced it yet

    def covers(self, actor_unit: str, unit: str) -> bool:
        """Return whether officers of *actor_unit* act on instances of *unit*."""
        return actor_unit == unit or unit in self.subtree(actor_unit)

    def subtree(self, unit: str) -> frozenset[str]:
        """Return every unit *unit* covers: itself, descendants and replaced units."""
        cached = self._subtrees.get(unit)
        if cached is not None:
            return cached
        out = {unit}
        todo = [unit]
        while todo:
            for below in self._below.get(todo.pop(), ()):
                if below not in out:
                    out.add(below)
                    todo.append(below)
        result = frozenset(out)
        self._subtrees[unit] = result
        return result

    # -- extras for hosts and tools

    def units(self) -> list[Unit]:
        """Return every unit, in file order."""
        return list(self._units.values())

    def people(self) -> list[Person]:
        """Return every person, in file order."""
        return list(self._people.values())

    def roles_of(self, person_id: str) -> list[tuple[str, str]]:
        """Return the ``(role, unit_id)`` pairs *person_id* holds, in file order."""
        return [k for k, ids in self._holders.items() if person_id in ids]

    def __repr__(self) -> str:
        return (
            f"YamlDirectory(file={self.file!r}, units={len(self._units)}, "
            f"people={len(self._people)})"
        )


def shipped_directory_file() -> Path:
    """Path of the demo directory that ships with sangkien."""
    return Path(str(resources.files("sangkien.config").joinpath("data", "directory.yaml")))


def load_directory(path: str | Path | None = None) -> YamlDirectory:
    """Load a directory file; None loads the shipped demo directory."""
    return YamlDirectory.from_file(shipped_directory_file() if path is None else path)


# --------------------------------------------------------------------------- parsing


def _where(doc: Located, path: tuple[str | int, ...], *, key: bool = False) -> tuple[str, int, int]:
    line, col = doc.position(path, key=key)
    return doc.file, line, col


class _Parser:
    def __init__(self, doc: Located) -> None:
        self.doc = doc
        self.problems: list[Problem] = []

    def fail(self, path: tuple[str | int, ...], message: str, *, key: bool = False) -> None:
        self.problems.append(self.doc.problem(path, message, key=key))

    def parse(self) -> tuple[dict[str, Unit], dict[str, Person], list[tuple[str, str, str]]]:
        data = self.doc.data
        units: dict[str, Unit] = {}
        people: dict[str, Person] = {}
        grants: list[tuple[str, str, str]] = []
        if not isinstance(data, Mapping):
            self.fail((), "expected a mapping with 'units' and 'people' at the top level")
            return units, people, grants
        self._unknown_keys(data, (), _TOP_KEYS)
        raw_units = data.get("units")
        if raw_units is None:
            self.fail((), "missing required key 'units'")
        elif not isinstance(raw_units, Mapping):
            self.fail(("units",), "units: expected a mapping of unit id to unit")
        else:
            for uid, spec in raw_units.items():
                unit = self._unit(str(uid), spec)
                if unit is not None:
                    units[unit.id] = unit
        raw_people = data.get("people", {})
        if raw_people is None:
            raw_people = {}
        if not isinstance(raw_people, Mapping):
            self.fail(("people",), "people: expected a mapping of person id to person")
            return units, people, grants
        known_units = set(raw_units) if isinstance(raw_units, Mapping) else set()
        for pid, spec in raw_people.items():
            person = self._person(str(pid), spec, known_units, grants)
            if person is not None:
                people[person.id] = person
        return units, people, grants

    def _unknown_keys(
        self, mapping: Mapping[str, Any], path: tuple[str | int, ...], allowed: Sequence[str]
    ) -> None:
        for k in mapping:
            if k not in allowed:
                hint = difflib.get_close_matches(str(k), allowed, n=1)
                msg = f"unknown key {k!r}"
                if hint:
                    msg += f"; did you mean {hint[0]!r}?"
                self.fail((*path, k), msg + f" (allowed: {', '.join(allowed)})", key=True)

    def _text(self, path: tuple[str | int, ...], value: Any, what: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(path, f"{what}: expected a non-empty string, got {value!r}")
            return None
        return value.strip()

    def _date(self, path: tuple[str | int, ...], value: Any, what: str) -> date | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            self.fail(path, f"{what}: expected a date (YYYY-MM-DD), got a date and time")
            return None
        if isinstance(value, date):
            return value
        try:
            return date.fromisoformat(str(value))
        except ValueError:
            self.fail(path, f"{what}: expected a date (YYYY-MM-DD), got {value!r}")
            return None

    def _unit(self, uid: str, spec: Any) -> Unit | None:
        path: tuple[str | int, ...] = ("units", uid)
        if not _ID.match(uid):
            self.fail(
                path,
                f"unit id {uid!r} is not valid (letters, digits, '.', '-', '_', ':' and '@')",
                key=True,
            )
            return None
        if not isinstance(spec, Mapping):
            self.fail(path, f"unit {uid!r}: expected a mapping with at least 'name'")
            return None
        self._unknown_keys(spec, path, _UNIT_KEYS)
        name = self._text((*path, "name"), spec.get("name"), f"unit {uid!r}: name")
        if "name" not in spec:
            self.fail(path, f"unit {uid!r}: missing required key 'name'")
        parent = self._text((*path, "parent"), spec.get("parent"), f"unit {uid!r}: parent")
        level = self._text((*path, "level"), spec.get("level"), f"unit {uid!r}: level")
        successor = self._text(
            (*path, "successor"), spec.get("successor"), f"unit {uid!r}: successor"
        )
        valid_from = self._date(
            (*path, "valid_from"), spec.get("valid_from"), f"unit {uid!r}: valid_from"
        )
        valid_to = self._date((*path, "valid_to"), spec.get("valid_to"), f"unit {uid!r}: valid_to")
        if name is None:
            return None
        return Unit(uid, name, parent, level, valid_from, valid_to, successor)

    def _person(
        self,
        pid: str,
        spec: Any,
        known_units: set[str],
        grants: list[tuple[str, str, str]],
    ) -> Person | None:
        path: tuple[str | int, ...] = ("people", pid)
        if not _ID.match(pid):
            self.fail(
                path,
                f"person id {pid!r} is not valid (letters, digits, '.', '-', '_', ':' and '@')",
                key=True,
            )
            return None
        if not isinstance(spec, Mapping):
            self.fail(path, f"person {pid!r}: expected a mapping with at least 'name'")
            return None
        self._unknown_keys(spec, path, _PERSON_KEYS)
        if "name" not in spec:
            self.fail(path, f"person {pid!r}: missing required key 'name'")
        name = self._text((*path, "name"), spec.get("name"), f"person {pid!r}: name")
        contacts = self._contacts(pid, spec.get("contacts"))
        roles = spec.get("roles")
        if roles is not None:
            rpath = (*path, "roles")
            if not isinstance(roles, Mapping):
                self.fail(rpath, f"person {pid!r}: roles: expected a mapping of role to unit(s)")
            else:
                for role, where in roles.items():
                    role_path = (*rpath, role)
                    if not _NAME.match(str(role)):
                        self.fail(
                            role_path,
                            f"person {pid!r}: role {role!r} is not a valid name "
                            "(lower_snake_case: letters, digits, _)",
                            key=True,
                        )
                        continue
                    unit_ids = [where] if isinstance(where, str) else where
                    if not isinstance(unit_ids, list) or not unit_ids:
                        self.fail(
                            role_path,
                            f"person {pid!r}: role {role!r}: expected a unit id or a "
                            "non-empty list of unit ids",
                        )
                        continue
                    for i, unit_id in enumerate(unit_ids):
                        upath = role_path if isinstance(where, str) else (*role_path, i)
                        if not isinstance(unit_id, str):
                            self.fail(upath, f"person {pid!r}: role {role!r}: expected a unit id")
                        elif unit_id not in known_units:
                            hint = difflib.get_close_matches(unit_id, sorted(known_units), n=1)
                            self.fail(
                                upath,
                                f"person {pid!r}: role {role!r} is held in unknown unit "
                                f"{unit_id!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""),
                            )
                        else:
                            grants.append((pid, str(role), unit_id))
        if name is None:
            return None
        return Person(pid, name, MappingProxyType(contacts))

    def _contacts(self, pid: str, raw: Any) -> dict[str, str]:
        path: tuple[str | int, ...] = ("people", pid, "contacts")
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            self.fail(path, f"person {pid!r}: contacts: expected a mapping of channel to address")
            return {}
        out: dict[str, str] = {}
        for channel, address in raw.items():
            cpath = (*path, channel)
            if not _NAME.match(str(channel)):
                self.fail(
                    cpath,
                    f"person {pid!r}: channel {channel!r} is not a valid name "
                    "(lower_snake_case, e.g. email, webhook)",
                    key=True,
                )
                continue
            if not isinstance(address, str) or not address.strip():
                self.fail(cpath, f"person {pid!r}: {channel}: expected an address (a string)")
                continue
            address = address.strip()
            if channel == "email" and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", address):
                self.fail(cpath, f"person {pid!r}: email {address!r} is not an email address")
                continue
            if channel == "webhook" and not address.startswith(("https://", "http://")):
                self.fail(cpath, f"person {pid!r}: webhook {address!r} must be an http(s):// URL")
                continue
            out[str(channel)] = address
        return out


def _check_links(units: Mapping[str, Unit], where: Any) -> list[Problem]:
    """Check parents and successors exist, dates are ordered and nothing loops."""
    problems: list[Problem] = []

    def fail(uid: str, key: str, message: str) -> None:
        file, line, col = where(uid, key)
        problems.append(Problem(file, line, col, message))

    known = sorted(units)
    for u in units.values():
        for key, target in (("parent", u.parent), ("successor", u.successor)):
            if target is None:
                continue
            if target == u.id:
                fail(u.id, key, f"unit {u.id!r}: {key} cannot be the unit itself")
            elif target not in units:
                hint = difflib.get_close_matches(target, known, n=1)
                fail(
                    u.id,
                    key,
                    f"unit {u.id!r}: {key} {target!r} is not a known unit"
                    + (f"; did you mean {hint[0]!r}?" if hint else ""),
                )
        if u.valid_from and u.valid_to and u.valid_from > u.valid_to:
            fail(
                u.id,
                "valid_to",
                f"unit {u.id!r}: valid_to {u.valid_to} is before valid_from {u.valid_from}",
            )
        if u.successor is not None and u.valid_to is None:
            fail(
                u.id,
                "successor",
                f"unit {u.id!r}: a successor needs 'valid_to', the last day the unit existed",
            )
    if problems:
        return problems
    for keys in (("parent",), ("successor",), ("parent", "successor")):
        loop = _find_cycle(units, keys)
        if loop is not None:
            first, key = loop[0]
            path = " ".join(f"{uid} -{k}->" for uid, k in loop) + f" {first}"
            fail(first, key, f"units form a cycle: {path}")
            break
    return problems


def _find_cycle(units: Mapping[str, Unit], keys: tuple[str, ...]) -> list[tuple[str, str]] | None:
    """Return one cycle along *keys* edges as ``[(unit, key), ...]``, or None."""
    done: set[str] = set()
    for start in units:
        if start in done:
            continue
        # iterative DFS; `stack` holds (unit, key taken, remaining edges)
        on_path: dict[str, int] = {}
        path: list[tuple[str, str]] = []
        stack: list[tuple[str, list[tuple[str, str]]]] = []

        def edges(uid: str) -> list[tuple[str, str]]:
            u = units[uid]
            return [(k, t) for k in keys if (t := getattr(u, k)) is not None]

        on_path[start] = 0
        stack.append((start, edges(start)))
        while stack:
            uid, todo = stack[-1]
            if not todo:
                stack.pop()
                on_path.pop(uid, None)
                done.add(uid)
                if path:
                    path.pop()
                continue
            key, target = todo.pop()
            if target in on_path:
                cycle = [*path[on_path[target] :], (uid, key)]
                return cycle
            if target in done:
                continue
            path.append((uid, key))
            on_path[target] = len(path)
            stack.append((target, edges(target)))
    return None
