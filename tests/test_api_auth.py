"""Who may do what through the REST API, safe retries, conflicts and error shapes."""

from __future__ import annotations

import hashlib
import http.server
import json
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi.testclient import TestClient

from sangkien.api import ApiSettings, create_app, make_token, register_workflows
from sangkien.api.idempotency import fingerprint
from sangkien.bootstrap import engine_from_settings
from sangkien.clock import FrozenClock
from sangkien.config import Settings
from sangkien.runtime import Engine

SECRET = "test-secret-for-the-api-tests-0123456789"
COMMUNE = "xa-nghia-hanh"
OTHER = "xa-dinh-cuong"
PROVINCE = "tinh-quang-ngai"
API_KEY = "sk-portal-4f1c0a9e7b2d"

PEOPLE: dict[str, tuple[str, list[str], Any]] = {
    "officer": ("le.thi.hoa", ["emulation_officer"], COMMUNE),
    "chair": ("pham.van.duc", ["committee_chair", "unit_head"], COMMUNE),
    "secretary": ("tran.thi.mai", ["council_secretary"], COMMUNE),
    "author": ("nguyen.van.an", ["civil_servant"], COMMUNE),
    "other": ("tran.van.khac", ["civil_servant", "unit_head"], OTHER),
    "province": ("doan.thi.thu", ["emulation_officer"], [PROVINCE, "so-noi-vu"]),
    "admin": ("it.admin", ["admin"], PROVINCE),
}


def token(who: str, **claims: Any) -> str:
    sub, roles, unit = PEOPLE[who]
    return make_token(sub, roles, unit, SECRET, **claims)


def auth(who: str | None, **headers: str) -> dict[str, str]:
    if who is None:
        return dict(headers)
    return {"Authorization": f"Bearer {token(who)}", **headers}


# --------------------------------------------------------------------------- keys


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
STRANGER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwks() -> dict[str, Any]:
    rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(EC_KEY.public_key()))
    rsa_jwk.update(kid="rsa-1", alg="RS256", use="sig")
    ec_jwk.update(kid="ec-1", alg="ES256", use="sig")
    return {"keys": [rsa_jwk, ec_jwk]}


def signed(key: Any, alg: str, kid: str, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": "idp.user", "roles": ["civil_servant"], "unit": COMMUNE, "exp": now + 600}
    payload.update(claims)
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


# --------------------------------------------------------------------------- app


class Env:
    """A running app over SQLite, its engine, clock and a launched campaign."""

    def __init__(self, client: TestClient, engine: Engine, clock: FrozenClock, app: Any) -> None:
        self.client = client
        self.engine = engine
        self.clock = clock
        self.app = app
        self.campaign = ""

    def post(self, who: str | None, path: str, body: Any = None, **headers: str) -> Any:
        return self.client.post(path, json=body, headers=auth(who, **headers))

    def get(self, who: str | None, path: str, **headers: str) -> Any:
        return self.client.get(path, headers=auth(who, **headers))

    def initiative(self, who: str = "author") -> str:
        r = self.post(
            who,
            "/v1/instances",
            {"workflow": "initiative", "parent": self.campaign, "data": {"title": "Sáng kiến"}},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])


