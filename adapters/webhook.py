"""WebhookAdapter: messages as signed JSON POSTs (Standard Webhooks) through httpx.

Every request carries the three Standard Webhooks headers::

    webhook-id: <message id, stable across retries: dedupe on it>
    webhook-timestamp: <unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">

The HMAC key is the base64-decoded part of the secret after ``whsec_``. Receivers check a
request with :func:`verify` (or any Standard Webhooks library).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from sangkien.clock import Clock, SystemClock
from sangkien.notifications import OutgoingMessage, PermanentFailure, TemporaryFailure

if TYPE_CHECKING:
    from pydantic import SecretStr

    from sangkien.config.settings import Settings

__all__ = ["WebhookAdapter", "generate_secret", "sign", "verify"]

SECRET_PREFIX = "whsec_"  # noqa: S105 (a format prefix, not a secret)
_TEMPORARY_STATUSES = frozenset({408, 429})


# --- signatures


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "a webhook secret is 'whsec_' followed by base64; make one with "
            "sangkien.adapters.webhook.generate_secret()"
        ) from None
    if not key:
        raise ValueError("the webhook secret is empty; make one with generate_secret()")
    return key


def generate_secret() -> str:
    """Return a new random signing secret: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def sign(secret: str, msg_id: str, timestamp: int, body: str | bytes) -> str:
    """Return the ``webhook-signature`` value (``v1,<base64>``) for one request."""
    if isinstance(body, str):
        body = body.encode("utf-8")
    signed = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(
    secret: str,
    headers: Mapping[str, str] | Any,
    body: str | bytes,
    tolerance: int = 300,
    *,
    now: float | None = None,
) -> bool:
    """Return whether *headers* carry a valid signature of *body* made with *secret*.

    *headers* is any mapping with an ``items()`` method (a dict, ``httpx.Headers``, the
    ``headers`` of ``http.server``); names are matched case-insensitively. The timestamp
    must lie within *tolerance* seconds of *now* (default: the current time), which stops
    replays. The signature header may hold several space-separated signatures (during a
    secret rotation); one valid ``v1`` signature is enough. Comparison is constant-time.
    """
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    msg_id = lowered.get("webhook-id")
    stamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        return False
    try:
        timestamp = int(stamp)
    except ValueError:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = sign(secret, msg_id, timestamp, body).encode("ascii")
    found = False
    for candidate in signatures.split():
        if candidate.startswith("v1,"):
            found |= hmac.compare_digest(expected, candidate.encode("ascii", "replace"))
    return found


# --- host allowlist


def _normal_host(host: str) -> str:
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host.isascii():
        with contextlib.suppress(UnicodeError):
            host = host.encode("idna").decode("ascii")
    return host


def _host_allowed(host: str, allowed: frozenset[str]) -> bool:
    host = _normal_host(host)
    if host in allowed:
        return True
    # "*.example.vn" allows every subdomain of example.vn (not example.vn itself)
    return any(entry.startswith("*.") and host.endswith(entry[1:]) for entry in allowed)


