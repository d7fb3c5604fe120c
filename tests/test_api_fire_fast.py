"""The fire route's fast path answers exactly as the route FastAPI solves from its declaration.

An app with any dependency override solves every route the declared way; the same requests
against both must get the same status, headers and body (instance ids aside).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastapi.routing
import pytest
from fastapi.testclient import TestClient

from sangkien.api import ApiSettings, create_app, make_token, register_workflows
from sangkien.bootstrap import engine_from_settings
from sangkien.clock import FrozenClock
from sangkien.config import Settings
from sangkien.runtime import Engine

SECRET = "test-secret-for-the-api-tests-0123456789"
COMMUNE = "xa-nghia-hanh"
AUTHOR = ("nguyen.van.an", ["civil_servant"], COMMUNE)
SECRETARY = ("tran.thi.mai", ["council_secretary"], COMMUNE)
OTHER = ("tran.van.khac", ["civil_servant"], "xa-dinh-cuong")
HEADERS = ("content-type", "www-authenticate", "idempotency-replayed", "retry-after")


def bearer(who: tuple[str, list[str], str] = AUTHOR, **claims: Any) -> str:
    return f"Bearer {make_token(*who, SECRET, **claims)}"


def _unused() -> None:  # pragma: no cover - never called: its override only needs to exist
    pass


class Api:
    def __init__(self, client: TestClient, engine: Engine) -> None:
        self.client = client
        self.engine = engine
        officer = ("le.thi.hoa", ["emulation_officer"], COMMUNE)
        r = self.post(
            "/v1/instances",
            json={
                "workflow": "campaign",
                "data": {
                    "title": "Phong trào 2026",
                    "registration_deadline": "2026-04-30",
                    "submission_deadline": "2026-09-30",
                },
            },
            headers={"Authorization": bearer(officer)},
        )
        assert r.status_code == 201, r.text
        self.campaign = r.json()["id"]
        chair = ("pham.van.duc", ["committee_chair", "unit_head"], COMMUNE)
        data = {"decision_number": "1/KH", "launched_on": "2026-03-02"}
        r = self.post(
            f"/v1/instances/{self.campaign}/fire",
            json={"trigger": "launch", "data": data},
            headers={"Authorization": bearer(chair)},
        )
        assert r.status_code == 200, r.text

    def post(self, path: str, **kw: Any) -> Any:
        return self.client.post(path, **kw)

    def initiative(self) -> str:
        body = {"workflow": "initiative", "parent": self.campaign, "data": {"title": "Sáng kiến"}}
        r = self.post("/v1/instances", json=body, headers={"Authorization": bearer()})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def declared(self) -> Any:
        """While set, every route is solved from its declaration (no fast path)."""
        app = self.client.app
        outer = self

        class Declared:
            def __enter__(self) -> Api:
                app.dependency_overrides[_unused] = _unused  # type: ignore[attr-defined]
                return outer

            def __exit__(self, *exc: object) -> None:
                app.dependency_overrides.clear()  # type: ignore[attr-defined]

        return Declared()


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    tmp: Path = tmp_path_factory.mktemp("fast")
    clock = FrozenClock(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
    settings = Settings(database_url=f"sqlite:///{tmp / 'api.db'}")
    engine = engine_from_settings(settings, clock=clock)
    register_workflows(engine, settings.workflow_paths())
    app = create_app(engine=engine, api_settings=ApiSettings(jwt_secret=SECRET))
    with TestClient(app) as client:
        yield Api(client, engine)
    engine.close()


Fire = Callable[[Api, str], Any]


SENT = itertools.count()


def post(body: Any = None, *, content: bytes | None = None, **headers: str | None) -> Fire:
    """A fire request on an instance: JSON *body* or raw *content*, with *headers*.

    ``{n}`` in a header becomes a number new at each request (a fresh idempotency key).
    """
    given = {"Authorization": bearer(), **headers}

    def send(api: Api, iid: str) -> Any:
        n = next(SENT)
        headers = {k: v.replace("{n}", str(n)) for k, v in given.items() if v is not None}
        path = f"/v1/instances/{iid}/fire"
        if content is not None:
            return api.post(path, content=content, headers=headers)
        return api.post(path, json=body, headers=headers)

    return send


UPDATE = {"trigger": "update", "data": {"plan": "Kế hoạch"}}
LONG_ID = "x" * 65

CASES: dict[str, tuple[Fire, Callable[[str], str] | None]] = {
    "ordinary": (post(UPDATE), None),
    "with a comment": (post({**UPDATE, "comment": "Bổ sung"}), None),
    "a refused trigger": (post({"trigger": "register", "data": {}}), None),
    "a role that may not": (post(UPDATE, Authorization=bearer(SECRETARY)), None),
    "another unit": (post(UPDATE, Authorization=bearer(OTHER)), None),
    "an unknown trigger": (post({"trigger": "nope"}), None),
    "an unknown instance": (post(UPDATE), lambda _iid: "no-such-instance"),
    "an id too long": (post(UPDATE), lambda _iid: LONG_ID),
    "a stale version": (post({**UPDATE, "expected_version": 1}), None),
    "version zero": (post({**UPDATE, "expected_version": 0}), None),
    "an extra field": (post({**UPDATE, "surprise": 1}), None),
    "a trigger that is a number": (post({"trigger": 5}), None),
    "data that is a list": (post({"trigger": "update", "data": [1]}), None),
    "a list body": (post([UPDATE]), None),
    "an empty body": (post(content=b"", **{"Content-Type": "application/json"}), None),
    "invalid JSON": (post(content=b"{nope", **{"Content-Type": "application/json"}), None),
    "JSON nested too deep": (
        post(content=b"[" * 100_000 + b"]" * 100_000, **{"Content-Type": "application/json"}),
        None,
    ),
    "invalid UTF-8": (
        post(content=b'{"trigger": "\xff"}', **{"Content-Type": "application/json"}),
        None,
    ),
    "text/plain": (post(content=b'{"trigger": "update"}', **{"Content-Type": "text/plain"}), None),
    "a JSON suffix type": (
        post(content=b'{"trigger": "update"}', **{"Content-Type": "application/x+json"}),
        None,
    ),
    "JSON with a charset": (
        post(
            content=b'{"trigger": "update"}', **{"Content-Type": "application/json; charset=utf-8"}
        ),
        None,
    ),
    "no credentials": (post(UPDATE, Authorization=None), None),
    "no credentials, invalid body": (post({"surprise": 1}, Authorization=None), None),
    "no credentials, invalid JSON": (
        post(content=b"{", Authorization=None, **{"Content-Type": "application/json"}),
        None,
    ),
    "an expired token": (post(UPDATE, Authorization=bearer(ttl=-3600)), None),
    "a malformed header": (post(UPDATE, Authorization="Basic eDp5"), None),
    "a unit not held": (post(UPDATE, **{"X-Sangkien-Unit": "elsewhere"}), None),
    "a unit held": (post(UPDATE, **{"X-Sangkien-Unit": COMMUNE}), None),
    "a key too long": (post(UPDATE, **{"Idempotency-Key": "k" * 256}), None),
    "an empty key": (post(UPDATE, **{"Idempotency-Key": ""}), None),
    "a key with a space": (post(UPDATE, **{"Idempotency-Key": "a b {n}"}), None),
    "a fresh key": (post(UPDATE, **{"Idempotency-Key": "key-{n}"}), None),
}


def _shape(r: Any, iid: str) -> tuple[int, dict[str, str], Any]:
    text = r.text.replace(iid, "<id>")
    body = re.sub(r'"request_id":"[^"]*"', '"request_id":"<rid>"', text)
    headers = {h: r.headers[h] for h in HEADERS if h in r.headers}
    return r.status_code, headers, body


@pytest.mark.parametrize("case", list(CASES))
def test_fast_and_declared_fires_answer_alike(api: Api, case: str) -> None:
    """Each request gets the same answer with and without the fast path."""
    send, target = CASES[case]
    answers = []
    for declared in (False, True):
        iid = api.initiative()
        if declared:
            with api.declared():
                r = send(api, target(iid) if target else iid)
        else:
            r = send(api, target(iid) if target else iid)
        answers.append(_shape(r, iid))
    assert answers[0] == answers[1]


def test_replays_answer_alike(api: Api) -> None:
    """A keyed fire and its replay: the same answers, the replay marked, on both paths."""
    shapes = []
    for declared in (False, True):
        iid = api.initiative()
        send = post(UPDATE, **{"Idempotency-Key": f"fire-{declared}"})
        if declared:
            with api.declared():
                pair = [send(api, iid), send(api, iid)]
        else:
            pair = [send(api, iid), send(api, iid)]
        assert [r.status_code for r in pair] == [200, 200]
        assert pair[1].headers["idempotency-replayed"] == "true"
        assert pair[0].json() == pair[1].json()
        shapes.append([_shape(r, iid) for r in pair])
    assert shapes[0] == shapes[1]


def test_ordinary_fires_skip_dependency_solving(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the fast path: an ordinary fire is not solved by FastAPI; others are."""
    solved: list[str] = []
    original = fastapi.routing.solve_dependencies

    async def counting(*args: Any, **kwargs: Any) -> Any:
        solved.append(kwargs["request"].url.path)
        return await original(*args, **kwargs)

    monkeypatch.setattr(fastapi.routing, "solve_dependencies", counting)
    iid = api.initiative()
    solved.clear()
    assert post(UPDATE)(api, iid).status_code == 200
    assert solved == []
    assert post({**UPDATE, "surprise": 1})(api, iid).status_code == 422
    assert solved == [f"/v1/instances/{iid}/fire"]