def build(tmp: Path, **api: Any) -> tuple[Any, Engine, FrozenClock]:
    clock = FrozenClock(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
    settings = Settings(database_url=f"sqlite:///{tmp / 'api.db'}")
    engine = engine_from_settings(settings, clock=clock)
    register_workflows(engine, settings.workflow_paths())
    keys = tmp / "keys.yaml"
    keys.write_text(
        "keys:\n"
        "  - name: portal\n"
        f"    key_sha256: {hashlib.sha256(API_KEY.encode()).hexdigest()}\n"
        "    roles: [emulation_officer]\n"
        f"    unit: {COMMUNE}\n",
        encoding="utf-8",
    )
    jwks_file = tmp / "jwks.json"
    jwks_file.write_text(json.dumps(jwks()), encoding="utf-8")
    options = {"jwt_secret": SECRET, "api_keys_file": keys, "jwt_jwks_file": jwks_file, **api}
    return create_app(engine=engine, api_settings=ApiSettings(**options)), engine, clock


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    app, engine, clock = build(tmp_path_factory.mktemp("auth"))
    with TestClient(app) as client:
        e = Env(client, engine, clock, app)
        r = e.post(
            "officer",
            "/v1/instances",
            {
                "workflow": "campaign",
                "data": {
                    "title": "Phong trào 2026",
                    "registration_deadline": "2026-04-30",
                    "submission_deadline": "2026-09-30",
                },
            },
        )
        e.campaign = r.json()["id"]
        r = e.post(
            "chair",
            f"/v1/instances/{e.campaign}/fire",
            {"trigger": "launch", "data": {"decision_number": "1/KH", "launched_on": "2026-03-02"}},
        )
        assert r.status_code == 200, r.text
        yield e
    engine.close()


# --------------------------------------------------------------------------- the matrix

CAMPAIGN_YAML = Settings().workflow_paths()[0] / "campaign.yaml"

MATRIX = [
    # (who, unit header, action, expected status)
    ("author", None, "read", 200),
    ("secretary", None, "read", 200),
    ("province", None, "read", 200),  # the province covers its communes
    ("province", "so-noi-vu", "read", 404),  # a department does not
    ("admin", None, "read", 200),
    ("other", None, "read", 404),  # another commune: the instance does not exist for it
    ("other", None, "history", 404),
    ("other", None, "triggers", 404),
    ("other", None, "deadlines", 404),
    (None, None, "read", 401),
    ("author", None, "register", 200),
    ("secretary", None, "register", 403),
    ("province", None, "register", 403),
    ("other", None, "register", 404),
    ("author", None, "start", 201),
    ("other", None, "start", 403),  # may not start in a unit it does not cover
    ("author", None, "publish", 403),
    ("chair", None, "publish", 403),
    ("admin", None, "publish", 201),
    ("chair", None, "outbox", 403),
    ("admin", None, "outbox", 200),
    ("chair", None, "retry", 403),
    ("admin", None, "retry", 200),
    ("chair", None, "extend", 200),
    ("secretary", None, "extend", 403),
    ("other", None, "extend", 404),
    ("province", "nowhere", "read", 403),  # a unit the token does not carry
]


def act(env: Env, who: str | None, unit: str | None, action: str) -> Any:
    headers = {"X-Sangkien-Unit": unit} if unit else {}
    iid = env.initiative()
    if action in ("read", "history", "triggers", "deadlines"):
        suffix = "" if action == "read" else f"/{action}"
        return env.get(who, f"/v1/instances/{iid}{suffix}", **headers)
    if action == "register":
        body = {"trigger": "register", "data": {"authors": ["A"]}}
        return env.post(who, f"/v1/instances/{iid}/fire", body, **headers)
    if action == "start":
        body = {
            "workflow": "initiative",
            "parent": env.campaign,
            "unit": COMMUNE,
            "data": {"title": "Khác"},
        }
        return env.post(who, "/v1/instances", body, **headers)
    if action == "publish":
        return env.client.post(
            "/v1/workflows",
            content=CAMPAIGN_YAML.read_text(encoding="utf-8"),
            headers=auth(who, **{"content-type": "text/yaml"}, **headers),
        )
    if action == "outbox":
        return env.get(who, "/v1/outbox", **headers)
    if action == "retry":
        return env.post(who, "/v1/outbox/retry", {"all_dead": True}, **headers)
    if action == "extend":
        body = {"reason": "Bão lũ", "by": "5 working days"}
        return env.post(who, f"/v1/instances/{env.campaign}/deadlines/extend", body, **headers)
    raise AssertionError(action)


@pytest.mark.parametrize(("who", "unit", "action", "expected"), MATRIX)
def test_authorization_matrix(
    env: Env, who: str | None, unit: str | None, action: str, expected: int
) -> None:
    """Each role × unit × action gets its status; another unit's instance is a 404."""
    r = act(env, who, unit, action)
    assert r.status_code == expected, r.text
    if expected >= 400:
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["status"] == expected
    if expected == 403 and action in ("register", "start", "extend"):
        assert r.json()["reasons"], r.text


# --------------------------------------------------------------------------- credentials


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        (None, "credentials required"),
        ("Basic dXNlcjpwYXNz", "Bearer <token>"),
        ("Bearer not-a-jwt", "not a JWT"),
        (
            f"Bearer {make_token('x', [], COMMUNE, 'another-secret-of-at-least-32-chars!')}",
            "signature",
        ),
        (f"Bearer {make_token('x', [], COMMUNE, SECRET, ttl=-3600)}", "expired"),
        (f"Bearer {jwt.encode({'sub': 'x', 'unit': COMMUNE}, SECRET, algorithm='HS256')}", "'exp'"),
        (f"Bearer {jwt.encode({'sub': 'x', 'exp': 2**40}, None, algorithm='none')}", "'none'"),
        (f"Bearer {jwt.encode({'sub': 'x', 'exp': 2**40, 'roles': {'a': 1}}, SECRET)}", "roles"),
        (f"Bearer {signed(STRANGER_KEY, 'RS256', 'rsa-1')}", "signature"),
        (f"Bearer {signed(STRANGER_KEY, 'RS256', 'unknown-kid')}", "no key"),
    ],
)
def test_bad_credentials_are_401(env: Env, header: str | None, detail: str) -> None:
    """Missing, malformed, forged, expired or unsigned credentials get a 401 challenge."""
    headers = {"Authorization": header} if header else {}
    r = env.client.get("/v1/workflows", headers=headers)
    assert r.status_code == 401
    assert r.headers["www-authenticate"].startswith('Bearer realm="sangkien"')
    if header:
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
    body = r.json()
    assert body["type"] == "urn:sangkien:problem:unauthenticated"
    assert detail in body["detail"], body["detail"]