class WebhookAdapter:
    """POST each message as signed JSON to the URL in its ``recipient``.

    An ``event`` message sends its ``payload``; a ``notification`` sends
    ``{"id", "subject", "body", "recipient", "instance_id"}``. Only ``http``/``https`` URLs
    whose host is in ``allowed_hosts`` are contacted (``"*.example.vn"`` allows the
    subdomains of example.vn); redirects are not followed.

    ``url_secrets`` maps a URL to its own signing secret (a subscriber's ``secret``); other URLs
    are signed with ``secret``.

    2xx is delivered; 408, 429, 5xx, network errors and timeouts are temporary; any other
    status (redirects, 4xx) and a URL that is not allowed are permanent.
    """

    name = "webhook"

    def __init__(
        self,
        secret: str | SecretStr,
        *,
        allowed_hosts: Iterable[str] = (),
        timeout: float = 10.0,
        url_secrets: Mapping[str, str | SecretStr] | None = None,
        client: httpx.Client | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._secret = _reveal(secret)
        _key(self._secret)  # fail now, not at the first delivery
        self._secrets = {url: _reveal(s) for url, s in (url_secrets or {}).items()}
        for value in self._secrets.values():
            _key(value)
        self.allowed_hosts = frozenset(_normal_host(h) for h in allowed_hosts if h.strip())
        if timeout <= 0:
            raise ValueError(f"webhook timeout must be positive, not {timeout!r}")
        self.timeout = timeout
        self._client = client
        self._own_client = client is None
        self._client_lock = threading.Lock()
        self._clock: Clock = clock or SystemClock()

    @classmethod
    def from_settings(cls, settings: Settings) -> WebhookAdapter:
        """Build from ``SANGKIEN_WEBHOOK_*``; every subscriber URL must pass the allowlist."""
        if settings.webhook_secret is None:
            raise ValueError(
                "SANGKIEN_WEBHOOK_SECRET is not set; the webhook channel signs every request "
                "(make a secret with: python -c 'from sangkien.adapters.webhook import "
                "generate_secret; print(generate_secret())')"
            )
        allowed = [h for h in settings.webhook_allowed_hosts.split(",") if h.strip()]
        adapter = cls(
            settings.webhook_secret,
            allowed_hosts=allowed,
            timeout=settings.webhook_timeout,
            # a subscriber may carry its own secret (when Settings.Subscriber has one)
            url_secrets={
                s.url: own
                for s in settings.subscribers
                if (own := getattr(s, "secret", None)) is not None
            },
        )
        for subscriber in settings.subscribers:
            problem = adapter.check_url(subscriber.url)
            if problem:
                raise ValueError(f"subscriber {subscriber.url!r}: {problem}")
        return adapter

    def __repr__(self) -> str:
        return (
            f"WebhookAdapter(secret='***', allowed_hosts={sorted(self.allowed_hosts)!r}, "
            f"timeout={self.timeout!r})"
        )

    def close(self) -> None:
        """Close the HTTP connection pool (if this adapter made it)."""
        with self._client_lock:
            if self._client is not None and self._own_client:
                self._client.close()
                self._client = None

    def _http(self) -> httpx.Client:
        with self._client_lock:
            if self._client is None:
                self._client = httpx.Client()
            return self._client

    def __enter__(self) -> WebhookAdapter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- building

    def check_url(self, url: str) -> str | None:
        """Return why *url* may not be contacted, or None when it may."""
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            return f"{url!r} is not a valid URL ({exc})"
        if parsed.scheme not in ("http", "https"):
            return f"scheme {parsed.scheme or '(none)'!r} is not allowed; use http or https"
        if not parsed.host:
            return f"{url!r} has no host"
        if not _host_allowed(parsed.host, self.allowed_hosts):
            return f"host {parsed.host} is not in SANGKIEN_WEBHOOK_ALLOWED_HOSTS"
        return None

    def body(self, message: OutgoingMessage) -> bytes:
        """Return the JSON body sent for *message* (UTF-8, compact)."""
        data: Mapping[str, Any]
        if message.kind == "event":
            data = message.payload
        else:
            data = {
                "id": message.id,
                "subject": message.subject,
                "body": message.body,
                "recipient": message.recipient,
                "instance_id": message.instance_id,
            }
        try:
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise PermanentFailure(
                f"message {message.id!r}: the payload cannot be sent as JSON: {exc}"
            ) from exc
        return text.encode("utf-8")

    def headers(self, message: OutgoingMessage, body: bytes) -> dict[str, str]:
        """Return the request headers, signature included, for *message* and *body*."""
        timestamp = int(self._clock.now().timestamp())
        secret = self._secrets.get(message.recipient.strip(), self._secret)
        return {
            "content-type": "application/json",
            "user-agent": "sangkien-webhook",
            "webhook-id": message.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message.id, timestamp, body),
        }

    # --- sending

    def send(self, message: OutgoingMessage) -> None:
        """Deliver *message* or raise TemporaryFailure / PermanentFailure."""
        url = message.recipient.strip()
        problem = self.check_url(url)
        if problem:
            raise PermanentFailure(f"message {message.id!r}: {problem}")
        body = self.body(message)
        headers = self.headers(message, body)
        try:
            response = self._http().post(
                url,
                content=body,
                headers=headers,
                timeout=self.timeout,
                follow_redirects=False,
            )
        except httpx.TimeoutException as exc:
            raise TemporaryFailure(
                f"message {message.id!r}: POST {url} timed out after {self.timeout}s"
            ) from exc
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            raise PermanentFailure(f"message {message.id!r}: POST {url}: {exc}") from exc
        except httpx.HTTPError as exc:
            raise TemporaryFailure(
                f"message {message.id!r}: POST {url} failed: {type(exc).__name__}: {exc}"
            ) from exc
        _classify(response, message.id, url)


def _classify(response: httpx.Response, msg_id: str, url: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    text = f"message {msg_id!r}: POST {url} answered {status} {response.reason_phrase}".rstrip()
    if status in _TEMPORARY_STATUSES or status >= 500:
        retry_after = response.headers.get("retry-after")
        if retry_after:
            text += f" (Retry-After: {retry_after})"
        raise TemporaryFailure(text)
    if 300 <= status < 400:
        location = response.headers.get("location", "")
        raise PermanentFailure(
            f"{text}; redirects are not followed, update the URL"
            + (f" to {location}" if location else "")
        )
    raise PermanentFailure(text)


def _reveal(secret: str | SecretStr) -> str:
    return secret if isinstance(secret, str) else secret.get_secret_value()
