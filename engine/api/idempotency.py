"""Safe retries for the API's own POSTs (publish, validate, extend, outbox retry).

Starting an instance and firing a trigger pass the ``Idempotency-Key`` to the engine, which
records it in the same transaction as the change. The other POSTs use this store: a small
table, ``sk_api_idempotency``, shared by every API process (an in-memory store would let a
retry that lands on another process run twice).

A request first *claims* its key in a short transaction, runs, then stores its response. A
replay of a finished request gets the stored response back; a replay while the first is still
running gets a 409; the same key with a different request is refused (422). A failed
request (4xx/5xx) gives its claim back, so the caller may retry with the same key. A claim
left by a crashed process expires after ``lease`` seconds.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa

from sangkien.api.problems import ApiError
from sangkien.clock import Clock
from sangkien.errors import IdempotencyKeyReused
from sangkien.store import schema as _schema

__all__ = ["IDEMPOTENCY_HEADER", "IdempotencyStore", "StoredResponse", "fingerprint", "table"]

IDEMPOTENCY_HEADER = "Idempotency-Key"
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")

# the table belongs to the store's schema (migration 0004); kept importable here
table = _schema.api_idempotency


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """The response a finished request gave, returned again to its replays."""

    status_code: int
    body: Any


def fingerprint(method: str, path: str, body: Any) -> str:
    """A digest of the request a key was used for (method, path and body)."""
    canonical = json.dumps(
        {"method": method.upper(), "path": path, "body": body},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_key(key: str) -> str:
    """Return *key* if it is a usable Idempotency-Key, else raise a 422 problem."""
    if not _KEY.match(key):
        raise ApiError(
            422,
            "invalid-idempotency-key",
            "Invalid idempotency key",
            f"{IDEMPOTENCY_HEADER} must be 1 to 255 visible ASCII characters (a UUID is best)",
        )
    return key


class IdempotencyStore:
    """Claims, stores and replays the responses of keyed requests in the database."""

    def __init__(self, db: sa.Engine, clock: Clock, *, lease: float = 60.0) -> None:
        self.db = db
        self.clock = clock
        self.lease = timedelta(seconds=lease)
        self._ready = False
        self._lock = threading.Lock()

    def _ensure_table(self) -> None:
        if self._ready:
            return
        with self._lock:
            if not self._ready:
                # created by migration 0004; a database migrated by an older release gets it here
                _schema.metadata.create_all(self.db, tables=[table], checkfirst=True)
                self._ready = True

    def claim(self, actor_id: str, key: str, request_hash: str) -> StoredResponse | None:
        """Claim *key* for a new request, or return the stored response of a replay."""
        self._ensure_table()
        now = self.clock.now()
        c = table.c
        with self.db.begin() as conn:
            row = conn.execute(sa.select(table).where(c.actor_id == actor_id, c.key == key)).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            table.insert().values(
                                actor_id=actor_id,
                                key=key,
                                request_hash=request_hash,
                                status="running",
                                created_at=now,
                                lease_until=now + self.lease,
                            )
                        )
                except sa.exc.IntegrityError:
                    raise _in_use(key) from None
                return None
            if row.request_hash != request_hash:
                raise IdempotencyKeyReused(
                    f"idempotency key {key!r} was already used by {actor_id!r} for a different "
                    "request; use a new key for a new request"
                )
            if row.status == "done":
                return StoredResponse(int(row.status_code), row.body)
            if row.lease_until is not None and row.lease_until > now:
                raise _in_use(key)
            conn.execute(
                table.update()
                .where(c.actor_id == actor_id, c.key == key)
                .values(lease_until=now + self.lease)
            )
            return None

    def complete(self, actor_id: str, key: str, status_code: int, body: Any) -> None:
        """Store the response of a claimed request for its replays."""
        c = table.c
        with self.db.begin() as conn:
            conn.execute(
                table.update()
                .where(c.actor_id == actor_id, c.key == key)
                .values(status="done", status_code=status_code, body=body, lease_until=None)
            )

    def release(self, actor_id: str, key: str) -> None:
        """Give back the claim of a request that failed, so it may be retried."""
        c = table.c
        with self.db.begin() as conn:
            conn.execute(
                table.delete().where(c.actor_id == actor_id, c.key == key, c.status == "running")
            )


def _in_use(key: str) -> ApiError:
    return ApiError(
        409,
        "idempotency-key-in-use",
        "Request in progress",
        f"a request with idempotency key {key!r} is still being processed; retry shortly",
        headers={"Retry-After": "1"},
    )
