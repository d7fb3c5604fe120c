"""The YAML directory: units with validity and successors, people, roles, contacts."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from sangkien.directory import (
    Directory,
    DirectoryError,
    Person,
    Unit,
    YamlDirectory,
    load_directory,
)
from sangkien.errors import SangkienError
from sangkien.units import UnitTree

DEMO_PEOPLE = {
    "le.thi.hoa": ["emulation_officer"],
    "pham.van.duc": ["committee_chair", "unit_head"],
    "tran.thi.mai": ["council_secretary"],
    "vo.minh.tuan": ["council_chair"],
    "nguyen.van.an": [],
    "dang.thi.binh": [],
    "huynh.van.cuong": [],
}


@pytest.fixture(scope="module")
def demo() -> YamlDirectory:
    return load_directory()


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "directory.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _error(tmp_path: Path, text: str) -> DirectoryError:
    with pytest.raises(DirectoryError) as info:
        YamlDirectory.from_file(_write(tmp_path, text))
    return info.value


# --------------------------------------------------------------------------- the protocol


def test_yaml_directory_satisfies_both_protocols(demo: YamlDirectory) -> None:
    """YamlDirectory is a Directory and can be handed to the engine as its UnitTree."""
    assert isinstance(demo, Directory)
    assert isinstance(demo, UnitTree)


def test_a_host_class_with_the_methods_is_a_directory() -> None:
    """Any object with the Directory methods satisfies the protocol (no inheritance needed)."""

    class HostDirectory:
        def unit(self, unit_id: str) -> Unit | None:
            return None

        def parent(self, unit_id: str) -> str | None:
            return None

        def holders(self, role: str, unit_id: str) -> list[Person]:
            return []

        def person(self, person_id: str) -> Person | None:
            return None

        def current(self, unit_id: str, on: date) -> str:
            return unit_id

        def covers(self, actor_unit: str, unit: str) -> bool:
            return actor_unit == unit

        def subtree(self, unit: str) -> frozenset[str]:
            return frozenset({unit})

    assert isinstance(HostDirectory(), Directory)


def test_directory_error_is_a_sangkien_error() -> None:
    """DirectoryError derives from the package's one exception root."""
    assert issubclass(DirectoryError, SangkienError)


# --------------------------------------------------------------------------- the demo file


def test_demo_file_holds_the_demo_people_in_the_new_commune(demo: YamlDirectory) -> None:
    """Every person of `sangkien demo` is in the directory with the roles the demo gives."""
    for person_id, roles in DEMO_PEOPLE.items():
        person = demo.person(person_id)
        assert person is not None, person_id
        assert person.contacts["email"].endswith("@example.gov.vn")
        for role in roles:
            assert person in demo.holders(role, "xa-nghia-hanh"), (person_id, role)


def test_demo_file_covers_every_role_of_the_shipped_workflows(demo: YamlDirectory) -> None:
    """Each role the shipped workflows grant by unit has a holder in xa-nghia-hanh."""
    for role in (
        "emulation_officer",
        "committee_chair",
        "unit_head",
        "council_secretary",
        "council_member",
        "council_chair",
    ):
        assert demo.holders(role, "xa-nghia-hanh"), role


def test_unit_fields_and_names_keep_vietnamese_text(demo: YamlDirectory) -> None:
    """Units carry level, validity and successor; names keep their diacritics."""
    old = demo.unit("huyen-nghia-hanh")
    assert old == Unit(
        "huyen-nghia-hanh",
        "Ủy ban nhân dân huyện Nghĩa Hành",
        parent="tinh-quang-ngai",
        level="district",
        valid_from=None,
        valid_to=date(2025, 6, 30),
        successor="xa-nghia-hanh",
    )
    new = demo.unit("xa-nghia-hanh")
    assert new is not None and new.valid_from == date(2025, 7, 1) and new.level == "commune"
    assert demo.unit("so-noi-vu") is not None
    assert demo.unit("nowhere") is None


# --------------------------------------------------------------------------- hierarchy


def test_province_covers_commune_and_not_the_reverse(demo: YamlDirectory) -> None:
    """The province covers a commune below it; a commune does not cover the province."""
    assert demo.covers("tinh-quang-ngai", "xa-nghia-hanh")
    assert demo.covers("tinh-quang-ngai", "so-noi-vu")
    assert not demo.covers("xa-nghia-hanh", "tinh-quang-ngai")
    assert not demo.covers("xa-nghia-hanh", "xa-dinh-cuong")


