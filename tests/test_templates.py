"""Message templates: sandboxed plain-text Jinja2 with strict variables, vi and en."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from sangkien.definition import Definition, load_definition
from sangkien.errors import SangkienError
from sangkien.model import Event, Instance
from sangkien.templates import (
    TemplateError,
    TemplateStore,
    build_context,
    en_date,
    en_datetime,
    sample_context,
    shipped_templates_dir,
    vn_date,
    vn_datetime,
)

ROOT = Path(__file__).resolve().parent.parent
GENERIC = {"transition", "state_entered", "reminder", "deadline_missed", "escalation"}
FOR_CAMPAIGN = {"campaign_launched"}
FOR_INITIATIVE = {
    "initiative_registered",
    "application_submitted",
    "receipt_issued",
    "amendment_requested",
    "application_refused",
    "initiative_recognized",
    "initiative_not_recognized",
    "decision_due",
}


@pytest.fixture(scope="module")
def definitions() -> dict[str, Definition]:
    return {
        k: load_definition(ROOT / "workflows" / f"{k}.yaml") for k in ("campaign", "initiative")
    }


@pytest.fixture(scope="module")
def shipped() -> TemplateStore:
    return TemplateStore([shipped_templates_dir()])


def _store(tmp_path: Path, files: dict[str, str], **kwargs: Any) -> TemplateStore:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return TemplateStore([tmp_path], **kwargs)


# --------------------------------------------------------------------------- shipped templates


def test_shipped_templates_are_the_expected_set_in_both_languages(shipped: TemplateStore) -> None:
    """Every shipped template exists in Vietnamese and in English."""
    assert shipped.names() == GENERIC | FOR_CAMPAIGN | FOR_INITIATIVE
    for name in shipped.names():
        assert shipped.languages(name) == {"vi", "en"}, name


@pytest.mark.parametrize("minimal", [False, True], ids=["full", "minimal"])
@pytest.mark.parametrize("lang", ["vi", "en"])
def test_every_shipped_template_renders_with_sample_contexts(
    shipped: TemplateStore, definitions: dict[str, Definition], lang: str, minimal: bool
) -> None:
    """Each template renders with its workflow's sample context, fully filled and minimal."""
    plan = {name: ["campaign", "initiative"] for name in GENERIC}
    plan |= {name: ["campaign"] for name in FOR_CAMPAIGN}
    plan |= {name: ["initiative"] for name in FOR_INITIATIVE}
    for name, workflows in plan.items():
        for key in workflows:
            ctx = sample_context(definitions[key], lang, minimal=minimal)
            assert shipped.check(name, ctx, lang) == [], (name, key)
            subject, body = shipped.render(name, ctx, lang)
            assert subject and "\n" not in subject
            assert body.endswith("\n") and not body.startswith("\n")
            assert "\n\n\n" not in body, (name, key)
            assert "None" not in subject + body, (name, key)
            if minimal:
                assert "http" not in body
            else:
                assert "https://example.gov.vn/sang-kien/0b9e1c52-sample" in body


def test_workflow_specific_templates_refuse_the_other_workflow(
    shipped: TemplateStore, definitions: dict[str, Definition]
) -> None:
    """An initiative template names an undeclared field when checked against a campaign."""
    problems = shipped.check("initiative_recognized", sample_context(definitions["campaign"]))
    assert len(problems) == 2  # vi and en
    assert "undefined variable 'data.recognized_on'" in problems[0]