def test_the_app_documents_what_a_host_including_the_router_documents(api: Api) -> None:
    """create_app lays its routes out for speed; its OpenAPI is the router's all the same."""
    from fastapi import FastAPI

    from sangkien.api import ApiContext, create_router
    from sangkien.api.app import _openapi
    from sangkien.api.operations import health_router

    app: Any = api.client.app
    host = FastAPI(title=app.title, version=app.version, description=app.description)
    ctx = ApiContext(api.engine, ApiSettings(jwt_secret=SECRET))
    host.include_router(health_router(ctx))
    host.include_router(create_router(api.engine, context=ctx))
    host.openapi = _openapi(host)  # type: ignore[method-assign]
    mine, theirs = app.openapi(), host.openapi()
    assert list(mine["paths"]) == list(theirs["paths"])
    assert mine == theirs


def test_writes_run_at_most_write_concurrency_at_once(api: Api) -> None:
    """Starts and fires past the limit wait their turn; the others wait on the event loop."""
    import asyncio

    import greenlet

    from sangkien.api import ApiContext

    ctx = ApiContext(api.engine, ApiSettings(jwt_secret=SECRET), write_concurrency=2)
    assert api.engine.writes_on_loop
    inside: list[int] = [0, 0]  # now, most

    async def main() -> list[str]:
        release = asyncio.Event()
        entered = asyncio.Semaphore(0)

        def write() -> str:
            inside[0] += 1
            inside[1] = max(inside)
            entered.release()
            # waits as the Engine's writes do on the loop: the loop awaits for it
            greenlet.getcurrent().parent.switch(release.wait())
            inside[0] -= 1
            return "done"

        tasks = [asyncio.ensure_future(ctx.write(write)) for _ in range(6)]
        for _ in range(2):
            await entered.acquire()
        await asyncio.sleep(0.2)  # room for a third to get in, were it let
        assert inside == [2, 2]
        release.set()
        return await asyncio.gather(*tasks)

    assert asyncio.run(main()) == ["done"] * 6
    assert inside == [0, 2]


def test_the_apps_dependency_overrides_reach_its_routes(api: Api) -> None:
    """A host (or a test) replacing the caller through ``app.dependency_overrides`` gets
    its replacement on every route, fires included, though the routes sit directly in
    the app's router."""
    from sangkien import Actor

    app = api.client.app
    ctx = app.state.sangkien  # type: ignore[attr-defined]
    chair = Actor("pham.van.duc", ["committee_chair", "unit_head"], COMMUNE)
    app.dependency_overrides[ctx.actor] = lambda: chair  # type: ignore[attr-defined]
    try:
        # no credentials at all: only the override can let these through
        listed = api.client.get("/v1/workflows")
        assert listed.status_code == 200, listed.text
        iid = api.initiative()
        read = api.client.get(f"/v1/instances/{iid}")
        assert read.status_code == 200, read.text
        fired = api.client.post(f"/v1/instances/{iid}/fire", json={"trigger": "nope"})
        assert fired.status_code == 403, fired.text  # refused to the chair, not a 401
        assert "'nope'" in fired.json()["detail"]
    finally:
        app.dependency_overrides.clear()  # type: ignore[attr-defined]
    assert api.client.get("/v1/workflows").status_code == 401