def test_a_unit_covers_itself_even_when_unknown(demo: YamlDirectory) -> None:
    """A unit covers itself; an unknown unit covers only itself."""
    assert demo.covers("xa-nghia-hanh", "xa-nghia-hanh")
    assert demo.covers("elsewhere", "elsewhere")
    assert not demo.covers("elsewhere", "xa-nghia-hanh")
    assert demo.subtree("elsewhere") == frozenset({"elsewhere"})


def test_successor_covers_its_predecessors_records(demo: YamlDirectory) -> None:
    """The merged commune covers the old district and the old units below that district."""
    assert demo.covers("xa-nghia-hanh", "huyen-nghia-hanh")
    assert demo.covers("xa-nghia-hanh", "thi-tran-cho-chua")
    assert demo.subtree("xa-nghia-hanh") == frozenset(
        {"xa-nghia-hanh", "huyen-nghia-hanh", "thi-tran-cho-chua"}
    )
    assert not demo.covers("xa-dinh-cuong", "huyen-nghia-hanh")


def test_successor_province_covers_the_merged_provinces_units(demo: YamlDirectory) -> None:
    """The enlarged province covers the province merged into it and all old records."""
    tree = demo.subtree("tinh-quang-ngai")
    assert {"tinh-kon-tum", "huyen-nghia-hanh", "thi-tran-cho-chua", "so-noi-vu"} <= tree
    assert tree == frozenset(u.id for u in demo.units())


def test_parent_of_units(demo: YamlDirectory) -> None:
    """parent() gives the unit above, None at the top and for unknown units."""
    assert demo.parent("xa-nghia-hanh") == "tinh-quang-ngai"
    assert demo.parent("thi-tran-cho-chua") == "huyen-nghia-hanh"
    assert demo.parent("tinh-quang-ngai") is None
    assert demo.parent("nowhere") is None


def test_current_maps_old_units_across_the_2025_reform(demo: YamlDirectory) -> None:
    """current() keeps the district until 2025-06-30 and names its successor from 2025-07-01."""
    assert demo.current("huyen-nghia-hanh", date(2025, 6, 30)) == "huyen-nghia-hanh"
    assert demo.current("huyen-nghia-hanh", date(2025, 7, 1)) == "xa-nghia-hanh"
    assert demo.current("thi-tran-cho-chua", date(2026, 1, 1)) == "xa-nghia-hanh"
    assert demo.current("tinh-kon-tum", date(2025, 7, 1)) == "tinh-quang-ngai"
    assert demo.current("xa-nghia-hanh", date(2026, 1, 1)) == "xa-nghia-hanh"
    assert demo.current("nowhere", date(2026, 1, 1)) == "nowhere"


def test_current_follows_a_chain_of_successors() -> None:
    """A unit replaced twice maps to the last successor valid on the day asked."""
    d = YamlDirectory.from_data(
        {
            "units": {
                "a": {"name": "A", "valid_to": "2020-12-31", "successor": "b"},
                "b": {
                    "name": "B",
                    "valid_from": "2021-01-01",
                    "valid_to": "2025-06-30",
                    "successor": "c",
                },
                "c": {"name": "C", "valid_from": "2025-07-01"},
            }
        }
    )
    assert d.current("a", date(2020, 12, 31)) == "a"
    assert d.current("a", date(2023, 5, 1)) == "b"
    assert d.current("a", date(2025, 7, 1)) == "c"
    assert d.covers("c", "a")


def test_current_refuses_a_datetime(demo: YamlDirectory) -> None:
    """current() takes a local date, so a datetime (UTC or local) is refused, not guessed."""
    from datetime import UTC, datetime

    with pytest.raises(TypeError):
        demo.current("huyen-nghia-hanh", datetime(2025, 6, 30, 20, tzinfo=UTC))


# --------------------------------------------------------------------------- people and roles


def test_holders_are_per_role_and_exact_unit(demo: YamlDirectory) -> None:
    """holders() lists people with that role in exactly that unit, in file order."""
    members = demo.holders("council_member", "xa-nghia-hanh")
    assert [p.id for p in members] == ["ngo.thi.lan", "bui.van.hung"]
    assert [p.id for p in demo.holders("unit_head", "xa-nghia-hanh")] == ["pham.van.duc"]
    assert demo.holders("council_member", "tinh-quang-ngai") == []
    assert demo.holders("unit_head", "xa-dinh-cuong") == []
    assert demo.holders("no_such_role", "xa-nghia-hanh") == []


