"""Where the CPU of an HTTP fire goes: client, API server and PostgreSQL, per request.

One client (or several threads) fires plain transitions at ``sangkien.api:create_app``
under uvicorn for a few seconds, then calls ``GET /healthz`` as long; the CPU time each
process used (from ``/proc``, Linux only) is divided by the requests served. With one
client the request's latency is close to the sum of the three, so this shows what a fire
adds to the trivial endpoint, and on which side.

    python bench/http_cpu.py [--postgresql URL] [--clients 1] [--seconds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench_http import SECRET, Server, Toggle
from common import (
    ROLES,
    UNIT,
    bulk_instances,
    ids,
    md_table,
    migrated_engine,
    pg_schema,
    quiet,
    sqlite_url,
    workflow_files,
)

TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pids: list[int]) -> float:
    """User + system CPU seconds of *pids* (those still alive)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICK


def _postgres_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-u", "postgres"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def measure(url: str, clients: int, seconds: float) -> list[list[str]]:
    from sangkien.api.tokens import make_token

    engine = migrated_engine(url)
    for c in range(clients):
        bulk_instances(url, "bench_plain", "a", 400, prefix=f"c{c}_")
    toggles = [Toggle(ids(f"c{c}_", 400)) for c in range(clients)]
    token = make_token("bench.clerk", ROLES, UNIT, secret=SECRET, ttl=3600)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workflow_files(Path(tmp))
        server = Server(url, Path(tmp))
        http = server.clients(token, clients)
        try:
            for c in range(clients):  # warm up
                iid, trigger = toggles[c].next()
                http[c].post(f"/v1/instances/{iid}/fire", json={"trigger": trigger})
            for kind in ("fire", "healthz"):
                counts = [0] * clients
                end = time.perf_counter() + seconds

                def work(
                    c: int, kind: str = kind, end: float = end, counts: list[int] = counts
                ) -> None:
                    while time.perf_counter() < end:
                        if kind == "fire":
                            iid, trigger = toggles[c].next()
                            r = http[c].post(f"/v1/instances/{iid}/fire", json={"trigger": trigger})
                        else:
                            r = http[c].get("/healthz")
                        r.raise_for_status()
                        counts[c] += 1

                pg = _postgres_pids() if url.startswith("postgresql") else []
                before = (_cpu([server.proc.pid]), sum(os.times()[:2]), _cpu(pg))
                started = time.perf_counter()
                threads = [threading.Thread(target=work, args=(c,)) for c in range(clients)]
                for th in threads:
                    th.start()
                for th in threads:
                    th.join()
                wall = time.perf_counter() - started
                after = (_cpu([server.proc.pid]), sum(os.times()[:2]), _cpu(pg))
                n = sum(counts)
                server_us, client_us, pg_us = (
                    (a - b) / n * 1e6 for a, b in zip(after, before, strict=True)
                )
                rows.append(
                    [
                        kind,
                        f"{n / wall:,.0f}",
                        f"{wall / n * clients * 1e3:.2f}",
                        f"{client_us:,.0f}",
                        f"{server_us:,.0f}",
                        f"{pg_us:,.0f}" if pg else "—",
                        f"{client_us + server_us + pg_us:,.0f}",
                    ]
                )
        finally:
            server.close()
            engine.close()
    return rows


def main() -> None:
    quiet()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--postgresql", default=None)
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    args = p.parse_args()
    headers = [
        "request",
        "req/s",
        "ms per request",
        "client CPU µs",
        "server CPU µs",
        "PostgreSQL CPU µs",
        "total CPU µs",
    ]
    results: dict[str, Any] = {}
    with sqlite_url() as sq:
        results["SQLite"] = measure(sq, args.clients, args.seconds)
    if args.postgresql:
        with pg_schema(args.postgresql) as pg:
            results["PostgreSQL"] = measure(pg, args.clients, args.seconds)
    for backend, rows in results.items():
        print(f"{backend}, {args.clients} client(s), CPU per request:\n")
        print(md_table(headers, rows))
        print()


if __name__ == "__main__":
    main()
