"""One transition through ``Engine.fire`` versus the raw driver doing the same writes.

Two cases per backend: a plain transition (a <-> b, no deadline in the workflow) and a
transition into and out of a state with a deadline (one deadline row and two timers written
on entry, closed and cancelled on exit). Each round fires every one of *n* instances there
and back (2n fires) through the Engine, then the same through the raw driver on as many
instances of a database of its own (same schema; each pays for its own SQLite checkpoints);
rounds alternate so noise falls on both. The ratio is raw time / Engine time: the share of
the raw driver's throughput the Engine keeps.

    python bench/bench_fire.py [--postgresql URL] [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

from common import (
    Section,
    Series,
    actor,
    bulk_instances,
    ids,
    migrated_engine,
    pg_schema,
    quiet,
    sqlite_url,
)
from raw import RawSQLite, raw_for

CASES = {
    # case: (workflow, initial, there-trigger, there-state, back-trigger, deadline)
    "plain": ("bench_plain", "a", "go_b", "b", "go_a", False),
    "deadline": ("bench_deadline", "a", "go_c", "c", "go_a", True),
}


def _timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def measure(
    url: str, raw_url: str, n: int, rounds: int, third_url: str | None = None
) -> dict[str, dict[str, Any]]:
    """Per case: Engine and raw seconds per fire (Series), and their ratio per round.

    The raw driver works on a database of its own (*raw_url*, same schema), so that each
    pays for its own WAL checkpoints on SQLite. With *third_url* (SQLite), a second raw
    connection there checkpoints from a thread as the Engine does (``raw_ck``).
    """
    engine = migrated_engine(url)
    who = actor()
    migrated_engine(raw_url).close()
    raw = raw_for(raw_url)
    raw_ck: Any = None
    if third_url is not None:
        migrated_engine(third_url).close()
        raw_ck = RawSQLite(third_url, checkpoint_thread=True)
    out: dict[str, dict[str, Any]] = {}
    try:
        for case, (wf, a, there, b, back, deadline) in CASES.items():
            bulk_instances(url, wf, a, n, prefix=f"e{case[0]}")
            bulk_instances(raw_url, wf, a, n, prefix=f"r{case[0]}")
            if third_url is not None:
                bulk_instances(third_url, wf, a, n, prefix=f"r{case[0]}")
            eids, rids = ids(f"e{case[0]}", n), ids(f"r{case[0]}", n)

            def eng_round(eids: list[str] = eids, there: str = there, back: str = back) -> None:
                for iid in eids:
                    engine.fire(iid, there, actor=who)
                for iid in eids:
                    engine.fire(iid, back, actor=who)

            def raw_round(
                rids: list[str] = rids,
                there: str = there,
                back: str = back,
                a: str = a,
                b: str = b,
                deadline: bool = deadline,
                raw: Any = raw,
            ) -> None:
                for iid in rids:
                    raw.fire(iid, there, a, b, enter_deadline=deadline)
                for iid in rids:
                    raw.fire(iid, back, b, a, leave_deadline=deadline)

            def ck_round(raw_round: Callable[..., None] = raw_round) -> None:
                raw_round(raw=raw_ck)

            eng_round()  # warm up: caches, prepared statements, SQLite pages
            raw_round()
            if raw_ck is not None:
                ck_round()
            e, r, ratio, rc, ratio_ck = Series(), Series(), Series(), Series(), Series()
            for i in range(rounds):
                if i % 2:
                    te, tr = _timed(eng_round), _timed(raw_round)
                else:
                    tr, te = _timed(raw_round), _timed(eng_round)
                e.add(te / (2 * n))
                r.add(tr / (2 * n))
                ratio.add(tr / te)
                if raw_ck is not None:
                    tc = _timed(ck_round)
                    rc.add(tc / (2 * n))
                    ratio_ck.add(tc / te)
            out[case] = {"engine": e, "raw": r, "ratio": ratio}
            if raw_ck is not None:
                out[case] |= {"raw_ck": rc, "ratio_ck": ratio_ck}
    finally:
        raw.close()
        if raw_ck is not None:
            raw_ck.close()
        engine.close()
    return out


def profiled(url: str, n: int, prof: Any, case: str = "plain") -> None:
    """Run 2n fires of *case* through the Engine under the profiler *prof* (after a warm-up)."""
    wf, a, there, _b, back, _deadline = CASES[case]
    engine = migrated_engine(url)
    who = actor()
    bulk_instances(url, wf, a, n, prefix="p")
    pids = ids("p", n)
    for iid in pids[:50]:
        engine.fire(iid, there, actor=who)
        engine.fire(iid, back, actor=who)
    prof.enable()
    for iid in pids:
        engine.fire(iid, there, actor=who)
    for iid in pids:
        engine.fire(iid, back, actor=who)
    prof.disable()
    engine.close()


def profile(url: str, n: int = 1000) -> str:
    """cProfile of Engine.fire over 2n plain fires: the top costs by own and cumulative time."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    profiled(url, n, prof)
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("tottime").print_stats(25)
    st.sort_stats("cumulative").print_stats(40)
    return buf.getvalue()


