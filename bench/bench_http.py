"""Fires over HTTP (the FastAPI app under uvicorn) versus the same fires through the Python API.

The app is ``sangkien.api:create_app`` served by uvicorn in a subprocess (one process, the
default thread pool; worker loops off), authenticated with an HS256 token from
``sangkien.api.tokens``. 1, 8 and 32 client threads (one ``httpx.Client`` each, keep-alive)
fire plain transitions on their own instances for a fixed time; the same number of threads
then call ``Engine.fire`` in the bench process on other instances of the same database, and
the same clients call ``GET /healthz`` (no database) for the cost of the HTTP stack alone.
Rounds interleave the three. Latency percentiles are over every request of every round.

    python bench/bench_http.py [--postgresql URL] [--quick]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import (
    ROLES,
    UNIT,
    Section,
    Series,
    actor,
    bulk_instances,
    ids,
    migrated_engine,
    percentile,
    pg_schema,
    quiet,
    sqlite_url,
    workflow_files,
)

SECRET = "bench-secret-bench-secret-bench-secret-0123"  # a local benchmark only
PER_CLIENT = 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """uvicorn serving the sangkien app factory in a subprocess."""

    def __init__(self, url: str, workflows_dir: Path) -> None:
        self.port = _free_port()
        self._clients: list[Any] = []
        env = {
            **os.environ,
            "SANGKIEN_DATABASE_URL": url,
            "SANGKIEN_JWT_SECRET": SECRET,
            "SANGKIEN_WORKFLOWS": str(workflows_dir),
            "SANGKIEN_LOG_LEVEL": "WARNING",
            "SANGKIEN_LOG_FORMAT": "json",
        }
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "sangkien.api:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        import httpx

        until = time.monotonic() + 60
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {self.output()}")
            try:
                if httpx.get(f"{self.base}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"uvicorn did not answer: {self.output()}")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-3000:]

    def clients(self, token: str, n: int) -> list[Any]:
        """*n* keep-alive clients authenticated with *token*, closed with the server."""
        import httpx

        made = [
            httpx.Client(
                base_url=self.base, headers={"Authorization": f"Bearer {token}"}, timeout=60
            )
            for _ in range(n)
        ]
        self._clients.extend(made)
        return made

    def close(self) -> None:
        for client in self._clients:
            client.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _together(
    workers: list[Callable[[float, list[float]], int]], duration: float
) -> tuple[float, list[float]]:
    """Run *workers* in threads for *duration* s; return (requests/s, latencies)."""
    latencies: list[list[float]] = [[] for _ in workers]
    counts = [0] * len(workers)
    start = time.perf_counter() + 0.2
    end = start + duration
    errors: list[BaseException] = []

    def go(k: int) -> None:
        while time.perf_counter() < start:
            time.sleep(0.001)
        try:
            counts[k] = workers[k](end, latencies[k])
        except BaseException as exc:  # reported after the round
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(k,)) for k in range(len(workers))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise errors[0]
    return sum(counts) / duration, [x for lat in latencies for x in lat]


class Toggle:
    """Fires a <-> b on one client's own instances, in turn."""

    def __init__(self, mine: list[str]) -> None:
        self.mine = mine
        self.state = {i: "a" for i in mine}
        self.k = 0

    def next(self) -> tuple[str, str]:
        iid = self.mine[self.k % len(self.mine)]
        self.k += 1
        trigger = "go_b" if self.state[iid] == "a" else "go_a"
        self.state[iid] = "b" if trigger == "go_b" else "a"
        return iid, trigger


def _http_fire(client: Any, toggle: Toggle) -> Callable[[float, list[float]], int]:
    def work(end: float, lat: list[float]) -> int:
        n = 0
        while True:
            iid, trigger = toggle.next()
            t0 = time.perf_counter()
            r = client.post(f"/v1/instances/{iid}/fire", json={"trigger": trigger})
            t1 = time.perf_counter()
            if r.status_code != 200:
                raise RuntimeError(f"fire answered {r.status_code}: {r.text[:300]}")
            if t1 >= end:
                return n
            lat.append(t1 - t0)
            n += 1

    return work


def _http_health(client: Any) -> Callable[[float, list[float]], int]:
    def work(end: float, lat: list[float]) -> int:
        n = 0
        while True:
            t0 = time.perf_counter()
            r = client.get("/healthz")
            t1 = time.perf_counter()
            if r.status_code != 200:
                raise RuntimeError(f"/healthz answered {r.status_code}")
            if t1 >= end:
                return n
            lat.append(t1 - t0)
            n += 1

    return work


def _py_fire(engine: Any, who: Any, toggle: Toggle) -> Callable[[float, list[float]], int]:
    def work(end: float, lat: list[float]) -> int:
        n = 0
        while True:
            iid, trigger = toggle.next()
            t0 = time.perf_counter()
            engine.fire(iid, trigger, actor=who)
            t1 = time.perf_counter()
            if t1 >= end:
                return n
            lat.append(t1 - t0)
            n += 1

    return work