def test_vietnamese_rendering_keeps_diacritics(
    shipped: TemplateStore, definitions: dict[str, Definition]
) -> None:
    """A Vietnamese message keeps composed diacritics from the template and from the data."""
    ctx = build_context(
        definition=definitions["initiative"],
        instance={
            "id": "i-1",
            "workflow": "initiative",
            "state": "recognized",
            "unit": "xa-nghia-hanh",
            "created_by": "nguyen.van.an",
            "external_ref": None,
            "data": {
                "title": "Tiếp nhận hồ sơ một cửa qua Zalo",
                "decision_number": "88/QĐ-UBND",
                "recognized_on": "2026-07-15T03:00:00+00:00",
                "score": 82,
                "authors": ["Nguyễn Văn An", "Đặng Thị Bình"],
            },
            "parent_id": None,
        },
        event={
            "kind": "transition",
            "trigger": "recognize",
            "from_state": "evaluated",
            "to_state": "recognized",
            "actor_id": "pham.van.duc",
            "at": "2026-07-15T03:00:00Z",
        },
        recipient={"id": "nguyen.van.an", "name": "Nguyễn Văn An"},
        unit_name="Ủy ban nhân dân xã Nghĩa Hành",
    )
    subject, body = shipped.render("initiative_recognized", ctx, "vi")
    assert subject == "Sáng kiến được công nhận: Tiếp nhận hồ sơ một cửa qua Zalo"
    assert body.startswith("Kính gửi Ông/Bà Nguyễn Văn An,\n")
    assert (
        'sáng kiến "Tiếp nhận hồ sơ một cửa qua Zalo" đã được công nhận theo Quyết định số '
        "88/QĐ-UBND ngày 15 tháng 07 năm 2026." in body
    )
    assert "- Tác giả, đồng tác giả: Nguyễn Văn An, Đặng Thị Bình" in body
    assert "82/100" in body
    assert "Trân trọng." in body


def test_english_rendering(shipped: TemplateStore, definitions: dict[str, Definition]) -> None:
    """The English template reads in English and formats dates in English."""
    ctx = sample_context(definitions["campaign"], "en")
    subject, body = shipped.render("campaign_launched", ctx, "en")
    assert subject == "Campaign launched: Title (sample)"
    assert body.startswith("Dear Nguyễn Văn An,\n")
    assert "of 16 March 2026" in body
    assert "Kind regards," in body


# --------------------------------------------------------------------------- store behaviour


def test_missing_language_falls_back_to_the_default(tmp_path: Path) -> None:
    """A language without the file falls back to the default language's file."""
    store = _store(tmp_path, {"vi/hello.txt": "Subject: Chào {{ name }}\n\nXin chào {{ name }}.\n"})
    assert store.render("hello", {"name": "Bình"}, "en") == ("Chào Bình", "Xin chào Bình.\n")
    assert store.render("hello", {"name": "Bình"}, "en-US")[0] == "Chào Bình"
    assert store.exists("hello", "en") and store.exists("hello")
    assert not store.exists("bye")


def test_regional_language_uses_the_base_language(tmp_path: Path) -> None:
    """'en-GB' uses the 'en' file before falling back to the default language."""
    store = _store(
        tmp_path,
        {"vi/x.txt": "Subject: vi\n\nvi\n", "en/x.txt": "Subject: en\n\nen\n"},
    )
    assert store.render("x", {}, "en-GB") == ("en", "en\n")
    assert store.render("x", {}) == ("vi", "vi\n")


def test_first_folder_wins(tmp_path: Path) -> None:
    """A host folder placed before the shipped one overrides a template of the same name."""
    host = tmp_path / "host"
    (host / "vi").mkdir(parents=True)
    (host / "vi" / "transition.txt").write_text("Subject: riêng\n\nThân gửi {{ recipient.name }}\n")
    store = TemplateStore([host, shipped_templates_dir()])
    ctx = {"recipient": {"name": "An"}}
    assert store.render("transition", ctx) == ("riêng", "Thân gửi An\n")
    assert "reminder" in store.names()


def test_unknown_template_is_an_error(tmp_path: Path) -> None:
    """Rendering a template that is nowhere raises TemplateError naming it and the folders."""
    store = _store(tmp_path, {})
    with pytest.raises(TemplateError) as info:
        store.render("nothing_here", {}, "en")
    assert info.value.template == "nothing_here"
    assert "no template file for language en, vi" in str(info.value)
    assert isinstance(info.value, SangkienError)


def test_template_names_cannot_escape_the_folder(tmp_path: Path) -> None:
    """Names are lower_snake_case identifiers: paths are refused."""
    store = _store(tmp_path, {"vi/ok.txt": "Subject: x\n\ny\n"})
    with pytest.raises(TemplateError, match="not a valid template name"):
        store.render("../vi/ok", {})
    assert not store.exists("../vi/ok")