def test_jwks_file_tokens_rs256_and_es256(env: Env) -> None:
    """RS256 and ES256 tokens verify against the keys of the JWKS file."""
    for key, alg, kid in ((RSA_KEY, "RS256", "rsa-1"), (EC_KEY, "ES256", "ec-1")):
        r = env.client.get(
            f"/v1/instances/{env.campaign}",
            headers={"Authorization": f"Bearer {signed(key, alg, kid)}"},
        )
        assert r.status_code == 200, (alg, r.text)


def test_jwks_url_tokens(tmp_path: Path) -> None:
    """Tokens verify against a JWKS fetched (and cached) from the identity provider's URL."""
    body = json.dumps(jwks()).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        clock = FrozenClock(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
        engine = engine_from_settings(
            Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}"), clock=clock
        )
        app = create_app(
            engine=engine,
            api_settings=ApiSettings(jwt_jwks_url=url, jwt_audience="sangkien", jwt_issuer="idp"),
        )
        with TestClient(app) as client:
            good = signed(RSA_KEY, "RS256", "rsa-1", aud="sangkien", iss="idp")
            assert (
                client.get("/v1/workflows", headers={"Authorization": f"Bearer {good}"}).status_code
                == 200
            )
            other_aud = signed(RSA_KEY, "RS256", "rsa-1", aud="another", iss="idp")
            r = client.get("/v1/workflows", headers={"Authorization": f"Bearer {other_aud}"})
            assert r.status_code == 401 and "audience" in r.json()["detail"]
            hs = make_token("x", [], COMMUNE, SECRET)  # HS256 is off without a secret
            r = client.get("/v1/workflows", headers={"Authorization": f"Bearer {hs}"})
            assert r.status_code == 401 and "not accepted" in r.json()["detail"]
        engine.close()
    finally:
        server.shutdown()


def test_api_keys(env: Env) -> None:
    """A static API key acts as its named actor with its roles and unit; others are 401."""
    r = env.client.post(
        "/v1/instances",
        json={"workflow": "campaign", "data": {"title": "Từ cổng dịch vụ công"}},
        headers={"X-API-Key": API_KEY},
    )
    assert r.status_code == 201, r.text
    assert r.json()["created_by"] == "portal" and r.json()["unit"] == COMMUNE
    r = env.client.get("/v1/workflows", headers={"X-API-Key": "sk-wrong"})
    assert r.status_code == 401 and r.json()["detail"] == "unknown API key"


def test_units_claim_and_unit_header(env: Env) -> None:
    """With several units the header picks one; without it the first unit applies."""
    r = env.post("province", "/v1/instances", {"workflow": "campaign", "data": {"title": "Tỉnh"}})
    assert r.json()["unit"] == PROVINCE
    r = env.post(
        "province",
        "/v1/instances",
        {"workflow": "campaign", "data": {"title": "Sở"}},
        **{"X-Sangkien-Unit": "so-noi-vu"},
    )
    assert r.json()["unit"] == "so-noi-vu"


# --------------------------------------------------------------------------- idempotency


