"""Memory of a process using the Engine over 10k versus 1M stored instances.

The instances are bulk-inserted in SQL. A fresh Python process then builds an Engine, and
touches a fixed sample spread over the whole population — fires a transition on some, reads
others with ``get`` and ``history``, pages through ``list`` — and reports its resident set
(VmRSS, and the peak VmHWM, from /proc/self/status). Memory must not grow with the data
kept: target RSS(1M) ≤ 1.2 × RSS(10k).

    python bench/bench_memory.py [--postgresql URL] [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import (
    HERE,
    Section,
    Series,
    bulk_instances,
    migrated_engine,
    pg_schema,
    quiet,
    sqlite_url,
)

CHILD = r"""
import gc, json, random, sys
sys.path.insert(0, sys.argv[1])
from common import actor, quiet, rss_kib
quiet()
url, n, sample = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
from sangkien import Engine
engine = Engine(url, migrate=False)
who = actor()
rng = random.Random(7)
picks = rng.sample(range(1, n + 1), 2 * sample)
fire_ids = [f"m{i:08d}" for i in picks[:sample]]
read_ids = [f"m{i:08d}" for i in picks[sample:]]
def toggle(iid):
    state = engine.get(iid, actor=who).state
    engine.fire(iid, "go_b" if state == "a" else "go_a", actor=who)
toggle(fire_ids[0])
gc.collect()
before = rss_kib()[0]
for iid in fire_ids[1:]:
    toggle(iid)
for iid in read_ids:
    engine.get(iid, actor=who)
for iid in fire_ids[: sample // 4]:
    engine.history(iid, actor=who)
after = None
for inst in engine.list(limit=1000):
    after = inst.id
for _ in range(20):
    page = engine.list(after=after, limit=1000)
    after = page[-1].id if page else None
gc.collect()
now, peak = rss_kib()
print(json.dumps({"before_kib": before, "rss_kib": now, "peak_kib": peak}))
"""


def child(url: str, n: int, sample: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(HERE), url, str(n), str(sample)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory child failed: {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def measure(url: str, sizes: list[int], sample: int, rounds: int) -> dict[int, dict[str, Series]]:
    res: dict[int, dict[str, Series]] = {}
    engine = migrated_engine(url)
    engine.close()
    have = 0
    for n in sizes:  # grow the same population: 10k, then up to 1M
        bulk_instances(url, "bench_plain", "a", n - have, prefix="m", start=have + 1)
        have = n
        res[n] = {"before": Series(), "rss": Series(), "peak": Series()}
        for _ in range(rounds):
            r = child(url, n, sample)
            res[n]["before"].add(r["before_kib"] / 1024)
            res[n]["rss"].add(r["rss_kib"] / 1024)
            res[n]["peak"].add(r["peak_kib"] / 1024)
    return res


def run(urls: dict[str, str], *, quick: bool = False) -> Section:
    sizes, sample, rounds = ([2_000, 50_000], 300, 1) if quick else ([10_000, 1_000_000], 2_000, 3)
    sec = Section(
        "Memory over the number of stored instances",
        f"Resident set (MiB) of a fresh process after building an Engine and touching the same "
        f"sample among N stored instances: {sample:,} fires, {sample:,} gets, {sample // 4:,} "
        "histories, 21 pages of `list` (median of "
        f"{rounds} processes, min–max). *Before* is after the first fire, i.e. the imports and "
        "the Engine.",
    )
    rows = []
    for backend, url in urls.items():
        res = measure(url, sizes, sample, rounds)
        sec.data[backend] = {n: {k: v.values for k, v in d.items()} for n, d in res.items()}
        base = res[sizes[0]]["rss"].median
        for n in sizes:
            d = res[n]
            rows.append(
                [
                    backend,
                    f"{n:,}",
                    f"{d['before'].median:.1f}",
                    f"{d['rss'].median:.1f}",
                    d["rss"].span("{:.1f}"),
                    f"{d['peak'].median:.1f}",
                    f"{d['rss'].median / base:.3f}",
                ]
            )
        ratio = res[sizes[-1]]["rss"].median / base
        sec.target(
            f"RSS at {sizes[-1]:,} vs {sizes[0]:,} instances, {backend}",
            "≤ 1.2×",
            f"{ratio:.3f}×",
            ratio <= 1.2,
            f"{(1.2 / ratio - 1) * 100:+.0f} % vs goal",
        )
    sec.table(
        [
            "backend",
            "instances",
            "RSS before (MiB)",
            "RSS after (MiB)",
            "min–max",
            "peak (MiB)",
            f"ratio to {sizes[0]:,}",
        ],
        rows,
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