def test_one_person_can_hold_a_role_in_several_units(demo: YamlDirectory) -> None:
    """A list of units grants the role in each of them."""
    thu = demo.person("doan.thi.thu")
    assert thu is not None
    assert thu in demo.holders("emulation_officer", "tinh-quang-ngai")
    assert thu in demo.holders("emulation_officer", "so-noi-vu")
    assert thu.contacts["webhook"].startswith("https://")
    assert demo.roles_of("doan.thi.thu") == [
        ("emulation_officer", "tinh-quang-ngai"),
        ("emulation_officer", "so-noi-vu"),
    ]


def test_person_lookup_and_names_with_diacritics(demo: YamlDirectory) -> None:
    """person() returns the person with their Vietnamese name intact, None if unknown."""
    p = demo.person("huynh.van.cuong")
    assert p is not None and p.name == "Huỳnh Văn Cường"
    assert demo.person("nobody") is None


def test_person_contacts_are_read_only(demo: YamlDirectory) -> None:
    """A Person's contacts cannot be changed through the directory."""
    p = demo.person("le.thi.hoa")
    assert p is not None
    with pytest.raises(TypeError):
        p.contacts["email"] = "x@example.gov.vn"  # type: ignore[index]


def test_programmatic_construction_checks_links() -> None:
    """Building from objects checks unknown parents and unknown units of roles too."""
    units = [Unit("p", "P"), Unit("c", "C", parent="p")]
    d = YamlDirectory(units, [Person("x", "X")], [("x", "boss", "c")])
    assert [p.id for p in d.holders("boss", "c")] == ["x"]
    with pytest.raises(DirectoryError, match="unknown unit 'q'"):
        YamlDirectory(units, [Person("x", "X")], [("x", "boss", "q")])
    with pytest.raises(DirectoryError, match="parent 'zz' is not a known unit"):
        YamlDirectory([Unit("c", "C", parent="zz")], [])


# --------------------------------------------------------------------------- malformed files


def test_unknown_parent_is_reported_with_its_position(tmp_path: Path) -> None:
    """An unknown parent names the file, line and column of the value and suggests a unit."""
    err = _error(
        tmp_path,
        "units:\n"
        "  tinh-quang-ngai:\n"
        "    name: Tỉnh Quảng Ngãi\n"
        "  xa-a:\n"
        "    name: Xã A\n"
        "    parent: tinh-quang-ngia\n",
    )
    (p,) = err.problems
    assert (p.line, p.column) == (6, 13)
    assert "parent 'tinh-quang-ngia' is not a known unit" in p.message
    assert "did you mean 'tinh-quang-ngai'" in p.message
    assert str(err).startswith(f"{tmp_path / 'directory.yaml'}:6:13: error:")


def test_unknown_successor_is_reported(tmp_path: Path) -> None:
    """An unknown successor is an error at the successor's value."""
    err = _error(
        tmp_path,
        "units:\n  huyen:\n    name: Huyện\n    valid_to: 2025-06-30\n    successor: xa-moi\n",
    )
    (p,) = err.problems
    assert (p.line, p.column) == (5, 16)
    assert "successor 'xa-moi' is not a known unit" in p.message


def test_role_in_unknown_unit_is_reported(tmp_path: Path) -> None:
    """A person's role held in a unit that is not listed is an error at that unit id."""
    err = _error(
        tmp_path,
        "units:\n"
        "  xa-a: {name: Xã A}\n"
        "people:\n"
        "  an:\n"
        "    name: An\n"
        "    roles:\n"
        "      unit_head: [xa-a, xa-b]\n",
    )
    (p,) = err.problems
    assert (p.line, p.column) == (7, 25)
    assert "role 'unit_head' is held in unknown unit 'xa-b'" in p.message


def test_duplicate_ids_are_reported(tmp_path: Path) -> None:
    """A unit or person id given twice is an error at the second one, naming the first line."""
    err = _error(
        tmp_path,
        "units:\n"
        "  xa-a: {name: Xã A}\n"
        "  xa-a: {name: Xã A lần hai}\n"
        "people:\n"
        "  an: {name: An}\n"
        "  an: {name: An}\n",
    )
    assert [(p.line, p.column) for p in err.problems] == [(3, 3), (6, 3)]
    assert all("duplicate key" in p.message for p in err.problems)
    assert "first defined at line 2" in err.problems[0].message


def test_parent_cycle_is_reported(tmp_path: Path) -> None:
    """Units that are each other's parents are refused, the cycle spelled out."""
    err = _error(
        tmp_path,
        "units:\n  a: {name: A, parent: b}\n  b: {name: B, parent: c}\n  c: {name: C, parent: a}\n",
    )
    (p,) = err.problems
    assert "cycle" in p.message
    assert "a -parent-> b -parent-> c -parent-> a" in p.message
    assert p.line == 2