def test_start_and_fire_replays(env: Env) -> None:
    """A replayed start or fire returns the original response; another body is a 422."""
    body = {"workflow": "initiative", "parent": env.campaign, "data": {"title": "Một lần"}}
    first = env.post("author", "/v1/instances", body, **{"Idempotency-Key": "start-1"})
    again = env.post("author", "/v1/instances", body, **{"Idempotency-Key": "start-1"})
    assert first.status_code == again.status_code == 201
    assert first.json() == again.json()
    assert again.headers["idempotency-replayed"] == "true"
    changed = {**body, "data": {"title": "Khác"}}
    r = env.post("author", "/v1/instances", changed, **{"Idempotency-Key": "start-1"})
    assert r.status_code == 422
    assert r.json()["type"] == "urn:sangkien:problem:idempotency-key-reused"

    iid = first.json()["id"]
    fire = {"trigger": "register", "data": {"authors": ["A"]}}
    one = env.post("author", f"/v1/instances/{iid}/fire", fire, **{"Idempotency-Key": "reg-1"})
    two = env.post("author", f"/v1/instances/{iid}/fire", fire, **{"Idempotency-Key": "reg-1"})
    assert one.status_code == two.status_code == 200
    assert one.json() == two.json()
    assert len(env.get("author", f"/v1/instances/{iid}/history").json()) == 2


def test_api_level_replays(env: Env) -> None:
    """Publish, validate, extend and retry replay their first response once keyed."""
    yaml_text = CAMPAIGN_YAML.read_text(encoding="utf-8")
    key = {"Idempotency-Key": "pub-1", "content-type": "text/yaml"}
    a = env.client.post("/v1/workflows", content=yaml_text, headers=auth("admin", **key))
    b = env.client.post("/v1/workflows", content=yaml_text, headers=auth("admin", **key))
    assert a.status_code == b.status_code == 201
    assert a.json() == b.json() and b.headers["idempotency-replayed"] == "true"
    c = env.client.post(
        "/v1/workflows", content=yaml_text + "\n# changed\n", headers=auth("admin", **key)
    )
    assert c.status_code == 422

    v = {"Idempotency-Key": "val-1"}
    assert env.post("author", "/v1/workflows/validate", {"source": "x: 1"}, **v).json() == (
        env.post("author", "/v1/workflows/validate", {"source": "x: 1"}, **v).json()
    )

    iid = env.campaign
    body = {"reason": "Gia hạn do bão", "by": "3 working days"}
    before = env.get("chair", f"/v1/instances/{iid}/history").json()
    first = env.post(
        "chair", f"/v1/instances/{iid}/deadlines/extend", body, **{"Idempotency-Key": "ext-1"}
    )
    second = env.post(
        "chair", f"/v1/instances/{iid}/deadlines/extend", body, **{"Idempotency-Key": "ext-1"}
    )
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    after = env.get("chair", f"/v1/instances/{iid}/history").json()
    assert len(after) == len(before) + 1  # extended once
    other = env.post(
        "chair",
        f"/v1/instances/{iid}/deadlines/extend",
        {**body, "by": "4 working days"},
        **{"Idempotency-Key": "ext-1"},
    )
    assert other.status_code == 422

    r1 = env.post("admin", "/v1/outbox/retry", {"all_dead": True}, **{"Idempotency-Key": "rt-1"})
    r2 = env.post("admin", "/v1/outbox/retry", {"all_dead": True}, **{"Idempotency-Key": "rt-1"})
    assert r1.json() == r2.json() and r2.headers["idempotency-replayed"] == "true"


def test_key_in_use_and_bad_keys(env: Env) -> None:
    """A key still being processed is a 409; a key that is not visible ASCII is a 422."""
    store = env.app.state.sangkien.idempotency
    body = {"ids": [], "instance": None, "all_dead": True}
    store.claim("it.admin", "busy-1", fingerprint("POST", "/v1/outbox/retry", body))
    r = env.post("admin", "/v1/outbox/retry", {"all_dead": True}, **{"Idempotency-Key": "busy-1"})
    assert r.status_code == 409
    assert r.json()["type"] == "urn:sangkien:problem:idempotency-key-in-use"
    r = env.post(
        "admin", "/v1/outbox/retry", {"all_dead": True}, **{"Idempotency-Key": "has space"}
    )
    assert r.status_code == 422


# --------------------------------------------------------------------------- concurrency


def test_stale_expected_version_is_409(env: Env) -> None:
    """A fire against a version another writer has changed is a 409 with current_state."""
    iid = env.initiative()
    version = env.get("author", f"/v1/instances/{iid}").json()["version"]
    upd = {"trigger": "update", "data": {"plan": "A"}, "expected_version": version}
    assert env.post("author", f"/v1/instances/{iid}/fire", upd).status_code == 200
    reg = {"trigger": "register", "data": {"authors": ["A"]}, "expected_version": version}
    r = env.post("author", f"/v1/instances/{iid}/fire", reg)
    assert r.status_code == 409
    body = r.json()
    assert body["type"] == "urn:sangkien:problem:concurrent-change"
    assert body["current_state"] == "launched" and body["expected_version"] == version


