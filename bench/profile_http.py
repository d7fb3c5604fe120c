"""Where an HTTP fire spends its time in the server: cProfile of the uvicorn process.

The app (``sangkien.api:create_app``) runs under uvicorn in a subprocess whose event-loop
thread and thread-pool threads are each profiled (``anyio.to_thread.run_sync`` is wrapped so
every sync route and dependency runs under its thread's profiler). One client fires *n*
plain transitions; the server then stops and the merged profile is summarised per request:
the functions with the most own time (time waiting for requests left out) and the
cumulative time of the main steps.

    python bench/profile_http.py [--postgresql URL] [--n 2000]
"""

from __future__ import annotations

import argparse
import os
import pstats
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import (
    HERE,
    ROLES,
    UNIT,
    Section,
    bulk_instances,
    migrated_engine,
    pg_schema,
    quiet,
    sqlite_url,
    workflow_files,
)

SECRET = "bench-secret-bench-secret-bench-secret-0123"  # a local benchmark only

SERVER = r"""
import cProfile, sys, threading
import anyio.to_thread

out, port = sys.argv[1], int(sys.argv[2])
profiles = []
local = threading.local()
original = anyio.to_thread.run_sync


def _profiler():
    p = getattr(local, "p", None)
    if p is None:
        p = local.p = cProfile.Profile()
        profiles.append(p)
    return p


async def run_sync(func, *args, **kwargs):
    def profiled(*a):
        p = _profiler()
        p.enable()
        try:
            return func(*a)
        finally:
            p.disable()
    return await original(profiled, *args, **kwargs)


anyio.to_thread.run_sync = run_sync

import uvicorn
from sangkien.api import create_app

app = create_app()
main = cProfile.Profile()
profiles.append(main)
main.enable()
uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")
main.disable()
import pstats
stats = pstats.Stats(profiles[0])
for p in profiles[1:]:
    stats.add(p)
stats.dump_stats(out)
"""

IDLE = ("poll' of 'select.epoll", "acquire' of '_thread.lock", "wait' of", "_run_once")

STEPS = [
    ("fastapi/routing.py", "app", "FastAPI route handling (all)"),
    ("fastapi/routing.py", "_match", "route matching (included routers)"),
    ("engine/runtime.py", "fire", "Engine.fire"),
    ("api/instances.py", "fire_fast", "fire fast path (body, caller, parameters, engine)"),
    ("api/problems.py", "_read_bounded", "reading the body (bounded)"),
    ("api/auth.py", "_authenticate", "authentication (bearer token)"),
    ("jwt/api_jwt.py", "decode_complete", "JWT decode and verify"),
    ("fastapi/dependencies/utils.py", "solve_dependencies", "FastAPI dependency solving"),
    ("fastapi/routing.py", "serialize_response", "response model serialization"),
    ("api/context.py", "json", "sangkien JSON response (jsonable_encoder)"),
    ("api/context.py", "model_json", "sangkien JSON response (pydantic, one pass)"),
    ("api/schemas.py", "of", "output model from the engine's record"),
    ("pydantic/main.py", "model_validate", "pydantic validation"),
    ("api/middleware.py", "__call__", "request middleware (ids, metrics, logs)"),
    ("api/auth.py", "_claims", "token claims (JWT decode or remembered)"),
    ("prometheus_client/metrics.py", "observe", "latency histogram"),
    ("uvicorn/protocols/http/httptools_impl.py", "data_received", "HTTP parsing (httptools)"),
    ("uvicorn/protocols/http/h11_impl.py", "data_received", "HTTP parsing (h11)"),
    ("starlette/middleware/base.py", "__call__", "BaseHTTPMiddleware"),
    ("anyio/to_thread.py", "run_sync", "thread-pool hop (to_thread.run_sync)"),
    ("store/writer.py", "run_on_loop", "write on the event loop (run_on_loop)"),
    ("api/instances.py", "refused", "refusal metric lookup"),
]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def profile(url: str, n: int) -> pstats.Stats:
    import httpx

    from sangkien.api.tokens import make_token

    engine = migrated_engine(url)
    engine.close()
    bulk_instances(url, "bench_plain", "a", n, prefix="x")
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        workflow_files(Path(tmp))
        out = Path(tmp) / "server.prof"
        env = {
            **os.environ,
            "SANGKIEN_DATABASE_URL": url,
            "SANGKIEN_JWT_SECRET": SECRET,
            "SANGKIEN_WORKFLOWS": tmp,
            "SANGKIEN_LOG_LEVEL": "WARNING",
            "SANGKIEN_LOG_FORMAT": "json",
            "PYTHONPATH": str(HERE),
        }
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(out), str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        base = f"http://127.0.0.1:{port}"
        until = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                if time.monotonic() > until or proc.poll() is not None:
                    raise RuntimeError(proc.stderr.read() if proc.stderr else "") from None
                time.sleep(0.1)
        token = make_token("bench.clerk", ROLES, UNIT, secret=SECRET)
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as c:
            for k in range(1, n + 1):
                r = c.post(f"/v1/instances/x{k:08d}/fire", json={"trigger": "go_b"})
                r.raise_for_status()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        return pstats.Stats(str(out))


def section(urls: dict[str, str], n: int) -> Section:
    sec = Section(
        "Profile of the API server during HTTP fires",
        f"cProfile of the uvicorn process (event loop and thread pool) while one client fires "
        f"{n:,} plain transitions, in µs per request under the profiler; time spent waiting "
        "for requests is left out. Fires run on the event loop in a greenlet "
        "(`run_on_loop`); cProfile does not follow greenlet switches, so on PostgreSQL, "
        "where the write switches back to the loop at each wait, the cumulative figures of "
        "the steps inside it (`Engine.fire`) are not reliable: read the own times.",
    )
    for backend, url in urls.items():
        st = profile(url, n)
        entries = st.stats  # type: ignore[attr-defined]
        busy = {f: v for f, v in entries.items() if not any(i in _name(f) for i in IDLE)}
        per = 1e6 / n
        own = sorted(busy.items(), key=lambda kv: kv[1][2], reverse=True)[:15]
        sec.table(
            [f"{backend}: function", "own µs/request", "cum. µs/request"],
            [[f"`{_name(f)}`", f"{v[2] * per:.1f}", f"{v[3] * per:.1f}"] for f, v in own],
        )
        steps: dict[str, float] = {}
        for f, v in entries.items():
            for suffix, name, label in STEPS:
                if f[0].replace("\\", "/").endswith(suffix) and f[2] == name:
                    steps[label] = max(steps.get(label, 0.0), v[3])
        sec.table(
            [f"{backend}: step", "cum. µs/request"],
            [[k, f"{v * per:.1f}"] for k, v in sorted(steps.items(), key=lambda kv: -kv[1])],
        )
    return sec


def _name(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    return f"{'/'.join(Path(filename).parts[-2:])}:{line} {name}"


def main() -> None:
    quiet()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--postgresql", default=None)
    p.add_argument("--n", type=int, default=2000)
    args = p.parse_args()
    with sqlite_url() as sq:
        urls = {"SQLite": sq}
        if args.postgresql:
            with pg_schema(args.postgresql) as pg:
                urls["PostgreSQL"] = pg
                print(section(urls, args.n).markdown())
        else:
            print(section(urls, args.n).markdown())


if __name__ == "__main__":
    main()
