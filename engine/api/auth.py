"""Who is calling: bearer JWTs (HS256 or JWKS-verified RS256/ES256) and static API keys.

A token carries ``sub`` (the actor id), ``roles`` (a list) and ``unit`` (one unit) or
``units`` (several; the ``X-Sangkien-Unit`` header picks one, default the first). An API key
is looked up by its SHA-256 digest in the keys file and stands for a fixed actor.

A token that verified is remembered (a bounded map keyed by the token itself) so that the
next request carrying it skips the signature check; its ``exp``, ``nbf`` and ``iat`` are
still checked on every request, and it is checked in full again after
``VERIFIED_TOKEN_SECONDS`` (the lifetime of a fetched JWKS). Only valid tokens are kept.

Missing or bad credentials are a 401 with ``WWW-Authenticate``; a unit the caller does not
hold is a 403. What the actor may do is the engine's business (roles, units, guards).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import structlog
from fastapi import Request

from sangkien.api.problems import ApiError
from sangkien.api.settings import ApiSettings
from sangkien.model import Actor

__all__ = [
    "ApiKey",
    "Authenticator",
    "Principal",
    "WouldBlock",
    "hash_api_key",
    "load_api_keys",
]

log = structlog.get_logger("sangkien.api")

UNIT_HEADER = "X-Sangkien-Unit"
API_KEY_HEADER = "X-API-Key"
REALM = 'Bearer realm="sangkien"'

VERIFIED_TOKENS = 1024  # tokens remembered as verified (the oldest is dropped first)
VERIFIED_TOKEN_SECONDS = 300.0  # a remembered token is verified in full again after this


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A static API key entry: the key itself is never stored, only its SHA-256 hex digest."""

    name: str
    key_sha256: str
    roles: tuple[str, ...]
    units: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: the actor the engine sees, and how it authenticated."""

    actor: Actor
    method: str
    units: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Verified:
    """What a verified token says, and until when that verdict may be reused."""

    sub: str
    roles: tuple[str, ...]
    units: tuple[str, ...]
    exp: float
    not_before: float | None  # the later of nbf and iat, if the token has either
    recheck_at: float


class WouldBlock(Exception):
    """Verifying this token needs the identity provider's key set over the network."""