def run(urls: dict[str, list[str]], *, quick: bool = False) -> Section:
    """*urls*: per backend, fresh databases for the Engine, the raw driver and (SQLite) the
    raw driver checkpointing from a thread."""
    n, rounds = (150, 3) if quick else (500, 5)
    sec = Section(
        "Engine.fire versus the raw driver",
        f"Seconds per transition (median of {rounds} rounds of {2 * n} fires each, min–max), "
        "fires per second, and the ratio raw time / Engine time measured round by round "
        "(target ≥ 0.50). Each works on a database of its own. SQLite: sqlite3 with BEGIN "
        "IMMEDIATE, checkpointing as SQLite does by default (in the commit that takes the "
        "WAL past 1,000 pages); the last column compares with raw sqlite3 checkpointing from "
        "a thread as the Engine does. PostgreSQL: psycopg 3, one statement with CTEs per "
        "transition (one round trip, hash computed in the server).",
    )
    rows = []
    for backend, (url, raw_url, *third) in urls.items():
        res = measure(url, raw_url, n, rounds, third[0] if third else None)
        sec.data[backend] = {c: {k: v.values for k, v in d.items()} for c, d in res.items()}
        for case, d in res.items():
            e, r, ratio = d["engine"], d["raw"], d["ratio"]
            ck = d.get("ratio_ck")
            rows.append(
                [
                    backend,
                    case,
                    f"{e.median * 1e3:.3f} ({_ms(e)})",
                    f"{1 / e.median:,.0f}",
                    f"{r.median * 1e3:.3f} ({_ms(r)})",
                    f"{1 / r.median:,.0f}",
                    f"{ratio.median:.2f} ({ratio.lo:.2f}–{ratio.hi:.2f})",
                    "—" if ck is None else f"{ck.median:.2f} ({ck.lo:.2f}–{ck.hi:.2f})",
                ]
            )
            sec.target(
                f"fire vs raw, {backend}, {case}",
                "≥ 0.50",
                f"{ratio.median:.2f}",
                ratio.median >= 0.5,
                _margin(ratio.median, 0.5),
            )
    sec.table(
        [
            "backend",
            "case",
            "Engine ms/fire (min–max)",
            "Engine fires/s",
            "raw ms/fire (min–max)",
            "raw fires/s",
            "ratio raw/Engine (min–max)",
            "ratio, raw checkpointing from a thread",
        ],
        rows,
        left=2,
    )
    return sec


@contextlib.contextmanager
def databases(pg: str | None) -> Iterator[dict[str, list[str]]]:
    """Fresh databases for :func:`run`: three SQLite files and, if given, two PG schemas."""
    with contextlib.ExitStack() as stack:
        out = {"SQLite": [stack.enter_context(sqlite_url()) for _ in range(3)]}
        if pg:
            out["PostgreSQL"] = [stack.enter_context(pg_schema(pg)) for _ in range(2)]
        yield out


def _ms(s: Series) -> str:
    return f"{s.lo * 1e3:.3f}–{s.hi * 1e3:.3f}"


def _margin(value: float, goal: float, higher: bool = True) -> str:
    if higher:
        return f"{(value / goal - 1) * 100:+.0f} % vs goal"
    return f"{(goal / value - 1) * 100:+.0f} % vs goal"


def main() -> None:
    quiet()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--postgresql", default=None)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--profile", action="store_true", help="print a cProfile of Engine.fire")
    args = p.parse_args()
    with databases(args.postgresql) as urls:
        sec = run(urls, quick=args.quick)
    if args.profile:
        with sqlite_url() as sq:
            print(profile(sq))
        if args.postgresql:
            with pg_schema(args.postgresql) as pg:
                print(profile(pg))
    print(sec.markdown())


if __name__ == "__main__":
    main()
