"""Run the sangkien benchmarks and print the results as Markdown tables.

    python bench/run.py --postgresql postgresql://postgres@127.0.0.1:5432/test   # ~10 min
    python bench/run.py --quick --postgresql URL          # smoke run, about 1 minute
    python bench/run.py --postgresql URL --profile        # also cProfiles of the hot paths
    python bench/run.py --only fire,peers                 # some of them (SQLite only)
    python bench/run.py --postgresql URL --write          # also into docs/benchmarks.md

Benchmarks: fire (Engine.fire vs the raw driver), scaling (PostgreSQL processes), peers
(SpiffWorkflow, transitions), tick (deadline tick vs open timers), memory (RSS vs stored
instances), http (uvicorn vs the Python API and /healthz). Every PostgreSQL benchmark works in
its own scratch schema of the given database, dropped at the end. Each result states its ratio
to the baseline measured in the same run; the summary lists every target, met or missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sqlalchemy as sa
from common import (
    ROOT,
    Section,
    driver_url,
    machine,
    md_table,
    pg_schema,
    pg_version,
    quiet,
    sqlite_url,
    targets_table,
)

ALL = ["fire", "peers", "scaling", "tick", "memory", "http"]
BEGIN = "<!-- bench:begin (bench/run.py --write replaces everything down to bench:end) -->"
END = "<!-- bench:end -->"
DOC = ROOT / "docs" / "benchmarks.md"


@contextlib.contextmanager
def urls(pg: str | None, *, sqlite: bool = True) -> Iterator[dict[str, str]]:
    """Fresh databases for one benchmark: a SQLite file and, if given, a PostgreSQL schema."""
    with contextlib.ExitStack() as stack:
        out: dict[str, str] = {}
        if sqlite:
            out["SQLite"] = stack.enter_context(sqlite_url())
        if pg:
            out["PostgreSQL"] = stack.enter_context(pg_schema(pg))
        yield out


def settle(pg: str | None) -> None:
    """Start a benchmark on a quiet disk: what the previous one left dirty is written now.

    Without it, PostgreSQL's checkpoint and the kernel's writeback of the previous
    benchmark's pages land in the middle of the next one.
    """
    if pg:
        db = sa.create_engine(driver_url(pg))
        try:
            with db.connect() as conn:
                conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("CHECKPOINT")
        except sa.exc.DBAPIError:  # CHECKPOINT needs a superuser or pg_checkpoint
            pass
        finally:
            db.dispose()
    os.sync()
    time.sleep(1)


def run_one(name: str, pg: str | None, quick: bool) -> Section | None:
    if name == "fire":
        import bench_fire

        with bench_fire.databases(pg) as dbs:
            return bench_fire.run(dbs, quick=quick)
    if name == "scaling":
        if not pg:
            print("scaling: skipped (needs --postgresql)", file=sys.stderr)
            return None
        import bench_scaling

        with pg_schema(pg) as url:
            return bench_scaling.run(url, quick=quick)
    if name == "peers":
        import bench_peers

        return bench_peers.run(quick=quick)
    if name == "tick":
        import bench_tick

        with urls(pg) as u:
            return bench_tick.section(u, quick=quick)  # type: ignore[no-any-return]
    if name == "memory":
        import bench_memory

        with urls(pg) as u:
            return bench_memory.run(u, quick=quick)
    if name == "http":
        import bench_http

        with urls(pg) as u:
            return bench_http.run(u, quick=quick)
    raise SystemExit(f"unknown benchmark {name!r}; choose from {', '.join(ALL)}")


def profile_section(pg: str | None, n: int) -> Section:
    """cProfile of Engine.fire (plain and deadline transitions): where the time goes."""
    import cProfile
    import pstats

    import bench_fire

    sec = Section(
        "Profile of Engine.fire",
        f"cProfile over {2 * n:,} fires per backend and case (plain: a <-> b; deadline: into and "
        "out of a state with a deadline), in µs per fire under the profiler (which inflates "
        "Python code, not the database): the functions with the most own time, and the "
        "cumulative time of the main steps.",
    )
    for case in ("plain", "deadline"):
        with urls(pg) as u:
            for backend, url in u.items():
                prof = cProfile.Profile()
                bench_fire.profiled(url, n, prof, case)
                st = pstats.Stats(prof)
                total = st.total_tt  # type: ignore[attr-defined]
                entries = st.stats  # type: ignore[attr-defined]
                own = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[:10]
                per = 1e6 / (2 * n)
                rows = [
                    [
                        _where(func),
                        f"{tt * per:.1f}",
                        f"{tt / total * 100:.1f} %",
                        f"{ct * per:.1f}",
                    ]
                    for func, (_cc, _nc, tt, ct, _callers) in own
                ]
                sec.table(
                    [f"{backend}, {case}: function", "own µs/fire", "own share", "cum. µs/fire"],
                    rows,
                )
                steps: dict[str, float] = {}
                for func, (_cc, _nc, _tt, ct, _callers) in entries.items():
                    label = _step(func)
                    if label:
                        steps[label] = max(steps.get(label, 0.0), ct)
                srows = [
                    [label, f"{ct * per:.1f}", f"{ct / total * 100:.1f} %"]
                    for label, ct in sorted(steps.items(), key=lambda kv: -kv[1])
                ]
                sec.table([f"{backend}, {case}: step", "cum. µs/fire", "share"], srows)
                sec.data[f"{backend} {case}"] = {"total_s": total}
    return sec


_STEPS = [
    ("engine/runtime.py", "fire", "Engine.fire (total)"),
    ("engine/runtime.py", "_write", "transaction scope (Engine._write)"),
    ("engine/runtime.py", "_fire_row", "check and apply (_fire_row)"),
    ("engine/runtime.py", "check", "authorize + validate (_FireContext.check)"),
    ("engine/runtime.py", "_append", "write instance + event (_append)"),
    ("engine/history.py", "event_hash", "hash chain (event_hash)"),
    ("engine/machine.py", "fire", "trigger resolution (machine event table)"),
    ("engine/store/writer.py", "transaction", "kept-connection transaction (Writer)"),
    ("engine/store/writer.py", "commit", "single-statement write + COMMIT (Pending.commit)"),
    ("engine/store/fast.py", "load", "read the instance (HotPath.load)"),
    ("engine/store/fast.py", "write", "instance + event statements (HotPath.write)"),
    ("psycopg/connection.py", "wait", "waiting on PostgreSQL (psycopg wait)"),
    ("engine/store/fast.py", "close_state", "deadlines: close the open one"),
    ("engine/store/fast.py", "insert_deadline", "deadlines: INSERT deadline + timers"),
    ("sqlalchemy/engine/base.py", "execute", "SQLAlchemy Connection.execute (all statements)"),
    ("sqlalchemy/engine/base.py", "commit", "COMMIT"),
    ("sqlalchemy/engine/base.py", "_commit_impl", "COMMIT (driver)"),
    ("sqlalchemy/engine/base.py", "_begin_impl", "BEGIN"),
    ("sqlalchemy/pool/base.py", "_checkout", "pool checkout (with pre-ping)"),
    ("sqlalchemy/pool/base.py", "_finalize_fairy", "pool checkin (reset)"),
    ("sqlalchemy/sql/elements.py", "_compile_w_cache", "statement compile cache lookup"),
    ("sqlalchemy/engine/default.py", "do_execute", "driver execute (cursor.execute)"),
    ("sqlalchemy/engine/default.py", "_init_compiled", "execution context setup"),
    ("engine/deadlines.py", "on_change", "deadlines: Scheduler.on_change (all)"),
    ("engine/deadlines.py", "create", "deadlines: create deadline + timers"),
    ("engine/deadlines.py", "timers_for", "deadlines: compute the timers' times"),
    ("engine/deadlines.py", "_insert_timers", "deadlines: INSERT timers"),
    ("engine/deadlines.py", "_cancel_timers", "deadlines: cancel timers"),
    ("sqlalchemy/sql/coercions.py", "expect", "SQLAlchemy Core statement building (coercions)"),
    ("sqlalchemy/sql/cache_key.py", "_generate_cache_key", "SQLAlchemy statement cache keys"),
]


def _step(func: tuple[str, int, str]) -> str | None:
    filename, _line, name = func
    path = filename.replace("\\", "/")
    for suffix, fname, label in _STEPS:
        if path.endswith(suffix) and name == fname:
            return label
    return None


def _where(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return f"`{name}`"
    short = "/".join(Path(filename).parts[-2:])
    return f"`{short}:{line} {name}`"


def render(
    sections: list[Section], info: dict[str, str], args: argparse.Namespace, elapsed: float
) -> str:
    lines = [
        "## Results",
        "",
        f"Run of {time.strftime('%Y-%m-%d %H:%M %Z')}: `{_command(args)}` took "
        f"{elapsed / 60:.1f} min.",
        "",
        md_table(["what", "value"], [[k, v] for k, v in info.items()], left=2),
        "",
        "### Targets",
        "",
        targets_table(sections),
        "",
    ]
    for s in sections:
        lines.append(s.markdown())
    return "\n".join(lines).rstrip() + "\n"


def _command(args: argparse.Namespace) -> str:
    parts = ["python bench/run.py"]
    if args.quick:
        parts.append("--quick")
    if args.postgresql:
        parts.append("--postgresql URL")
    if args.only:
        parts.append(f"--only {args.only}")
    if args.skip:
        parts.append(f"--skip {args.skip}")
    if args.profile:
        parts.append("--profile")
    if args.write:
        parts.append("--write")
    return " ".join(parts)


def write_doc(text: str) -> None:
    doc = DOC.read_text(encoding="utf-8") if DOC.exists() else "# Benchmarks\n\n"
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc = f"{head}{BEGIN}\n\n{text}\n{END}{tail}"
    else:
        doc = f"{doc.rstrip()}\n\n{BEGIN}\n\n{text}\n{END}\n"
    DOC.write_text(doc, encoding="utf-8")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument(
        "--postgresql",
        metavar="URL",
        default=None,
        help="PostgreSQL database to benchmark in (scratch schemas are created and dropped in it)",
    )
    p.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(ALL)}")
    p.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    p.add_argument("--quick", action="store_true", help="small sizes, one round: a smoke run")
    p.add_argument(
        "--profile",
        action="store_true",
        help="append cProfiles of Engine.fire and of the API server (top costs)",
    )
    p.add_argument(
        "--write",
        action="store_true",
        help=f"also write the results into {DOC.relative_to(ROOT)} between markers",
    )
    p.add_argument("--json", metavar="FILE", default=None, help="also dump raw numbers as JSON")
    args = p.parse_args()
    quiet()
    chosen = [b.strip() for b in args.only.split(",") if b.strip()] or ALL
    skip = {b.strip() for b in args.skip.split(",") if b.strip()}
    chosen = [b for b in chosen if b not in skip]
    info = machine()
    if args.postgresql:
        info["postgresql"] = pg_version(args.postgresql)
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    sections: list[Section] = []
    for name in chosen:
        settle(args.postgresql)
        t0 = time.perf_counter()
        print(f"[bench] {name} …", file=sys.stderr, flush=True)
        sec = run_one(name, args.postgresql, args.quick)
        if sec is not None:
            sections.append(sec)
            print(
                f"[bench] {name} done in {time.perf_counter() - t0:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    if args.profile:
        import profile_http

        print("[bench] profiles …", file=sys.stderr, flush=True)
        sections.append(profile_section(args.postgresql, 300 if args.quick else 2000))
        with urls(args.postgresql) as u:
            sections.append(profile_http.section(u, 300 if args.quick else 2000))
    elapsed = time.perf_counter() - started
    info["load average (1 min) at start / end"] = f"{load_start:.2f} / {os.getloadavg()[0]:.2f}"
    text = render(sections, info, args, elapsed)
    print(text)
    if args.write:
        write_doc(text)
        print(f"[bench] wrote {DOC}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(
            json.dumps({s.title: s.data for s in sections}, default=str, indent=1), encoding="utf-8"
        )


if __name__ == "__main__":
    main()