def measure(url: str, levels: list[int], rounds: int, duration: float) -> dict[str, Any]:
    from sangkien.api.tokens import make_token

    engine = migrated_engine(url)
    who = actor()
    top = max(levels)
    for c in range(top):
        bulk_instances(url, "bench_plain", "a", PER_CLIENT, prefix=f"h{c}_")
        bulk_instances(url, "bench_plain", "a", PER_CLIENT, prefix=f"p{c}_")
    http_toggles = [Toggle(ids(f"h{c}_", PER_CLIENT)) for c in range(top)]
    py_toggles = [Toggle(ids(f"p{c}_", PER_CLIENT)) for c in range(top)]
    token = make_token("bench.clerk", ROLES, UNIT, secret=SECRET, ttl=24 * 3600)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workflow_files(Path(tmp))
        server = Server(url, Path(tmp))
        clients = server.clients(token, top)
        try:
            for c, cl in enumerate(clients):  # warm up every connection and thread
                iid, trigger = http_toggles[c].next()
                cl.post(f"/v1/instances/{iid}/fire", json={"trigger": trigger}).raise_for_status()
            for t in py_toggles[:4]:
                iid, trigger = t.next()
                engine.fire(iid, trigger, actor=who)
            for level in levels:
                res = {k: {"rate": Series(), "lat": []} for k in ("http", "python", "healthz")}
                for r in range(rounds):
                    order = ["http", "python", "healthz"]
                    if r % 2:
                        order.reverse()
                    for kind in order:
                        if kind == "http":
                            ws = [_http_fire(clients[c], http_toggles[c]) for c in range(level)]
                        elif kind == "python":
                            ws = [_py_fire(engine, who, py_toggles[c]) for c in range(level)]
                        else:
                            ws = [_http_health(clients[c]) for c in range(level)]
                        rate, lat = _together(ws, duration)
                        res[kind]["rate"].add(rate)
                        res[kind]["lat"].extend(lat)
                for d in res.values():
                    d["lat"].sort()
                out[level] = res
        finally:
            server.close()
            engine.close()
    return out


def _p50_p99(latencies: list[float]) -> str:
    return f"{percentile(latencies, 0.5) * 1e3:.1f} / {percentile(latencies, 0.99) * 1e3:.1f}"


def run(urls: dict[str, str], *, quick: bool = False) -> Section:
    levels = [1, 8, 32]
    rounds, duration = (1, 0.6) if quick else (3, 3.0)
    sec = Section(
        "HTTP fires versus the Python API",
        f"Requests per second (median of {rounds} rounds of {duration:g} s, min–max) and latency "
        "percentiles over all rounds, for 1, 8 and 32 concurrent clients. *HTTP/Python* is "
        "HTTP fires per second over `Engine.fire` calls per second from as many threads in one "
        "process; *fire/healthz* is HTTP fires over `GET /healthz` requests per second (the "
        "HTTP stack without the engine). With one client a fire's latency is at least a "
        "`/healthz` request's plus an `Engine.fire` call's: the last column is the ratio an API "
        "adding nothing to the engine's own work would reach, 1 / (1 + healthz/s ÷ Python "
        "fires/s). Clients and server share the machine's 2 cores.",
    )
    rows = []
    for backend, url in urls.items():
        res = measure(url, levels, rounds, duration)
        sec.data[backend] = {
            lvl: {k: v["rate"].values for k, v in d.items()} for lvl, d in res.items()
        }
        for lvl in levels:
            d = res[lvl]
            h, p, z = d["http"], d["python"], d["healthz"]
            ratio_py = h["rate"].median / p["rate"].median
            ratio_hz = h["rate"].median / z["rate"].median
            # one client: a fire's latency is at least /healthz's plus Engine.fire's, so
            # this is fire/healthz if the API added nothing to the engine's own work
            ceiling = 1 / (1 + z["rate"].median / p["rate"].median) if lvl == 1 else None
            rows.append(
                [
                    backend,
                    str(lvl),
                    f"{h['rate'].median:,.0f} ({h['rate'].span()})",
                    _p50_p99(h["lat"]),
                    f"{p['rate'].median:,.0f} ({p['rate'].span()})",
                    _p50_p99(p["lat"]),
                    f"{z['rate'].median:,.0f}",
                    _p50_p99(z["lat"]),
                    f"{ratio_py:.2f}",
                    f"{ratio_hz:.2f}",
                    "—" if ceiling is None else f"{ceiling:.2f}",
                ]
            )
            # the target is against the trivial endpoint; HTTP/Python is reported, not a goal
            margin = f"{(ratio_hz / 0.5 - 1) * 100:+.0f} % vs goal"
            sec.target(
                f"HTTP fire vs /healthz, {backend}, {lvl} clients",
                "≥ 0.50",
                f"{ratio_hz:.2f}",
                ratio_hz >= 0.5,
                margin,
            )
    sec.table(
        [
            "backend",
            "clients",
            "HTTP fires/s (min–max)",
            "HTTP p50 / p99 ms",
            "Python fires/s (min–max)",
            "Python p50 / p99 ms",
            "/healthz req/s",
            "/healthz p50 / p99 ms",
            "HTTP/Python",
            "fire/healthz",
            "fire/healthz if the API added nothing",
        ],
        rows,
        left=2,
    )
    return sec


def main() -> None:
    quiet()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--postgresql", default=None)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    with sqlite_url() as sq:
        urls = {"SQLite": sq}
        if args.postgresql:
            with pg_schema(args.postgresql) as pg:
                urls["PostgreSQL"] = pg
                print(run(urls, quick=args.quick).markdown())
        else:
            print(run(urls, quick=args.quick).markdown())


if __name__ == "__main__":
    main()
