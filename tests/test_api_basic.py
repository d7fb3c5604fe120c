"""The REST API drives a campaign and its initiatives on SQLite and PostgreSQL."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sangkien.api import ApiSettings, create_app, make_token, register_workflows
from sangkien.bootstrap import engine_from_settings
from sangkien.clock import FrozenClock
from sangkien.config import Settings
from sangkien.definition import load_definition
from sangkien.outbox import Dispatcher
from sangkien.runtime import Engine
from sangkien.store.db import create_db_engine, upgrade

SECRET = "test-secret-for-the-api-tests-0123456789"
COMMUNE = "xa-nghia-hanh"
T0 = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
HOOK = "https://portal.example.gov.vn/hooks/sangkien"

PEOPLE: dict[str, tuple[str, list[str], Any]] = {
    "officer": ("le.thi.hoa", ["emulation_officer"], COMMUNE),
    "chair": ("pham.van.duc", ["committee_chair", "unit_head"], COMMUNE),
    "secretary": ("tran.thi.mai", ["council_secretary"], COMMUNE),
    "council_chair": ("vo.minh.tuan", ["council_chair"], COMMUNE),
    "author": ("nguyen.van.an", ["civil_servant"], COMMUNE),
    "author_b": ("dang.thi.binh", ["civil_servant"], COMMUNE),
    "province": ("doan.thi.thu", ["emulation_officer"], ["tinh-quang-ngai", "so-noi-vu"]),
    "admin": ("it.admin", ["admin"], "tinh-quang-ngai"),
}


def auth(who: str, **extra: str) -> dict[str, str]:
    sub, roles, unit = PEOPLE[who]
    return {"Authorization": f"Bearer {make_token(sub, roles, unit, SECRET)}", **extra}


class Api:
    """A test client with the clock and engine behind it."""

    def __init__(self, client: TestClient, engine: Engine, clock: FrozenClock) -> None:
        self.client = client
        self.engine = engine
        self.clock = clock

    def post(self, who: str, path: str, body: Any = None, **headers: str) -> Any:
        return self.client.post(path, json=body, headers=auth(who, **headers))

    def get(self, who: str, path: str, **params: Any) -> Any:
        return self.client.get(path, params=params, headers=auth(who))

    def fire(self, who: str, iid: str, trigger: str, data: Any = None, **kw: Any) -> Any:
        body = {"trigger": trigger, "data": data or {}, **kw}
        return self.post(who, f"/v1/instances/{iid}/fire", body)


def build_api(url: str, clock: FrozenClock, **api_settings: Any) -> tuple[Any, Engine]:
    if url.startswith("postgresql"):
        db = create_db_engine(url)
        upgrade(db)
        db.dispose()
    settings = Settings(database_url=url, subscribers=[{"url": HOOK}])
    engine = engine_from_settings(settings, clock=clock)
    register_workflows(engine, settings.workflow_paths())
    app = create_app(engine=engine, api_settings=ApiSettings(jwt_secret=SECRET, **api_settings))
    return app, engine


@pytest.fixture
def api(db_url: str) -> Iterator[Api]:
    clock = FrozenClock(T0)
    app, engine = build_api(db_url, clock)
    with TestClient(app) as client:
        yield Api(client, engine, clock)
    engine.close()


def launch_campaign(api: Api) -> str:
    r = api.post(
        "officer",
        "/v1/instances",
        {
            "workflow": "campaign",
            "data": {
                "title": "Phong trào sáng kiến cải cách hành chính 2026",
                "registration_deadline": "2026-04-30",
                "submission_deadline": "2026-09-30",
            },
        },
    )
    assert r.status_code == 201, r.text
    cid = r.json()["id"]
    r = api.fire(
        "chair", cid, "launch", {"decision_number": "15/KH-UBND", "launched_on": "2026-03-02"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "launched"
    return str(cid)


def start_initiative(
    api: Api, cid: str, who: str = "author", title: str = "Một cửa qua Zalo"
) -> str:
    r = api.post(
        who, "/v1/instances", {"workflow": "initiative", "parent": cid, "data": {"title": title}}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


APPLICATION = {
    "kind": "operational",
    "field": "Cải cách hành chính",
    "description": "Tiếp nhận hồ sơ qua Zalo: quy trình và kết quả.",
    "benefits": "Rút ngắn thời gian giải quyết hồ sơ.",
    "scope": "commune",
    "authors": ["Nguyễn Văn An"],
    "contribution_shares": [100],
}


def test_campaign_and_initiative_to_recognition(api: Api) -> None:
    """A campaign is launched and an initiative goes from registration to recognition."""
    cid = launch_campaign(api)
    iid = start_initiative(api, cid)
    assert (
        api.fire("author", iid, "register", {"authors": ["Nguyễn Văn An"]}).json()["state"]
        == "registered"
    )
    api.clock.advance(days=14)
    assert (
        api.fire("author", iid, "apply", {"first_applied_on": "2026-03-10"}).json()["state"]
        == "applied"
    )
    assert api.fire("author", iid, "update", APPLICATION).status_code == 200
    assert api.fire("author", iid, "submit").status_code == 200
    r = api.fire(
        "secretary", iid, "issue_receipt", {"receipt_number": "BN-1", "answer_due_on": "2026-04-15"}
    )
    assert r.status_code == 200, r.text
    assert api.fire("secretary", iid, "accept").status_code == 200
    evaluation = {"score": 82, "votes_for": 5, "votes_total": 6, "scope": "commune"}
    r = api.fire("council_chair", iid, "evaluate", evaluation)
    assert r.json()["state"] == "evaluated", r.text
    r = api.fire(
        "chair", iid, "recognize", {"decision_number": "88/QĐ-UBND", "certificate_number": "GCN-01"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "recognized"

    history = api.get("author", f"/v1/instances/{iid}/history").json()
    assert [e["kind"] for e in history][:2] == ["started", "transition"]
    assert history[-1]["to_state"] == "recognized"
    assert history[-1]["actor"] == {
        "id": "pham.van.duc",
        "roles": ["committee_chair", "unit_head"],
        "unit": COMMUNE,
    }
    for prev, event in itertools.pairwise(history):
        assert event["prev_hash"] == prev["hash"]

    stats = api.get("officer", f"/v1/campaigns/{cid}/stats").json()
    assert stats["total"] == 1
    assert stats["by_state"] == {"recognized": 1}
    assert stats["by_unit"] == {COMMUNE: {"recognized": 1}}
    assert [i["id"] for i in stats["recognized"]] == [iid]


def test_refusals_name_the_rule(api: Api) -> None:
    """A refused trigger is a 403 problem whose reasons say which rule refused it."""
    cid = launch_campaign(api)
    iid = start_initiative(api, cid)
    r = api.fire("officer", iid, "register", {"authors": ["X"]})
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"] == "urn:sangkien:problem:transition-not-allowed"
    assert body["reasons"][0].startswith("role author required; you have emulation_officer")
    assert body["trigger"] == "register" and body["request_id"] == r.headers["x-request-id"]
    r = api.fire("author", iid, "register", {"authors": "not a list"})
    assert r.status_code == 422
    assert r.json()["type"] == "urn:sangkien:problem:invalid-data"


def test_triggers_list_what_the_caller_may_do(api: Api) -> None:
    """Available triggers are allowed or refused per caller, with reasons."""
    cid = launch_campaign(api)
    iid = start_initiative(api, cid)
    mine = {t["trigger"]: t for t in api.get("author", f"/v1/instances/{iid}/triggers").json()}
    assert mine["register"]["allowed"] is True
    theirs = {t["trigger"]: t for t in api.get("secretary", f"/v1/instances/{iid}/triggers").json()}
    assert theirs["register"]["allowed"] is False
    assert theirs["register"]["reasons"]


def test_list_filters_and_cursor_pagination(api: Api) -> None:
    """Listing filters by workflow, state and parent and pages with an opaque cursor."""
    cid = launch_campaign(api)
    ids = [start_initiative(api, cid, title=f"Sáng kiến {n}") for n in range(5)]
    api.fire("author", ids[0], "register", {"authors": ["A"]})
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"workflow": "initiative", "limit": 2}
        if cursor:
            params["cursor"] = cursor
        page = api.get("chair", "/v1/instances", **params).json()
        seen += [i["id"] for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert pages == 3
    registered = api.get("chair", "/v1/instances", state="registered").json()["items"]
    assert [i["id"] for i in registered] == [ids[0]]
    children = api.get("chair", "/v1/instances", parent=cid).json()["items"]
    assert len(children) == 5
    bad = api.get("chair", "/v1/instances", cursor="not-a-cursor")
    assert bad.status_code == 422
    assert bad.json()["type"] == "urn:sangkien:problem:invalid-cursor"


def test_deadlines_overdue_due_soon_and_extend(api: Api) -> None:
    """Deadlines show per instance, in the overdue and due-soon lists, and can be extended."""
    cid = launch_campaign(api)
    own = api.get("officer", f"/v1/instances/{cid}/deadlines").json()
    assert [d["deadline"] for d in own] == ["state:launched"]
    assert api.get("officer", "/v1/deadlines/overdue").json() == []
    api.clock.set(datetime(2026, 4, 27, 2, 0, tzinfo=UTC))
    soon = api.get("officer", "/v1/deadlines/due-soon", within="5 working days").json()
    assert [d["instance_id"] for d in soon] == [cid]
    api.clock.set(datetime(2026, 5, 4, 2, 0, tzinfo=UTC))
    late = api.get("officer", "/v1/deadlines/overdue").json()
    assert [d["instance_id"] for d in late] == [cid]
    assert late[0]["overdue"] is True
    overdue_list = api.get("officer", "/v1/instances", overdue="true").json()
    assert [i["id"] for i in overdue_list["items"]] == [cid]
    r = api.post(
        "author",
        f"/v1/instances/{cid}/deadlines/extend",
        {"reason": "Tết", "by": "10 working days"},
    )
    assert r.status_code == 403
    r = api.post(
        "chair",
        f"/v1/instances/{cid}/deadlines/extend",
        {"reason": "Bão lũ", "until": "2026-05-29"},
    )
    assert r.status_code == 200, r.text
    assert r.json()[0]["due_at"].startswith("2026-05-29")
    assert api.get("officer", "/v1/deadlines/overdue").json() == []
    bad = api.get("officer", "/v1/deadlines/due-soon", within="soon-ish")
    assert bad.status_code == 422
    assert bad.json()["type"] == "urn:sangkien:problem:invalid-duration"


def test_workflow_routes(api: Api) -> None:
    """Workflows are listed, read with their source, drawn, validated and published."""
    listed = {w["key"]: w for w in api.get("author", "/v1/workflows").json()}
    assert set(listed) == {"campaign", "initiative"}
    assert listed["initiative"]["parent"] == "campaign"
    one = api.get("author", "/v1/workflows/initiative").json()
    assert one["source"].startswith("#") and one["definition"]["workflow"] == "initiative"
    mermaid = api.client.get("/v1/workflows/campaign/diagram", headers=auth("author"))
    assert mermaid.text.startswith("stateDiagram-v2")
    dot = api.client.get("/v1/workflows/campaign/diagram?format=dot", headers=auth("author"))
    assert dot.text.startswith("digraph")
    assert api.get("author", "/v1/workflows/nope").status_code == 404

    shipped = load_definition(Settings().workflow_paths()[0] / "campaign.yaml")
    bumped = shipped.source.replace("version: 1\n", "version: 2\n", 1)
    r = api.client.post(
        "/v1/workflows", content=bumped, headers=auth("chair", **{"content-type": "text/yaml"})
    )
    assert r.status_code == 403
    r = api.client.post(
        "/v1/workflows", content=bumped, headers=auth("admin", **{"content-type": "text/yaml"})
    )
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2 and r.json()["versions"] == [1, 2]
    assert api.get("author", "/v1/workflows/campaign", version=1).json()["version"] == 1


def test_validate_reports_what_the_cli_reports(api: Api, tmp_path: Any) -> None:
    """POST /v1/workflows/validate gives the same findings as `sangkien validate`."""
    from click.testing import CliRunner

    from sangkien.cli import cli

    text = (
        "workflow: demo\nversion: 1\ntitle: Demo\nroles: [a]\n"
        "states:\n  s: {initial: true, colour: red}\n"
    )
    path = tmp_path / "demo.yaml"
    path.write_text(text, encoding="utf-8")
    out = CliRunner().invoke(cli, ["validate", str(path)]).output
    cli_lines = [ln[len(str(path)) + 1 :] for ln in out.splitlines() if ln.startswith(str(path))]
    as_yaml = api.client.post(
        "/v1/workflows/validate",
        content=text,
        headers=auth("author", **{"content-type": "text/yaml"}),
    ).json()
    as_json = api.post("author", "/v1/workflows/validate", {"source": text}).json()
    assert as_yaml == as_json
    assert as_yaml["valid"] is False
    api_lines = [
        f"{p['line']}:{p['column']}: {p['severity']}: {p['message']}" for p in as_yaml["problems"]
    ]
    assert api_lines == cli_lines and api_lines


def test_outbox_admin_and_metrics(api: Api) -> None:
    """Admins list and retry outbox rows; /metrics counts transitions and outbox rows."""
    cid = launch_campaign(api)
    assert api.get("chair", "/v1/outbox").status_code == 403
    page = api.get("admin", "/v1/outbox").json()
    assert page["items"] and set(page["counts"]) <= {"pending", "delivering", "delivered", "dead"}
    by_instance = api.get("admin", "/v1/outbox", instance=cid).json()["items"]
    assert by_instance and all(m["instance_id"] == cid for m in by_instance)
    one = api.get("admin", f"/v1/outbox/{by_instance[0]['id']}").json()
    assert "body" in one and "payload" in one
    Dispatcher(api.engine, {}).run()  # no adapter for the webhook channel: all dead
    dead = api.get("admin", "/v1/outbox", status="dead").json()
    assert dead["counts"]["dead"] == len(by_instance) == len(dead["items"])
    r = api.post("admin", "/v1/outbox/retry", {"ids": [by_instance[0]["id"]]})
    assert r.json() == {"retried": 1}
    r = api.post("admin", "/v1/outbox/retry", {"all_dead": True})
    assert r.status_code == 200 and r.json()["retried"] == len(by_instance) - 1
    assert api.post("admin", "/v1/outbox/retry", {}).status_code == 422

    text = api.client.get("/metrics").text
    assert 'sangkien_transitions_total{trigger="launch",workflow="campaign"} 1.0' in text
    assert 'sangkien_instances_started_total{workflow="campaign"} 1.0' in text
    assert 'sangkien_outbox_messages{status="pending"}' in text
    assert 'route="/v1/instances/{instance_id}/fire"' in text
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/readyz").json()["status"] == "ready"
