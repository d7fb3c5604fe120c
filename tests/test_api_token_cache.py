"""Verified bearer tokens are remembered, yet expiry, tampering and the bound still hold."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi.testclient import TestClient
from starlette.requests import Request

from sangkien.api import ApiError, ApiSettings, create_app, make_token, register_workflows
from sangkien.api.auth import Authenticator, WouldBlock
from sangkien.bootstrap import engine_from_settings
from sangkien.clock import FrozenClock
from sangkien.config import Settings

SECRET = "test-secret-for-the-api-tests-0123456789"
COMMUNE = "xa-nghia-hanh"
LEEWAY = 30.0


def request(token: str | None = None, **headers: str) -> Request:
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    if token is not None:
        raw.append((b"authorization", f"Bearer {token}".encode()))
    return Request({"type": "http", "method": "GET", "path": "/", "headers": raw})


class Clock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every token PyJWT verifies in full (signature and claims)."""
    seen: list[str] = []
    original: Callable[..., Any] = jwt.decode

    def counting(token: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(token)
        return original(token, *args, **kwargs)

    monkeypatch.setattr(jwt, "decode", counting)
    return seen


def authenticator(clock: Clock, **kw: Any) -> Authenticator:
    return Authenticator(ApiSettings(jwt_secret=SECRET, jwt_leeway=LEEWAY), clock=clock, **kw)


def rejected(auth: Authenticator, token: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        auth.authenticate(request(token))
    assert info.value.status == 401
    assert 'error="invalid_token"' in info.value.headers["WWW-Authenticate"]
    return info.value


def test_a_verified_token_is_not_verified_again(clock: Clock, decodes: list[str]) -> None:
    """The second request with a token skips the signature check and gets the same caller."""
    auth = authenticator(clock)
    token = make_token("le.thi.hoa", ["emulation_officer"], COMMUNE, SECRET)
    first = auth.authenticate(request(token))
    second = auth.authenticate_nowait(request(token))
    assert first == second
    assert first.actor.id == "le.thi.hoa" and first.actor.unit == COMMUNE
    assert decodes == [token]


def test_a_remembered_token_still_expires(clock: Clock, decodes: list[str]) -> None:
    """exp is checked on every request, with the configured leeway, and the token dropped."""
    auth = authenticator(clock)
    token = make_token("le.thi.hoa", ["emulation_officer"], COMMUNE, SECRET, ttl=60)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    auth.authenticate(request(token))
    decodes.clear()
    clock.now = exp + LEEWAY - 1  # past exp, still within the leeway
    auth.authenticate(request(token))
    clock.now = exp + LEEWAY
    assert rejected(auth, token).detail == "the token has expired"
    assert decodes == []  # refused by the remembered verdict itself
    assert token not in auth._verified


def test_the_unit_header_is_checked_on_every_request(clock: Clock) -> None:
    """A remembered token still acts only for its own units."""
    auth = authenticator(clock)
    token = make_token("doan.thi.thu", ["x"], ["tinh-quang-ngai", "so-noi-vu"], SECRET)
    assert auth.authenticate(request(token)).actor.unit == "tinh-quang-ngai"
    picked = auth.authenticate(request(token, **{"X-Sangkien-Unit": "so-noi-vu"}))
    assert picked.actor.unit == "so-noi-vu"
    with pytest.raises(ApiError) as info:
        auth.authenticate(request(token, **{"X-Sangkien-Unit": "nowhere"}))
    assert info.value.status == 403


def test_age_and_not_before_send_a_token_back_to_full_verification(
    clock: Clock, decodes: list[str]
) -> None:
    """Once the verdict is old, or before its nbf (a clock set back), PyJWT checks it again."""
    auth = authenticator(clock, verified_seconds=300)
    t0 = int(clock.now)
    clock.now = t0
    token = make_token("le.thi.hoa", [], COMMUNE, SECRET, nbf=t0)
    auth.authenticate(request(token))
    clock.now = t0 + 299
    auth.authenticate(request(token))
    assert decodes == [token]
    clock.now = t0 + 301
    auth.authenticate(request(token))
    assert decodes == [token, token]
    clock.now = t0 - LEEWAY - 1
    auth.authenticate(request(token))  # PyJWT reads the real clock: after nbf
    assert decodes == [token, token, token]


def _tampered(token: str, **claims: Any) -> str:
    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body.update(claims)
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).decode().rstrip("=")
    return f"{header}.{forged}.{signature}"


def test_a_tampered_token_is_rejected_while_the_original_is_remembered(clock: Clock) -> None:
    """Only the exact token that verified is remembered: any other bytes are verified."""
    auth = authenticator(clock)
    token = make_token("nguyen.van.an", ["civil_servant"], COMMUNE, SECRET)
    auth.authenticate(request(token))
    forged = _tampered(token, roles=["admin"])
    assert "signature" in rejected(auth, forged).detail
    last = token[-1]
    resigned = token[:-1] + ("A" if last != "A" else "B")
    rejected(auth, resigned)
    assert list(auth._verified) == [token]
    assert auth.authenticate(request(token)).actor.roles == frozenset({"civil_servant"})


def test_invalid_tokens_are_not_remembered(clock: Clock) -> None:
    """Expired, forged and wrongly signed tokens leave nothing behind."""
    auth = authenticator(clock)
    for token in (
        make_token("x", [], COMMUNE, SECRET, ttl=-3600),
        make_token("x", [], COMMUNE, "another-secret-of-at-least-32-chars!"),
        jwt.encode({"sub": "x", "unit": COMMUNE}, SECRET, algorithm="HS256"),
    ):
        rejected(auth, token)
    assert auth._verified == {}


def test_the_cache_is_bounded(clock: Clock, decodes: list[str]) -> None:
    """Beyond max_verified tokens the oldest is dropped; a dropped token verifies again."""
    auth = authenticator(clock, max_verified=4)
    tokens = [make_token(f"user.{n}", [], COMMUNE, SECRET) for n in range(20)]
    for token in tokens:
        auth.authenticate(request(token))
        assert len(auth._verified) <= 4
    assert list(auth._verified) == tokens[-4:]
    decodes.clear()
    assert auth.authenticate(request(tokens[0])).actor.id == "user.0"
    assert decodes == [tokens[0]]
    assert len(auth._verified) == 4


def test_no_cache_when_disabled(clock: Clock, decodes: list[str]) -> None:
    """max_verified=0 verifies every request in full."""
    auth = authenticator(clock, max_verified=0)
    token = make_token("x", [], COMMUNE, SECRET)
    auth.authenticate(request(token))
    auth.authenticate(request(token))
    assert decodes == [token, token] and auth._verified == {}


def _segment(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


def test_a_key_from_the_identity_provider_is_never_fetched_on_the_event_loop() -> None:
    """authenticate_nowait gives up (WouldBlock) where the JWKS would have to be fetched."""
    auth = Authenticator(ApiSettings(jwt_jwks_url="http://127.0.0.1:9/jwks.json"))
    header = _segment({"alg": "RS256", "typ": "JWT", "kid": "k1"})
    token = f"{header}.{_segment({'sub': 'x', 'exp': int(time.time()) + 60})}.c2ln"
    with pytest.raises(WouldBlock):
        auth.authenticate_nowait(request(token))


# --------------------------------------------------------------------------- over HTTP


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    clock = FrozenClock(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'api.db'}")
    engine = engine_from_settings(settings, clock=clock)
    register_workflows(engine, settings.workflow_paths())
    app = create_app(engine=engine, api_settings=ApiSettings(jwt_secret=SECRET))
    with TestClient(app) as c:
        yield c
    engine.close()


def test_an_expired_remembered_token_is_a_401_problem(client: TestClient) -> None:
    """Over HTTP, a token that expires after it was remembered is refused like any other."""
    auth = client.app.state.sangkien.auth  # type: ignore[attr-defined]
    clock = Clock()
    auth._clock = clock
    tokens = [make_token(who, ["emulation_officer"], COMMUNE, SECRET, ttl=60) for who in "ab"]
    fire, read = ({"Authorization": f"Bearer {t}"} for t in tokens)
    body = {"workflow": "campaign", "data": {"title": "Phong trào"}}
    r = client.post("/v1/instances", json=body, headers=fire)
    assert r.status_code == 201, r.text
    iid = r.json()["id"]
    assert client.get(f"/v1/instances/{iid}", headers=read).status_code == 200
    assert all(t in auth._verified for t in tokens)
    clock.now += 60 + LEEWAY
    for r in (
        client.post(f"/v1/instances/{iid}/fire", json={"trigger": "update"}, headers=fire),
        client.get(f"/v1/instances/{iid}", headers=read),
    ):
        assert r.status_code == 401
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"] == "the token has expired"
        assert 'error="invalid_token"' in r.headers["www-authenticate"]