def test_subject_and_body_are_split_and_the_subject_is_one_line(tmp_path: Path) -> None:
    """The subject is one line even when a value holds line breaks; trailing newline kept."""
    store = _store(
        tmp_path,
        {"vi/a.txt": "Subject: [{{ t }}]\n\n{% if t %}\nDòng một\n{% endif %}\nHết\n"},
    )
    subject, body = store.render("a", {"t": "hai\r\ndòng"})
    assert subject == "[hai dòng]"
    assert body == "Dòng một\nHết\n"


def test_malformed_files_are_reported_with_their_line(tmp_path: Path) -> None:
    """A file without 'Subject:', without the blank line, or with bad syntax names the line."""
    store = _store(
        tmp_path,
        {
            "vi/nosubject.txt": "Hello\n\nbody\n",
            "vi/noblank.txt": "Subject: x\nbody\n",
            "vi/syntax.txt": "Subject: x\n\nline 3\n{{ a }\nline 5\n",
        },
    )
    cases = {
        "nosubject": (1, "first line must be 'Subject: ...'"),
        "noblank": (2, "blank"),
        "syntax": (4, "syntax error"),
    }
    for name, (line, text) in cases.items():
        with pytest.raises(TemplateError) as info:
            store.render(name, {"a": 1})
        assert info.value.line == line, name
        assert text in str(info.value)
        assert str(info.value).startswith(f"{tmp_path / 'vi' / (name + '.txt')}:{line}: ")


def test_undefined_data_field_names_the_variable_file_and_line(
    tmp_path: Path, definitions: dict[str, Definition]
) -> None:
    """A typo such as data.titel raises TemplateError naming the variable, file and line."""
    store = _store(
        tmp_path,
        {
            "vi/typo.txt": "Subject: {{ data.title }}\n\nKính gửi {{ recipient.name }},\n"
            "\nTên: {{ data.titel }}\n"
        },
    )
    ctx = sample_context(definitions["initiative"])
    with pytest.raises(TemplateError) as info:
        store.render("typo", ctx)
    err = info.value
    assert err.variable == "data.titel"
    assert err.line == 5
    assert err.template == "typo" and err.lang == "vi"
    assert err.file == str(tmp_path / "vi" / "typo.txt")
    assert str(err) == f"{err.file}:5: template 'typo' (vi): undefined variable 'data.titel'"
    assert store.check("typo", ctx) == [str(err)]


def test_undefined_names_are_spelt_in_full(tmp_path: Path) -> None:
    """Top-level names, nested keys, list items and attributes of None are all named."""
    store = _store(
        tmp_path,
        {
            "vi/top.txt": "Subject: x\n\n{{ reciptent }}\n",
            "vi/nested.txt": "Subject: x\n\n{{ instance.lnk }}\n",
            "vi/item.txt": "Subject: x\n\n{{ data.authors[0].nam }}\n",
            "vi/none.txt": "Subject: x\n\n{{ deadline.label }}\n",
            "vi/subject.txt": "Subject: {{ evnt.at }}\n\nbody\n",
        },
    )
    ctx = {"instance": {"id": "1"}, "data": {"authors": [{"name": "An"}]}, "deadline": None}
    expected = {
        "top": ("reciptent", 3),
        "nested": ("instance.lnk", 3),
        "item": ("data.authors[0].nam", 3),
        "none": ("deadline.label", 3),
        "subject": ("evnt", 1),
    }
    for name, (variable, line) in expected.items():
        with pytest.raises(TemplateError) as info:
            store.render(name, ctx)
        assert (info.value.variable, info.value.line) == (variable, line), name


def test_unset_declared_fields_print_as_nothing(
    tmp_path: Path, definitions: dict[str, Definition]
) -> None:
    """A declared field without a value is None: it prints empty and tests false."""
    store = _store(
        tmp_path,
        {
            "vi/a.txt": "Subject: x\n\n[{{ data.receipt_number }}]"
            "{% if data.receipt_number %}có{% else %}không{% endif %}"
            "[{{ data.answer_due_on|vn_date }}]\n"
        },
    )
    ctx = build_context(
        definition=definitions["initiative"],
        instance={"id": "1", "state": "applied", "unit": "u", "data": {"title": "T"}},
        recipient={"id": "an"},
    )
    assert store.render("a", ctx)[1] == "[]không[]\n"


