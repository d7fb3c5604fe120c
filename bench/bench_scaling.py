"""PostgreSQL throughput with 1, 2, 4 and 8 worker processes firing on disjoint instances.

Each worker is a separate Python process with its own Engine (or raw psycopg connection)
and its own instances (plain a <-> b transitions). The workers of one configuration start
together at an agreed wall-clock instant, fire for a fixed time and report how many fires
completed; Engine and raw rounds alternate. Scaling is throughput(N) / throughput(1);
the target compares the Engine's 1→4 scaling with the raw driver's (≥ 90 % of it).

    python bench/bench_scaling.py --postgresql URL [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from common import HERE, Section, Series, bulk_instances, migrated_engine, pg_schema, quiet

WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from common import actor, ids, quiet
quiet()
url, mode, prefix, n = sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
mine = ids(prefix, n)
state = {i: "a" for i in mine}
if mode == "engine":
    from sangkien import Engine
    engine = Engine(url, migrate=False)
    who = actor()
    def fire(iid, trigger, frm, to):
        engine.fire(iid, trigger, actor=who)
else:
    from raw import RawPostgres
    raw = RawPostgres(url)
    def fire(iid, trigger, frm, to):
        raw.fire(iid, trigger, frm, to)
def one(iid):
    if state[iid] == "a":
        fire(iid, "go_b", "a", "b"); state[iid] = "b"
    else:
        fire(iid, "go_a", "b", "a"); state[iid] = "a"
for iid in mine[:20]:  # warm up: connection, caches, prepared statements
    one(iid)
print("ready", flush=True)
k = 20
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "quit":
        break
    start, duration = float(cmd[1]), float(cmd[2])
    while time.time() < start:
        time.sleep(min(0.01, max(0.0, start - time.time())))
    end = start + duration
    done = 0
    while True:
        one(mine[k % n]); k += 1
        if time.time() >= end:
            break
        done += 1
    print(json.dumps({"fires": done}), flush=True)
"""

PER_WORKER = 300


class Pool:
    """N worker processes of one mode, each with its own instances."""

    def __init__(self, url: str, mode: str, n: int, tag: str) -> None:
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, str(HERE), url, mode, f"{tag}{k}_", str(PER_WORKER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(n)
        ]
        for p in self.procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"bench worker failed: {p.stderr.read() if p.stderr else ''}")

    def round(self, duration: float) -> float:
        """Fires per second of all workers together over *duration* seconds."""
        start = time.time() + 0.3
        for p in self.procs:
            assert p.stdin is not None
            p.stdin.write(f"go {start} {duration}\n")
            p.stdin.flush()
        total = 0
        for p in self.procs:
            assert p.stdout is not None
            total += json.loads(p.stdout.readline())["fires"]
        return total / duration

    def close(self) -> None:
        for p in self.procs:
            try:
                assert p.stdin is not None
                p.stdin.write("quit\n")
                p.stdin.flush()
                p.wait(timeout=30)
            except Exception:
                p.kill()
                p.wait()


def measure(
    url: str, counts: list[int], rounds: int, duration: float
) -> dict[str, dict[int, Series]]:
    engine = migrated_engine(url)
    engine.close()
    for mode in ("engine", "raw"):
        for n in counts:
            for k in range(n):
                bulk_instances(url, "bench_plain", "a", PER_WORKER, prefix=f"{mode[0]}{n}w{k}_")
    out: dict[str, dict[int, Series]] = {"engine": {}, "raw": {}}
    for n in counts:
        pools = {m: Pool(url, m, n, f"{m[0]}{n}w") for m in ("engine", "raw")}
        try:
            for m in pools:
                out[m][n] = Series()
            for i in range(rounds):
                order = ("engine", "raw") if i % 2 == 0 else ("raw", "engine")
                for m in order:
                    out[m][n].add(pools[m].round(duration))
        finally:
            for p in pools.values():
                p.close()
    return out


def run(url: str, *, quick: bool = False) -> Section:
    counts = [1, 4] if quick else [1, 2, 4, 8]
    rounds, duration = (1, 1.0) if quick else (3, 3.0)
    res = measure(url, counts, rounds, duration)
    sec = Section(
        "PostgreSQL throughput with worker processes",
        f"Fires per second of N processes together on disjoint instances (median of {rounds} "
        f"rounds of {duration:g} s, min–max), and scaling relative to one process. The machine "
        "has 2 cores shared by the workers and the PostgreSQL server.",
    )
    rows = []
    e1, r1 = res["engine"][1].median, res["raw"][1].median
    for n in counts:
        e, r = res["engine"][n], res["raw"][n]
        rows.append(
            [
                str(n),
                f"{e.median:,.0f}",
                e.span(),
                f"{e.median / e1:.2f}",
                f"{r.median:,.0f}",
                r.span(),
                f"{r.median / r1:.2f}",
                f"{e.median / r.median:.2f}",
            ]
        )
    sec.table(
        [
            "processes",
            "Engine fires/s",
            "min–max",
            "Engine scaling",
            "raw fires/s",
            "min–max",
            "raw scaling",
            "Engine/raw",
        ],
        rows,
    )
    es, rs = res["engine"][4].median / e1, res["raw"][4].median / r1
    rel = es / rs
    sec.target(
        "PostgreSQL scaling 1→4 processes, Engine vs raw",
        "≥ 0.90 of raw's",
        f"{es:.2f}× vs {rs:.2f}× = {rel:.2f}",
        rel >= 0.9,
        f"{(rel / 0.9 - 1) * 100:+.0f} % vs goal",
    )
    sec.data = {m: {n: s.values for n, s in d.items()} for m, d in res.items()}
    return sec


def main() -> None:
    quiet()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--postgresql", required=True)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    with pg_schema(args.postgresql) as url:
        print(run(url, quick=args.quick).markdown())


if __name__ == "__main__":
    main()
