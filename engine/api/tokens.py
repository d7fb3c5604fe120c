"""Make bearer tokens (HS256) for trying the API and for tests.

Production tokens come from the host's identity provider (verified through a JWKS); these
are for a single office using a shared secret, for newcomers (the demo secret, accepted
only by a server on a loopback address that has no credentials configured) and for tests.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import jwt

__all__ = ["DEMO_SECRET", "make_token"]

# Public on purpose: it lets anyone try `sangkien serve` on their own machine. A server
# listening beyond loopback refuses to start without a real credential.
DEMO_SECRET = "sangkien-demo-secret-for-local-trials-only"  # noqa: S105


def make_token(
    sub: str,
    roles: Iterable[str] = (),
    unit: str | Iterable[str] | None = None,
    secret: str = DEMO_SECRET,
    ttl: float = 3600,
    *,
    audience: str | None = None,
    issuer: str | None = None,
    now: float | None = None,
    **claims: Any,
) -> str:
    """Return an HS256 JWT for *sub* with *roles* in *unit* (one id, or several), valid *ttl* s.

    Several units go into the ``units`` claim (the caller picks one per request with the
    ``X-Sangkien-Unit`` header); one unit into ``unit``.
    """
    issued = int(time.time() if now is None else now)
    payload: dict[str, Any] = {
        "sub": sub,
        "roles": sorted(set(roles)),
        "iat": issued,
        "exp": issued + int(ttl),
    }
    if isinstance(unit, str):
        payload["unit"] = unit
    elif unit is not None:
        payload["units"] = list(unit)
    if audience is not None:
        payload["aud"] = audience
    if issuer is not None:
        payload["iss"] = issuer
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")