def test_concurrent_fires_one_wins(env: Env) -> None:
    """Two fires racing on the same version: one applies, the other is a 409."""
    iid = env.initiative()
    version = env.get("author", f"/v1/instances/{iid}").json()["version"]
    barrier = threading.Barrier(2)
    results: list[int] = []

    def fire(plan: str) -> None:
        barrier.wait()
        body = {"trigger": "update", "data": {"plan": plan}, "expected_version": version}
        results.append(env.post("author", f"/v1/instances/{iid}/fire", body).status_code)

    threads = [threading.Thread(target=fire, args=(p,)) for p in ("A", "B")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200, 409]


# --------------------------------------------------------------------------- problems


def test_problem_shapes(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation, routing and unexpected errors are problem+json with a request id."""
    r = env.post(
        "author", "/v1/instances", {"workflow": 5, "surprise": 1}, **{"X-Request-ID": "req-42"}
    )
    assert r.status_code == 422 and r.headers["x-request-id"] == "req-42"
    body = r.json()
    assert body["type"] == "urn:sangkien:problem:invalid-request"
    assert body["request_id"] == "req-42" and body["instance"] == "/v1/instances"
    assert {tuple(e["loc"]) for e in body["errors"]} >= {("body", "workflow"), ("body", "surprise")}

    r = env.client.post(
        "/v1/instances",
        content=b"{not json",
        headers=auth("author", **{"content-type": "application/json"}),
    )
    assert r.status_code == 422 and r.headers["content-type"] == "application/problem+json"

    r = env.client.get("/v2/nothing", headers={"X-Request-ID": "bad id with spaces"})
    assert r.status_code == 404 and r.json()["type"] == "about:blank"
    assert r.json()["request_id"] != "bad id with spaces"
    r = env.client.delete("/v1/workflows", headers=auth("author"))
    assert r.status_code == 405 and r.headers["content-type"] == "application/problem+json"

    big = {"workflow": "campaign", "data": {"title": "x" * 2_000_000}}
    r = env.post("author", "/v1/instances", big)
    assert r.status_code == 413 and r.json()["type"] == "urn:sangkien:problem:too-large"
    r = env.client.post(
        "/v1/workflows/validate",
        content=b"<xml/>",
        headers=auth("author", **{"content-type": "application/xml"}),
    )
    assert r.status_code == 415

    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("secret internals /etc/passwd")

    monkeypatch.setattr(env.engine, "get", boom)
    r = env.get("author", f"/v1/instances/{env.campaign}")
    assert r.status_code == 500
    body = r.json()
    assert body["type"] == "urn:sangkien:problem:internal-error"
    assert "secret" not in r.text and "Traceback" not in r.text
    assert body["request_id"] == r.headers["x-request-id"]


def test_request_id_in_log_lines(env: Env) -> None:
    """The request id is bound for the engine's log lines and the one access line."""
    captured = structlog.testing.LogCapture()
    old = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, captured])
    try:
        iid = env.initiative()
        env.post(
            "author",
            f"/v1/instances/{iid}/fire",
            {"trigger": "register", "data": {"authors": ["A"]}},
            **{"X-Request-ID": "trace-7"},
        )
    finally:
        structlog.configure(**old)
    mine = [e for e in captured.entries if e.get("request_id") == "trace-7"]
    events = [e["event"] for e in mine]
    assert "transition" in events
    assert events.count("http.request") == 1
    access = next(e for e in mine if e["event"] == "http.request")
    assert access["status"] == 200 and access["actor"] == "nguyen.van.an"
    assert access["route"] == "/v1/instances/{instance_id}/fire"


def test_readyz_503_when_the_database_is_gone(tmp_path: Path) -> None:
    """/readyz answers 503 once the database cannot be reached; /healthz stays 200."""
    folder = tmp_path / "db"
    folder.mkdir()
    app, engine, _clock = build(folder)
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        engine._db.dispose()
        shutil.rmtree(folder)
        r = client.get("/readyz")
        assert r.status_code == 503
        assert r.json()["type"] == "urn:sangkien:problem:not-ready"
        assert r.headers["retry-after"] == "5"
        assert client.get("/healthz").status_code == 200
    engine.close()