def test_field_named_like_a_dict_method_is_the_field(tmp_path: Path) -> None:
    """data.items is the field called 'items', not the dict method."""
    store = _store(tmp_path, {"vi/a.txt": "Subject: x\n\n{{ data.items }} {{ data.values }}\n"})
    assert store.render("a", {"data": {"items": 3, "values": "v"}})[1] == "3 v\n"


# --------------------------------------------------------------------------- sandbox


@pytest.mark.parametrize(
    "expression",
    [
        "''.__class__",
        "''.__class__.__mro__[1].__subclasses__()",
        "recipient.__class__",
        "labels._definition",
    ],
)
def test_sandbox_refuses_private_attributes(
    tmp_path: Path, definitions: dict[str, Definition], expression: str
) -> None:
    """Attribute access to private or dunder attributes is a TemplateError from the sandbox."""
    store = _store(tmp_path, {"vi/evil.txt": "Subject: x\n\n{{ " + expression + " }}\n"})
    with pytest.raises(TemplateError) as info:
        store.render("evil", sample_context(definitions["campaign"]))
    assert "refused by the sandbox" in str(info.value)
    assert "unsafe" in str(info.value)
    assert info.value.line == 3


def test_sandbox_refuses_changing_the_context(tmp_path: Path) -> None:
    """Templates cannot mutate the data they are given."""
    store = _store(tmp_path, {"vi/m.txt": "Subject: x\n\n{{ data.update({'a': 1}) }}\n"})
    data: dict[str, Any] = {"b": 2}
    with pytest.raises(TemplateError, match="sandbox"):
        store.render("m", {"data": data})
    assert data == {"b": 2}


def test_include_is_not_available(tmp_path: Path) -> None:
    """Each template stands alone: include cannot read other files."""
    store = _store(tmp_path, {"vi/a.txt": "Subject: x\n\n{% include '/etc/passwd' %}\n"})
    with pytest.raises(TemplateError, match="include"):
        store.render("a", {})


def test_output_is_not_html_escaped(tmp_path: Path) -> None:
    """Autoescape is off: plain text keeps <, > and & as written."""
    store = _store(tmp_path, {"vi/a.txt": "Subject: {{ t }}\n\n{{ t }}\n"})
    assert store.render("a", {"t": "A & B <c>"}) == ("A & B <c>", "A & B <c>\n")


# --------------------------------------------------------------------------- filters


def test_vn_date_formats_dates_and_converts_aware_datetimes() -> None:
    """vn_date gives 'ngày DD tháng MM năm YYYY', converting aware times to Vietnam first."""
    assert vn_date(date(2025, 2, 10)) == "ngày 10 tháng 02 năm 2025"
    # 18:00 UTC on 9 February is already 10 February in Vietnam
    assert vn_date(datetime(2025, 2, 9, 18, 0, tzinfo=UTC)) == "ngày 10 tháng 02 năm 2025"
    assert vn_date(datetime(2025, 2, 9, 18, 0, tzinfo=UTC), "UTC") == "ngày 09 tháng 02 năm 2025"
    assert vn_date("2025-02-10") == "ngày 10 tháng 02 năm 2025"
    assert vn_date(None) == ""


def test_vn_datetime_formats_time_and_day() -> None:
    """vn_datetime gives 'HH:MM ngày DD/MM/YYYY' in Vietnam time."""
    assert vn_datetime(datetime(2025, 2, 10, 2, 30, tzinfo=UTC)) == "09:30 ngày 10/02/2025"
    assert vn_datetime("2025-02-10T02:30:00Z") == "09:30 ngày 10/02/2025"
    plus9 = timezone(timedelta(hours=9))
    assert vn_datetime(datetime(2025, 2, 10, 11, 30, tzinfo=plus9)) == "09:30 ngày 10/02/2025"
    assert vn_datetime(date(2025, 2, 10)) == "ngày 10/02/2025"


