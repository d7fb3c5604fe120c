"""A host in any language: drive sangkien over REST, receive its signed webhooks.

The host platform (PHP, Java, .NET, Node...) calls the REST API with a bearer token and
subscribes an HTTPS endpoint to events. sangkien signs every webhook per the Standard
Webhooks convention; the receiver below checks the signature with nothing but HMAC-SHA256
and base64, which every language has. Run it:

    python docs/examples/embedding_webhooks.py
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

from fastapi.testclient import TestClient

from sangkien.adapters.webhook import generate_secret, verify
from sangkien.api import ApiSettings, create_app, make_token
from sangkien.config import Settings

API_SECRET = "host-platform-shared-secret-0123456789abcdef"  # noqa: S105 (an example)
WEBHOOK_SECRET = generate_secret()  # "whsec_" + base64; share it with the receiver


def verify_by_hand(secret: str, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """What a receiver in any language does: recompute the HMAC and compare in constant time."""
    msg_id = headers["webhook-id"]
    timestamp = headers["webhook-timestamp"]
    if abs(time.time() - int(timestamp)) > tolerance:  # refuse replays of old requests
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return any(
        hmac.compare_digest(expected, candidate.split(",", 1)[1])
        for candidate in headers["webhook-signature"].split()
        if candidate.startswith("v1,")
    )


class Receiver(http.server.BaseHTTPRequestHandler):
    """The host's webhook endpoint: verify, deduplicate by webhook-id, answer 2xx fast."""

    received: ClassVar[list[dict[str, Any]]] = []
    seen: ClassVar[set[str]] = set()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        headers = {k.lower(): v for k, v in self.headers.items()}
        ok = verify_by_hand(WEBHOOK_SECRET, headers, body)
        assert ok == verify(WEBHOOK_SECRET, headers, body)  # same answer as sangkien's helper
        if not ok:
            self.send_response(401)
        elif headers["webhook-id"] not in self.seen:  # a retry carries the same id
            self.seen.add(headers["webhook-id"])
            self.received.append(json.loads(body))
            self.send_response(204)
        else:
            self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def main() -> list[str]:
    receiver = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    hook = f"http://127.0.0.1:{receiver.server_address[1]}/sangkien-events"
    with tempfile.TemporaryDirectory(prefix="sangkien-hooks-") as tmp:
        settings = Settings(
            database_url=f"sqlite:///{Path(tmp) / 'sangkien.db'}",
            channels="log,webhook",
            webhook_secret=WEBHOOK_SECRET,
            webhook_allowed_hosts="127.0.0.1",
            subscribers=[{"url": hook, "events": ["instance.started", "transition.applied"]}],
        )
        # worker=True: the dispatcher delivers the outbox from inside the API process,
        # as `sangkien serve` does.
        api = ApiSettings(jwt_secret=API_SECRET, worker=True, worker_interval=0.2)
        with TestClient(create_app(settings, api_settings=api)) as client:
            # curl -X POST $BASE/v1/instances -H "Authorization: Bearer $TOKEN" ...
            officer = make_token("le.thi.hoa", ["emulation_officer"], "xa-nghia-hanh", API_SECRET)
            chair = make_token("pham.van.duc", ["committee_chair"], "xa-nghia-hanh", API_SECRET)
            created = client.post(
                "/v1/instances",
                headers={"Authorization": f"Bearer {officer}", "Idempotency-Key": "hs-2030-1"},
                json={
                    "workflow": "campaign",
                    "external_ref": "HS-2030-1",
                    "data": {
                        "title": "Phong trào sáng kiến 2030",
                        "registration_deadline": "2030-04-30",
                        "submission_deadline": "2030-09-30",
                    },
                },
            ).json()
            launched = client.post(
                f"/v1/instances/{created['id']}/fire",
                headers={"Authorization": f"Bearer {chair}"},
                json={
                    "trigger": "launch",
                    "data": {"decision_number": "15/KH-UBND", "launched_on": "2030-03-02"},
                    "expected_version": created["version"],
                },
            ).json()
            print("REST:", created["state"], "->", launched["state"])
            deadline = time.monotonic() + 15
            while len(Receiver.received) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
    receiver.shutdown()
    kinds = [e["type"] for e in Receiver.received]
    for event in Receiver.received:
        inst = event["data"]["instance"]
        print(
            f"webhook {event['type']} v{event['version']}: {inst['external_ref']} {inst['state']}"
        )
    assert kinds == ["instance.started", "transition.applied"], kinds
    return kinds


if __name__ == "__main__":
    main()