def test_cycle_through_parent_and_successor_is_reported(tmp_path: Path) -> None:
    """A unit that is both below and the successor of another would cover itself: refused."""
    err = _error(
        tmp_path,
        "units:\n"
        "  old: {name: Old, valid_to: 2025-06-30, successor: new}\n"
        "  new: {name: New, parent: old}\n",
    )
    assert "cycle" in str(err)
    assert "-successor->" in str(err) and "-parent->" in str(err)


def test_successor_without_valid_to_and_bad_dates_are_reported(tmp_path: Path) -> None:
    """A successor needs valid_to; dates must parse and be in order."""
    err = _error(
        tmp_path,
        "units:\n"
        "  a: {name: A, successor: b}\n"
        "  b: {name: B, valid_from: 2025-07-01, valid_to: 2025-01-01}\n"
        "  c: {name: C, valid_from: 1 July 2025}\n",
    )
    messages = [p.message for p in err.problems]
    assert any("expected a date (YYYY-MM-DD)" in m for m in messages)
    assert err.problems[0].line == 4  # problems sorted by position; parse errors stop checks


def test_link_problems_after_clean_parse(tmp_path: Path) -> None:
    """With valid values, a successor without valid_to and reversed dates are both reported."""
    err = _error(
        tmp_path,
        "units:\n"
        "  a: {name: A, successor: b}\n"
        "  b: {name: B, valid_from: 2025-07-01, valid_to: 2025-01-01}\n",
    )
    text = str(err)
    assert "a successor needs 'valid_to'" in err.problems[0].message
    assert "(and 1 more)" in text
    assert "is before valid_from" in err.problems[1].message


def test_unknown_keys_suggest_the_right_one(tmp_path: Path) -> None:
    """A misspelt key is reported at the key with a suggestion and the allowed keys."""
    err = _error(tmp_path, "units:\n  a:\n    name: A\n    parnet: b\n")
    (p,) = err.problems
    assert (p.line, p.column) == (4, 5)
    assert "unknown key 'parnet'; did you mean 'parent'?" in p.message


def test_bad_contacts_and_missing_names_are_reported(tmp_path: Path) -> None:
    """Email and webhook addresses are checked; units and people need a name."""
    err = _error(
        tmp_path,
        "units:\n"
        "  a: {level: commune}\n"
        "people:\n"
        "  an:\n"
        "    contacts: {email: not-an-address, webhook: ftp://x}\n",
    )
    messages = " | ".join(p.message for p in err.problems)
    assert "unit 'a': missing required key 'name'" in messages
    assert "person 'an': missing required key 'name'" in messages
    assert "is not an email address" in messages
    assert "must be an http(s):// URL" in messages


def test_yaml_syntax_and_unsafe_tags_are_directory_errors(tmp_path: Path) -> None:
    """YAML syntax errors and python tags are refused as DirectoryError with a position."""
    err = _error(tmp_path, "units:\n  a: {name: A\n")
    assert err.problems[0].line >= 2 and "YAML syntax" in err.problems[0].message
    err = _error(tmp_path, "units: !!python/object:os.system {}\n")
    assert "not allowed" in err.problems[0].message


def test_missing_file_and_wrong_shapes(tmp_path: Path) -> None:
    """A missing file and a top level that is not a mapping are clear errors."""
    with pytest.raises(DirectoryError, match="cannot read directory file"):
        YamlDirectory.from_file(tmp_path / "missing.yaml")
    err = _error(tmp_path, "- a\n- b\n")
    assert "expected a mapping with 'units' and 'people'" in str(err)
    err = _error(tmp_path, "people: {}\n")
    assert "missing required key 'units'" in str(err)


def test_from_data_reports_problems_without_a_file() -> None:
    """from_data checks the same rules and names the given pseudo-file."""
    data: dict[str, Any] = {"units": {"a": {"name": "A", "parent": "b"}}}
    with pytest.raises(DirectoryError) as info:
        YamlDirectory.from_data(data, file="<host>")
    assert str(info.value).startswith("<host>:1:1: error: unit 'a': parent 'b'")


def test_load_directory_reads_a_given_path(tmp_path: Path) -> None:
    """load_directory(path) reads that file instead of the shipped demo."""
    path = _write(
        tmp_path,
        "units:\n  xa-a: {name: Xã A}\n"
        "people:\n  an:\n    name: An\n    roles: {unit_head: xa-a}\n",
    )
    d = load_directory(path)
    assert [p.name for p in d.holders("unit_head", "xa-a")] == ["An"]
    assert load_directory(str(path)).unit("xa-a") == Unit("xa-a", "Xã A")