def test_en_date_and_en_datetime() -> None:
    """en_date gives '10 February 2025'; en_datetime adds the local time."""
    assert en_date(date(2025, 2, 10)) == "10 February 2025"
    assert en_date(datetime(2025, 2, 9, 18, 0, tzinfo=UTC)) == "10 February 2025"
    assert en_datetime(datetime(2025, 2, 10, 2, 30, tzinfo=UTC)) == "09:30, 10 February 2025"


def test_filters_in_templates_use_the_store_time_zone(tmp_path: Path) -> None:
    """Filters convert to the store's time zone unless a zone is given in the template."""
    files = {
        "vi/a.txt": "Subject: x\n\n{{ t|vn_datetime }} | {{ t|vn_date('UTC') }} | {{ t|en_date }}\n"
    }
    moment = datetime(2025, 2, 9, 18, 30, tzinfo=UTC)
    vn = _store(tmp_path / "vn", files)
    assert vn.render("a", {"t": moment})[1] == (
        "01:30 ngày 10/02/2025 | ngày 09 tháng 02 năm 2025 | 10 February 2025\n"
    )
    utc = _store(tmp_path / "utc", files, timezone="UTC")
    assert utc.render("a", {"t": moment})[1].startswith("18:30 ngày 09/02/2025")


def test_filter_of_an_undefined_value_is_an_undefined_error(tmp_path: Path) -> None:
    """Passing a misspelt variable through a filter still names the variable."""
    store = _store(tmp_path, {"vi/a.txt": "Subject: x\n\n{{ data.due_onn|vn_date }}\n"})
    with pytest.raises(TemplateError) as info:
        store.render("a", {"data": {"due_on": "2025-02-10"}})
    assert info.value.variable == "data.due_onn"


def test_filter_of_a_bad_value_is_a_template_error(tmp_path: Path) -> None:
    """A value that is not a date makes the filter fail with the template's line."""
    store = _store(tmp_path, {"vi/a.txt": "Subject: x\n\n\n{{ v|vn_date }}\n"})
    with pytest.raises(TemplateError) as info:
        store.render("a", {"v": "soon"})
    assert info.value.line == 4
    assert "'soon' is not an ISO date" in str(info.value)


# --------------------------------------------------------------------------- context


def test_build_context_exposes_the_documented_variables(definitions: dict[str, Definition]) -> None:
    """build_context gives instance, data, event, deadline, recipient and labels."""
    d = definitions["initiative"]
    ctx = build_context(
        definition=d,
        instance={
            "id": "abc 1",
            "workflow": "initiative",
            "state": "amendment_requested",
            "unit": "xa-nghia-hanh",
            "created_by": "dang.thi.binh",
            "external_ref": "HS-7",
            "data": {
                "title": "Số hóa sổ hộ tịch",
                "first_applied_on": "2026-03-20",
                "submitted_on": "2026-05-04T02:00:00+00:00",
                "extra": 1,
            },
            "parent_id": "camp-1",
        },
        event={
            "kind": "transition",
            "trigger": "request_amendment",
            "from_state": "applied",
            "to_state": "amendment_requested",
            "actor_id": "tran.thi.mai",
            "comment": "Bổ sung số liệu",
            "at": datetime(2026, 5, 11, 3, 0, tzinfo=UTC),
        },
        deadline={
            "label": {"vi": "Hạn sửa đổi", "en": "Amendment deadline"},
            "due_at": datetime(2026, 6, 11, 16, 59, tzinfo=UTC),
            "step": 1,
            "steps": 2,
        },
        recipient={"id": "dang.thi.binh", "name": "Đặng Thị Bình"},
        link_pattern="https://portal.example/sang-kien/{instance_id}?ref={external_ref}",
        unit_name="Ủy ban nhân dân xã Nghĩa Hành",
        lang="vi",
    )
    inst = ctx["instance"]
    assert inst["workflow_title"] == "Sáng kiến"
    assert inst["state_label"] == "Yêu cầu sửa đổi, bổ sung"
    assert inst["title"] == "Số hóa sổ hộ tịch"
    assert inst["unit_name"] == "Ủy ban nhân dân xã Nghĩa Hành"
    assert inst["link"] == "https://portal.example/sang-kien/abc%201?ref=HS-7"
    assert ctx["data"]["first_applied_on"] == date(2026, 3, 20)
    assert ctx["data"]["submitted_on"] == datetime(2026, 5, 4, 2, 0, tzinfo=UTC)
    assert ctx["data"]["benefits"] is None  # declared, not set
    assert ctx["data"]["extra"] == 1  # undeclared values are kept
    ev = ctx["event"]
    assert ev["trigger_label"] == "Yêu cầu sửa đổi, bổ sung"
    assert (ev["from_label"], ev["to_label"]) == ("Đã áp dụng", "Yêu cầu sửa đổi, bổ sung")
    assert ev["actor"] == "tran.thi.mai" and ev["comment"] == "Bổ sung số liệu"
    assert ctx["deadline"]["label"] == "Hạn sửa đổi"
    assert ctx["recipient"] == {"id": "dang.thi.binh", "name": "Đặng Thị Bình"}
    labels = ctx["labels"]
    assert labels.field("title") == "Tên sáng kiến"
    assert labels.role("unit_head") == "Thủ trưởng cơ sở"
    assert labels.state("recognized") == "Đã công nhận"
    assert labels.trigger("submit") == "Nộp đơn yêu cầu công nhận"
    assert labels.workflow() == "Sáng kiến"