def hash_api_key(key: str) -> str:
    """Return the SHA-256 hex digest under which *key* is listed in the keys file."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _str_list(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise ValueError(f"{what} must be a string or a list of strings")


def load_api_keys(path: str | Path) -> list[ApiKey]:
    """Read the API keys file (YAML or JSON): a list, or ``{keys: [...]}``, of entries.

    Each entry is ``{name, key_sha256, roles, unit}`` (or ``units``); make a digest with
    ``python -c "import hashlib,sys; print(hashlib.sha256(sys.argv[1].encode()).hexdigest())" KEY``.
    """
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        from ruamel.yaml import YAML

        data = YAML(typ="safe", pure=True).load(text)
    if isinstance(data, Mapping):
        data = data.get("keys")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of API keys (or a mapping with 'keys')")
    out: list[ApiKey] = []
    for n, entry in enumerate(data, 1):
        if not isinstance(entry, Mapping):
            raise ValueError(f"{path}: entry {n} is not a mapping")
        name = entry.get("name")
        digest = str(entry.get("key_sha256", "")).strip().lower()
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}: entry {n} has no name")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{path}: key {name!r}: key_sha256 must be 64 hex digits")
        try:
            roles = _str_list(entry.get("roles"), "roles")
            units = _str_list(entry.get("units", entry.get("unit")), "unit")
        except ValueError as exc:
            raise ValueError(f"{path}: key {name!r}: {exc}") from None
        out.append(ApiKey(name, digest, roles, units))
    return out


def _unauthorized(detail: str, *, invalid: bool = True) -> ApiError:
    challenge = REALM
    if invalid:
        safe = detail.replace('"', "'")
        challenge += f', error="invalid_token", error_description="{safe}"'
    return ApiError(
        401,
        "unauthenticated",
        "Authentication required",
        detail,
        headers={"WWW-Authenticate": challenge},
    )


class Authenticator:
    """Checks the credentials of one request against the configured keys."""

    def __init__(
        self,
        settings: ApiSettings,
        *,
        max_verified: int = VERIFIED_TOKENS,
        verified_seconds: float = VERIFIED_TOKEN_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._max_verified = max_verified
        self._verified_seconds = verified_seconds
        self._clock = clock  # the clock PyJWT reads (seconds since the epoch)
        self._verified: dict[str, _Verified] = {}
        self._verified_lock = threading.Lock()
        self._secret = settings.jwt_secret.get_secret_value() if settings.jwt_secret else None
        self._jwks: jwt.PyJWKSet | None = None
        if settings.jwt_jwks_file is not None:
            raw = Path(settings.jwt_jwks_file).read_text(encoding="utf-8")
            self._jwks = jwt.PyJWKSet.from_json(raw)
        self._jwks_client = (
            jwt.PyJWKClient(settings.jwt_jwks_url, cache_keys=True, lifespan=300, timeout=10)
            if settings.jwt_jwks_url
            else None
        )
        keys = load_api_keys(settings.api_keys_file) if settings.api_keys_file else []
        self._api_keys = {k.key_sha256: k for k in keys}
        algorithms = set(settings.jwt_algorithms)
        if self._secret is None:
            algorithms = {a for a in algorithms if not a.startswith("HS")}
        if self._jwks is None and self._jwks_client is None:
            algorithms = {a for a in algorithms if a.startswith("HS")}
        self.algorithms = frozenset(algorithms)

    # -- entry point

    def authenticate(self, request: Request) -> Principal:
        """Return the caller, or raise a 401/403 :class:`ApiError`.

        May wait for the identity provider's key set (``jwt_jwks_url``): call it from a
        worker thread, or try :meth:`authenticate_nowait` first.
        """
        return self._authenticate(request, may_block=True)

    def authenticate_nowait(self, request: Request) -> Principal:
        """:meth:`authenticate` without network I/O (pure CPU: fit for the event loop).

        Raises :class:`WouldBlock` when the token can only be verified with a key that
        must first be fetched from ``jwt_jwks_url``.
        """
        return self._authenticate(request, may_block=False)

    def _authenticate(self, request: Request, *, may_block: bool) -> Principal:
        headers = request.headers
        header = headers.get("authorization")
        api_key = headers.get(API_KEY_HEADER)
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise _unauthorized("the Authorization header must be 'Bearer <token>'")
            roles, units, sub = self._claims(token.strip(), may_block=may_block)
            method = "jwt"
        elif api_key:
            found = self._api_keys.get(hash_api_key(api_key))
            if found is None:
                raise _unauthorized("unknown API key")
            sub, roles, units = found.name, found.roles, found.units
            method = "api_key"
        else:
            raise _unauthorized(
                "credentials required: send 'Authorization: Bearer <token>' or 'X-API-Key'",
                invalid=False,
            )
        unit = self._pick_unit(units, headers.get(UNIT_HEADER))
        return Principal(Actor(sub, roles, unit), method, units)

    # -- tokens

    def _claims(
        self, token: str, *, may_block: bool = True
    ) -> tuple[tuple[str, ...], tuple[str, ...], str]:
        known = self._verified.get(token)
        if known is not None:
            now = self._clock()
            leeway = self.settings.jwt_leeway
            if known.exp <= now - leeway:
                self._forget(token)
                raise _unauthorized("the token has expired")
            if now < known.recheck_at and (
                known.not_before is None or known.not_before <= now + leeway
            ):
                return known.roles, known.units, known.sub
            self._forget(token)  # verify it in full again: the verdict may have changed
        if not self.algorithms:
            raise _unauthorized("this server accepts no bearer tokens (none configured)")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _unauthorized("the bearer token is not a JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.upper() not in self.algorithms:
            allowed = ", ".join(sorted(self.algorithms))
            raise _unauthorized(f"token algorithm {alg!r} is not accepted (accepted: {allowed})")
        key = self._key_for(token, alg, header, may_block=may_block)
        s = self.settings
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=s.jwt_leeway,
                options={"require": ["sub", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthorized("the token has expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise _unauthorized(f"the token has no {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise _unauthorized("the token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise _unauthorized("the token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise _unauthorized("the token signature does not verify") from None
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"invalid token: {exc}") from None
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _unauthorized("the token's 'sub' claim must be a non-empty string")
        try:
            roles = _str_list(claims.get("roles"), "the 'roles' claim")
            units = _str_list(claims.get("units", claims.get("unit")), "the 'unit' claim")
        except ValueError as exc:
            raise _unauthorized(str(exc)) from None
        self._remember(token, _Verified(sub, roles, units, *self._times(claims)))
        return roles, units, sub

    def _times(self, claims: Mapping[str, Any]) -> tuple[float, float | None, float]:
        """exp, the later of nbf and iat (if any), and when to verify the token in full again.

        PyJWT has checked them (``exp`` is required) and read them as integers.
        """
        starts = [int(claims[c]) for c in ("nbf", "iat") if c in claims]
        return (
            int(claims["exp"]),
            max(starts) if starts else None,
            self._clock() + self._verified_seconds,
        )

    def _remember(self, token: str, verdict: _Verified) -> None:
        if self._max_verified <= 0:
            return
        with self._verified_lock:
            cache = self._verified
            cache.pop(token, None)
            while len(cache) >= self._max_verified:
                del cache[next(iter(cache))]  # the oldest
            cache[token] = verdict

    def _forget(self, token: str) -> None:
        with self._verified_lock:
            self._verified.pop(token, None)

    def _key_for(
        self, token: str, alg: str, header: Mapping[str, Any], *, may_block: bool = True
    ) -> Any:
        if alg.upper().startswith("HS"):
            return self._secret
        kid = header.get("kid")
        if self._jwks is not None:
            keys = list(self._jwks.keys)
            if kid is not None:
                keys = [k for k in keys if k.key_id == kid]
            elif len(keys) > 1:
                keys = [k for k in keys if k.algorithm_name in (None, alg)][:1]
            if keys:
                return keys[0]
            if self._jwks_client is None:
                raise _unauthorized(f"no key {kid!r} in the configured JWKS")
        assert self._jwks_client is not None
        if not may_block:
            raise WouldBlock
        try:
            return self._jwks_client.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientConnectionError as exc:
            log.error("api.jwks_unreachable", url=self.settings.jwt_jwks_url, error=str(exc))
            raise ApiError(
                503,
                "jwks-unavailable",
                "Key set unavailable",
                "the identity provider's key set cannot be fetched; retry later",
                headers={"Retry-After": "10"},
            ) from None
        except jwt.PyJWTError as exc:
            raise _unauthorized(f"no signing key for this token: {exc}") from None

    # -- units

    @staticmethod
    def _pick_unit(units: Iterable[str], chosen: str | None) -> str | None:
        units = tuple(units)
        if chosen:
            if chosen not in units:
                held = ", ".join(units) or "none"
                raise ApiError(
                    403,
                    "unit-not-held",
                    "Unit not held",
                    f"{UNIT_HEADER}: you do not act for unit {chosen!r} (your units: {held})",
                )
            return chosen
        return units[0] if units else None
