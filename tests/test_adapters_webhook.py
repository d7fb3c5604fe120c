"""WebhookAdapter against a real local HTTP server, and Standard Webhooks signatures."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from sangkien.adapters.webhook import WebhookAdapter, generate_secret, sign, verify
from sangkien.clock import FrozenClock
from sangkien.config.settings import Settings
from sangkien.notifications import OutgoingMessage, PermanentFailure, TemporaryFailure

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SUBJECT = "Thông báo: sáng kiến “Cải tiến quy trình” đã được công nhận"
BODY = "Kính gửi ông Nguyễn Văn Ấn,\nHội đồng đã công nhận sáng kiến của ông. Ỷ ữ ặ đ Đ."


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    signature_ok: bool


@dataclass
class Receiver:
    """A webhook receiver on 127.0.0.1 that records requests and checks their signatures."""

    url: str
    secret: str = SECRET
    status: int = 200
    delay: float = 0.0
    extra_headers: dict[str, str] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """Run a ThreadingHTTPServer answering every POST with ``receiver.status``."""
    state = Receiver(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", "0"))
            body = self.rfile.read(length)
            state.requests.append(
                Request(
                    self.path,
                    dict(self.headers.items()),
                    body,
                    verify(state.secret, self.headers, body),
                )
            )
            if state.delay:
                time.sleep(state.delay)
            self.send_response(state.status)
            for name, value in state.extra_headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/sangkien"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _message(url: str, **overrides: Any) -> OutgoingMessage:
    fields: dict[str, Any] = {
        "id": "msg_01JABCDEF",
        "kind": "notification",
        "channel": "webhook",
        "recipient": url,
        "recipient_name": "Nguyễn Văn Ấn",
        "subject": SUBJECT,
        "body": BODY,
        "instance_id": "inst-42",
    }
    fields.update(overrides)
    return OutgoingMessage(**fields)


@pytest.fixture
def adapter() -> Iterator[WebhookAdapter]:
    """A WebhookAdapter allowed to reach 127.0.0.1, with a short timeout."""
    with WebhookAdapter(SECRET, allowed_hosts=["127.0.0.1"], timeout=2.0) as made:
        yield made


# --- delivery


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_delivers_a_signed_notification(
    receiver: Receiver, adapter: WebhookAdapter, status: int
) -> None:
    """A notification is POSTed as JSON with a valid Standard Webhooks signature; 2xx is success."""
    receiver.status = status
    adapter.send(_message(receiver.url))
    (req,) = receiver.requests
    assert req.path == "/hooks/sangkien"
    assert req.signature_ok
    headers = {k.lower(): v for k, v in req.headers.items()}
    assert headers["content-type"] == "application/json"
    assert headers["webhook-id"] == "msg_01JABCDEF"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 60
    assert headers["webhook-signature"].startswith("v1,")
    assert json.loads(req.body.decode("utf-8")) == {
        "id": "msg_01JABCDEF",
        "subject": SUBJECT,
        "body": BODY,
        "recipient": receiver.url,
        "instance_id": "inst-42",
    }


def test_event_sends_its_payload(receiver: Receiver, adapter: WebhookAdapter) -> None:
    """An event message sends exactly its payload as the JSON body."""
    payload = {
        "type": "TransitionApplied",
        "version": 1,
        "instance_id": "inst-42",
        "to": "được_công_nhận",
        "note": "Đã duyệt",
    }
    adapter.send(_message(receiver.url, kind="event", subject="", body="", payload=payload))
    (req,) = receiver.requests
    assert req.signature_ok
    assert json.loads(req.body) == payload


def test_timestamp_comes_from_the_clock(receiver: Receiver) -> None:
    """webhook-timestamp is the injected clock's unix time; verify() honours its tolerance."""
    clock = FrozenClock(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    with WebhookAdapter(SECRET, allowed_hosts=["127.0.0.1"], clock=clock) as hook:
        hook.send(_message(receiver.url))
    (req,) = receiver.requests
    stamp = int(clock.now().timestamp())
    assert req.headers["webhook-timestamp"] == str(stamp)
    assert not req.signature_ok  # the receiver's real clock sees a 2026 timestamp as far off
    assert verify(SECRET, req.headers, req.body, now=stamp + 299)
    assert not verify(SECRET, req.headers, req.body, now=stamp + 301)


def test_same_id_twice_is_sent_twice(receiver: Receiver, adapter: WebhookAdapter) -> None:
    """A retried message is POSTed again with the same webhook-id so the receiver can dedupe."""
    adapter.send(_message(receiver.url))
    adapter.send(_message(receiver.url, attempt=2))
    assert [r.headers["webhook-id"] for r in receiver.requests] == ["msg_01JABCDEF"] * 2


def test_subscriber_secret_signs_its_url(receiver: Receiver) -> None:
    """A URL with its own secret (a subscriber's) is signed with it, not the shared one."""
    own = generate_secret()
    receiver.secret = own
    with WebhookAdapter(
        SECRET, allowed_hosts=["127.0.0.1"], url_secrets={receiver.url: own}
    ) as hook:
        hook.send(_message(receiver.url))
    assert receiver.requests[0].signature_ok
    assert not verify(SECRET, receiver.requests[0].headers, receiver.requests[0].body)


# --- failure classes


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_4xx_is_permanent(receiver: Receiver, adapter: WebhookAdapter, status: int) -> None:
    """A 4xx answer other than 408/429 is a PermanentFailure naming the status."""
    receiver.status = status
    with pytest.raises(PermanentFailure, match=f"answered {status}"):
        adapter.send(_message(receiver.url))


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_408_429_5xx_are_temporary(
    receiver: Receiver, adapter: WebhookAdapter, status: int
) -> None:
    """408, 429 and 5xx answers are TemporaryFailures naming the status."""
    receiver.status = status
    with pytest.raises(TemporaryFailure, match=f"answered {status}"):
        adapter.send(_message(receiver.url))


def test_retry_after_is_reported(receiver: Receiver, adapter: WebhookAdapter) -> None:
    """A 429 with Retry-After says so in the failure."""
    receiver.status = 429
    receiver.extra_headers = {"Retry-After": "120"}
    with pytest.raises(TemporaryFailure, match="Retry-After: 120"):
        adapter.send(_message(receiver.url))


def test_redirect_is_not_followed(receiver: Receiver, adapter: WebhookAdapter) -> None:
    """A 3xx is not followed (the signed body never goes elsewhere): PermanentFailure."""
    receiver.status = 301
    receiver.extra_headers = {"Location": "http://127.0.0.1:1/elsewhere"}
    with pytest.raises(PermanentFailure, match="redirects are not followed"):
        adapter.send(_message(receiver.url))
    assert len(receiver.requests) == 1


def test_closed_port_is_temporary(adapter: WebhookAdapter) -> None:
    """Nothing listening (connection refused) is a TemporaryFailure."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TemporaryFailure, match="ConnectError"):
        adapter.send(_message(f"http://127.0.0.1:{port}/hook"))


def test_slow_receiver_times_out_temporarily(receiver: Receiver) -> None:
    """A receiver slower than the timeout is a TemporaryFailure saying it timed out."""
    receiver.delay = 1.0
    with (
        WebhookAdapter(SECRET, allowed_hosts=["127.0.0.1"], timeout=0.2) as hook,
        pytest.raises(TemporaryFailure, match="timed out"),
    ):
        hook.send(_message(receiver.url))


def test_host_not_allowed_is_permanent(receiver: Receiver) -> None:
    """A URL whose host is not allowlisted fails permanently and is never contacted."""
    url = receiver.url.replace("127.0.0.1", "localhost")
    with (
        WebhookAdapter(SECRET, allowed_hosts=["127.0.0.1"]) as hook,
        pytest.raises(
            PermanentFailure, match="host localhost is not in SANGKIEN_WEBHOOK_ALLOWED_HOSTS"
        ),
    ):
        hook.send(_message(url))
    assert receiver.requests == []


def test_empty_allowlist_allows_nothing(receiver: Receiver) -> None:
    """With no allowed hosts configured, every URL is refused."""
    with WebhookAdapter(SECRET) as hook, pytest.raises(PermanentFailure, match="ALLOWED_HOSTS"):
        hook.send(_message(receiver.url))


@pytest.mark.parametrize(
    "url", ["ftp://127.0.0.1/x", "file:///etc/passwd", "127.0.0.1/hook", "", "http:///nohost"]
)
def test_only_http_urls_are_allowed(adapter: WebhookAdapter, url: str) -> None:
    """Schemes other than http/https, and URLs without a host, are PermanentFailures."""
    with pytest.raises(PermanentFailure):
        adapter.send(_message(url))


def test_wildcard_allowlist_matches_subdomains() -> None:
    """'*.example.vn' allows hooks.example.vn but neither example.vn nor evil-example.vn."""
    hook = WebhookAdapter(SECRET, allowed_hosts=["*.example.vn", "Portal.Gov.VN"])
    assert hook.check_url("https://hooks.example.vn/x") is None
    assert hook.check_url("https://a.b.example.vn/x") is None
    assert hook.check_url("https://portal.gov.vn/x") is None
    assert hook.check_url("https://example.vn/x") is not None
    assert hook.check_url("https://evil-example.vn/x") is not None
    assert hook.check_url("https://example.vn.evil.com/x") is not None


def test_payload_that_is_not_json_is_permanent(adapter: WebhookAdapter, receiver: Receiver) -> None:
    """An event payload that cannot be serialised is a PermanentFailure, not a crash."""
    message = _message(receiver.url, kind="event", payload={"when": object()})
    with pytest.raises(PermanentFailure, match="JSON"):
        adapter.send(message)


# --- settings


def test_from_settings(receiver: Receiver) -> None:
    """from_settings reads secret, allowed hosts and timeout, and keeps the secret out of repr."""
    settings = Settings(
        webhook_secret=SECRET,
        webhook_allowed_hosts=" 127.0.0.1 , hooks.example.vn ",
        webhook_timeout=4.0,
    )
    with WebhookAdapter.from_settings(settings) as hook:
        assert hook.allowed_hosts == {"127.0.0.1", "hooks.example.vn"}
        assert hook.timeout == 4.0
        assert "MfKQ9r8" not in repr(hook)
        hook.send(_message(receiver.url))
    assert receiver.requests[0].signature_ok


def test_from_settings_needs_a_secret() -> None:
    """Without SANGKIEN_WEBHOOK_SECRET the adapter refuses to start, saying how to make one."""
    with pytest.raises(ValueError, match=r"SANGKIEN_WEBHOOK_SECRET.*generate_secret"):
        WebhookAdapter.from_settings(Settings(webhook_allowed_hosts="127.0.0.1"))


def test_from_settings_checks_subscribers_against_the_allowlist() -> None:
    """A subscriber URL outside the allowlist fails at start-up, not at the first event."""
    settings = Settings(
        webhook_secret=SECRET,
        webhook_allowed_hosts="hooks.example.vn",
        subscribers='[{"url": "https://other.example.com/hook"}]',  # type: ignore[arg-type]
    )
    with pytest.raises(ValueError, match=r"other.example.com is not in SANGKIEN_WEBHOOK"):
        WebhookAdapter.from_settings(settings)


def test_malformed_secret_is_refused() -> None:
    """A secret that is not 'whsec_' + base64 is refused at construction."""
    with pytest.raises(ValueError, match="whsec_"):
        WebhookAdapter("whsec_not base64!!")


# --- signatures


def test_sign_matches_the_standard_webhooks_example() -> None:
    """sign() reproduces the signature published with the Standard Webhooks specification."""
    signature = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, '{"test": 2432232314}')
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_rejects_tampering() -> None:
    """verify() fails for a changed body, id or timestamp, a wrong secret or missing headers."""
    body = '{"a":"Đ"}'
    now = 1_700_000_000
    headers = {
        "Webhook-Id": "msg_1",
        "Webhook-Timestamp": str(now),
        "Webhook-Signature": sign(SECRET, "msg_1", now, body),
    }
    assert verify(SECRET, headers, body, now=now)
    assert verify(SECRET, headers, body.encode(), now=now)
    assert not verify(SECRET, headers, '{"a":"D"}', now=now)
    assert not verify(SECRET, {**headers, "Webhook-Id": "msg_2"}, body, now=now)
    assert not verify(SECRET, {**headers, "Webhook-Timestamp": str(now + 1)}, body, now=now)
    assert not verify(generate_secret(), headers, body, now=now)
    assert not verify(SECRET, {"Webhook-Id": "msg_1"}, body, now=now)
    assert not verify(SECRET, {**headers, "Webhook-Timestamp": "soon"}, body, now=now)
    assert not verify(SECRET, headers, body, now=now + 301)
    assert not verify(SECRET, headers, body, now=now - 301)


def test_verify_accepts_any_of_several_signatures() -> None:
    """During a secret rotation, one valid v1 signature among several is enough."""
    new = generate_secret()
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": f"v1,AAAA {sign(new, 'msg_1', 1700000000, 'x')} v2,zzz",
    }
    assert verify(new, headers, "x", now=1700000000)
    assert not verify(SECRET, headers, "x", now=1700000000)


def test_generate_secret_format() -> None:
    """generate_secret() returns 'whsec_' + base64 of 32 random bytes, different each time."""
    first, second = generate_secret(), generate_secret()
    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32


def test_the_testing_receiver_counts_signed_requests_and_refuses_others() -> None:
    """sangkien.testing.WebhookReceiver: a signed request counts by id (204); one signed
    with another secret is refused (401, counted bad); with fail=1 every good one is
    answered 503, which the adapter reports as a temporary failure."""
    from sangkien.testing import WebhookReceiver

    with WebhookReceiver(SECRET) as hooks:
        with WebhookAdapter(SECRET, allowed_hosts=["127.0.0.1"], timeout=5) as good:
            good.send(_message(f"{hooks.url}/a", id="msg_1"))
            good.send(_message(f"{hooks.url}/a", id="msg_1"))  # a retry, the same id
        other = WebhookAdapter(generate_secret(), allowed_hosts=["127.0.0.1"], timeout=5)
        with other, pytest.raises(PermanentFailure, match="401"):
            other.send(_message(f"{hooks.url}/a", id="msg_2"))
        assert (hooks.ids, hooks.bad, hooks.seen()) == (["msg_1", "msg_1"], 1, 2)
    with WebhookReceiver(SECRET, fail=1.0) as flaky:
        good = WebhookAdapter(SECRET, allowed_hosts=["127.0.0.1"], timeout=5)
        with good, pytest.raises(TemporaryFailure, match="503"):
            good.send(_message(f"{flaky.url}/a", id="msg_3"))
        assert (flaky.ids, flaky.refused, flaky.bad) == ([], 1, 0)