def test_build_context_accepts_engine_objects(definitions: dict[str, Definition]) -> None:
    """An Instance and an Event from the engine can be passed as they are."""
    at = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
    inst = Instance(
        id="i1",
        workflow="campaign",
        workflow_version=1,
        state="launched",
        state_entered_at=at,
        data={"title": "Phong trào 2026"},
        unit="xa-nghia-hanh",
        parent_id=None,
        external_ref=None,
        created_by="le.thi.hoa",
        created_at=at,
        updated_at=at,
        version=2,
    )
    ev = Event(
        instance_id="i1",
        seq=2,
        kind="transition",
        trigger="launch",
        from_state="draft",
        to_state="launched",
        actor_id="system:deadline:draft",
        actor_roles=("system",),
        actor_unit=None,
        at=at,
        data_delta={},
        comment=None,
        prev_hash="",
        hash="",
    )
    ctx = build_context(
        definition=definitions["campaign"],
        instance=inst,
        event=ev,
        recipient={"id": "x", "name": "X"},
        lang="en",
    )
    assert ctx["instance"]["state_label"] == "Launched"
    assert ctx["instance"]["link"] is None
    assert ctx["event"]["trigger_label"] == "Launch"
    assert ctx["event"]["actor"] == "the system (automatically)"
    assert ctx["event"]["at"] == at
    assert ctx["deadline"] is None


def test_trigger_label_prefers_the_transition_from_the_source_state(
    definitions: dict[str, Definition],
) -> None:
    """A trigger declared on several transitions takes the label of the one that fired."""
    ctx = build_context(
        definition=definitions["campaign"],
        instance={"id": "c", "state": "registration_closed", "unit": "u", "data": {}},
        event={
            "trigger": "extend_deadlines",
            "from_state": "registration_closed",
            "to_state": "registration_closed",
        },
        recipient={"id": "x"},
    )
    assert ctx["event"]["trigger_label"] == "Gia hạn"
    assert ctx["recipient"]["name"] == "x"


def test_sample_context_gives_every_field_a_value_of_its_type(
    definitions: dict[str, Definition],
) -> None:
    """Every declared field has a sample value of its declared type within its bounds."""
    d = definitions["initiative"]
    data = sample_context(d, "vi")["data"]
    for name, spec in d.model.fields.items():
        value = data[name]
        assert value is not None, name
        kind = {
            "string": str,
            "text": str,
            "integer": int,
            "number": (int, float),
            "boolean": bool,
            "date": date,
            "datetime": datetime,
            "enum": str,
            "list": list,
            "object": dict,
        }[spec.type]
        assert isinstance(value, kind), name
        if spec.type == "enum":
            assert value in (spec.values or [])
        if spec.type in ("integer", "number"):
            assert spec.min is None or value >= spec.min
            assert spec.max is None or value <= spec.max
    minimal = sample_context(d, "vi", minimal=True)
    assert minimal["data"]["title"] and minimal["data"]["benefits"] is None
    assert minimal["event"]["comment"] is None and minimal["instance"]["link"] is None
