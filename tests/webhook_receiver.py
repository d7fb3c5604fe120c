"""A Standard Webhooks receiver for the delivery fault tests: counts message ids by signature.

Shared by the tests whose senders are killed with SIGKILL: a request cut short by its
sender's death is counted apart (``torn``), never as one with a bad signature.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Receiver:
    """What the receiver saw; ``delay`` slows each answer (so a kill lands mid-batch)."""

    delay: float = 0.0
    ids: list[str] = field(default_factory=list)
    bad: int = 0  # complete requests whose signature does not verify, or body id differs
    torn: int = 0  # requests cut short by their sender's death (a SIGKILL mid-send)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def seen(self) -> int:
        with self.lock:
            return len(self.ids)


@contextmanager
def running_receiver(secret: str) -> Iterator[Receiver]:
    """Serve on 127.0.0.1 in a thread: 204 for a request signed with *secret*, else 401."""
    from sangkien.adapters.webhook import verify

    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            declared = self.headers.get("content-length")
            raw = self.rfile.read(int(declared)) if declared else b""
            if declared is None or len(raw) < int(declared):
                # A sender killed mid-send (httpx writes the headers and the body apart)
                # leaves a request cut short. Nothing was delivered; nobody awaits an answer.
                with state.lock:
                    state.torn += 1
                return
            ok = verify(secret, self.headers, raw) and _body_id(raw) == self.headers["webhook-id"]
            with state.lock:
                if ok:
                    state.ids.append(self.headers["webhook-id"])
                else:
                    state.bad += 1
            if state.delay:
                time.sleep(state.delay)
            self.send_response(204 if ok else 401)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _body_id(raw: bytes) -> object:
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body.get("id") if isinstance(body, dict) else None
