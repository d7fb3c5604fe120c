"""The ``sangkien`` command line.

Exit status: 0 success, 1 refused or invalid (one line on stderr saying why), 2 usage.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from sangkien.errors import DefinitionError, Problem, SangkienError

F = TypeVar("F", bound=Callable[..., Any])


class Failure(click.ClickException):
    """A user-facing failure: one line, exit 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _fail(message: str) -> NoReturn:
    raise Failure(message)


# --------------------------------------------------------------------------- shared options


def _settings(database_url: str | None, workflows: tuple[str, ...]) -> Any:
    from sangkien.config import Settings

    try:
        s = Settings()
    except Exception as exc:  # pydantic ValidationError on a bad SANGKIEN_* variable
        _fail(_setting_error(exc))
    if database_url:
        s.database_url = database_url
    if workflows:
        s.workflows = (
            os.pathsep.join([s.workflows, *workflows])
            if s.workflows
            else os.pathsep.join(workflows)
        )
    return s


def _setting_error(exc: Exception) -> str:
    """One line naming the SANGKIEN_* variable that is wrong, and why."""
    from sangkien.bootstrap import is_secret_name, without_password

    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        name = str((first.get("loc") or ("?",))[0])
        given = first.get("input")
        shown = (
            f" (got {without_password(given)!r})"
            if isinstance(given, str) and not is_secret_name(name)
            else ""
        )
        return f"invalid setting SANGKIEN_{name.upper()}: {first.get('msg')}{shown}"
    return f"invalid SANGKIEN_ setting: {str(exc).splitlines()[0]}"


def db_options(fn: F) -> F:
    fn = click.option(
        "--workflows",
        "-w",
        "workflows",
        multiple=True,
        help="Extra workflow file or folder (repeatable; env SANGKIEN_WORKFLOWS).",
    )(fn)
    fn = click.option(
        "--database-url",
        "database_url",
        default=None,
        help="SQLAlchemy URL (env SANGKIEN_DATABASE_URL; default sqlite:///sangkien.db).",
    )(fn)
    return fn


def actor_options(required: bool) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        fn = click.option("--unit", "unit", default=None, help="Unit the actor belongs to.")(fn)
        fn = click.option(
            "--role",
            "roles",
            multiple=True,
            help="Role the actor holds (repeatable, or comma-separated).",
        )(fn)
        fn = click.option(
            "--actor", "actor_id", required=required, default=None, help="Id of the person acting."
        )(fn)
        return fn

    return deco


def json_option(fn: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)


def _actor(actor_id: str | None, roles: Iterable[str], unit: str | None) -> Any:
    from sangkien.model import Actor

    if actor_id is None:
        return None
    flat = [r.strip() for item in roles for r in item.split(",") if r.strip()]
    return Actor(actor_id, flat, unit)


def _engine(settings: Any, *, migrate: bool | None = None) -> Any:
    from sangkien.bootstrap import engine_from_settings

    return engine_from_settings(settings, migrate=migrate)


@contextlib.contextmanager
def _opened(database_url: str | None, workflows: tuple[str, ...]) -> Iterator[Any]:
    """An Engine from the settings (and options), closed on the way out."""
    engine = _engine(_settings(database_url, workflows))
    try:
        yield engine
    finally:
        engine.close()


def _data(data: str | None, data_file: str | None, sets: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if data_file:
        try:
            text = Path(data_file).read_text(encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot read {data_file}: {exc.strerror}")
        data = text
    if data:
        try:
            parsed = json.loads(data)
        except json.JSONDecodeError as exc:
            _fail(f"--data is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
        if not isinstance(parsed, dict):
            _fail("--data must be a JSON object of field names to values")
        out.update(parsed)
    for item in sets:
        if "=" not in item:
            _fail(f"--set expects FIELD=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


def data_options(fn: F) -> F:
    fn = click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="FIELD=VALUE",
        help="One field (value parsed as JSON, else text); repeatable.",
    )(fn)
    fn = click.option("--data-file", default=None, help="File holding a JSON object of fields.")(fn)
    fn = click.option("--data", default=None, help="JSON object of fields.")(fn)
    return fn


def _find_workflow(settings: Any, name: str) -> Any:
    """Load the workflow file *name* (a path) or the file whose key is *name*."""
    from sangkien.definition import load_definition

    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        if not p.is_file():
            _fail(f"no such workflow file: {name}")
        return load_definition(p)
    candidates: list[Path] = []
    for base in settings.workflow_paths():
        if base.is_dir():
            candidates += sorted(base.glob("*.yaml")) + sorted(base.glob("*.yml"))
        elif base.is_file():
            candidates.append(base)
    best = None
    for path in candidates:
        try:
            d = load_definition(path)
        except DefinitionError:
            continue
        if d.key == name and (best is None or d.version > best.version):
            best = d
    return best


def _print_instance(inst: Any, as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if as_json:
        body = inst.to_dict()
        if extra:
            body.update(extra)
        click.echo(json.dumps(body, ensure_ascii=False, indent=2))
        return
    click.echo(
        f"{inst.id}  {inst.workflow} v{inst.workflow_version}  state={inst.state}  "
        f"unit={inst.unit}  version={inst.version}"
    )
    for k, v in inst.data.items():
        click.echo(f"  {k}: {json.dumps(v, ensure_ascii=False)}")
    if extra and extra.get("triggers"):
        click.echo("  triggers:")
        for opt in extra["triggers"]:
            mark = "ok " if opt["allowed"] else "no "
            why = f"  ({'; '.join(opt['reasons'])})" if opt["reasons"] else ""
            click.echo(f"    {mark}{opt['trigger']} -> {opt['to_state'] or '(stays)'}{why}")


# --------------------------------------------------------------------------- commands


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="sangkien")
@click.option(
    "--log-format",
    type=click.Choice(["auto", "json", "console"]),
    default=None,
    help="Log format on stderr (env SANGKIEN_LOG_FORMAT).",
)
@click.pass_context
def cli(ctx: click.Context, log_format: str | None) -> None:
    """sangkien: workflows for initiative campaigns (sáng kiến), from YAML to recognition."""
    from sangkien.logs import configure_logging

    fmt = log_format or os.environ.get("SANGKIEN_LOG_FORMAT", "auto")
    if fmt not in ("auto", "json", "console"):
        fmt = "auto"
    chosen = configure_logging(fmt, os.environ.get("SANGKIEN_LOG_LEVEL", "INFO"))  # type: ignore[arg-type]
    ctx.ensure_object(dict)["log_format"] = chosen


def _logs_to_a_person() -> bool:
    """Whether the logs go to a terminal (console format) rather than to a collector (JSON),
    where every line on stderr must be a log line."""
    obj = click.get_current_context().find_root().obj
    return not isinstance(obj, dict) or obj.get("log_format") != "json"


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--quiet", "-q", is_flag=True, help="Print problems only, no summary.")
def validate(files: tuple[str, ...], quiet: bool) -> None:
    """Check workflow FILES; print FILE:LINE:COL: error: message per problem."""
    from sangkien.adapters import known_channel_names
    from sangkien.definition import load_definition
    from sangkien.templates import TemplateStore, shipped_templates_dir
    from sangkien.validation import check_notifications

    channels = known_channel_names()
    failed = 0
    for f in files:
        problems: list[Problem]
        try:
            d = load_definition(f)
            store = TemplateStore([Path(f).parent / "templates", shipped_templates_dir()])
            problems = sorted(
                [*d.warnings, *check_notifications(d, store, channels)],
                key=lambda p: (p.line, p.column),
            )
        except DefinitionError as exc:
            problems = exc.problems
        for p in problems:
            click.echo(str(p))
        errors = sum(1 for p in problems if p.severity == "error")
        if errors:
            failed += 1
        elif not quiet:
            click.echo(f"{f}: ok", err=True)
    if failed:
        raise SystemExit(1)


@cli.command()
def schema() -> None:
    """Print the JSON Schema of the workflow language (for editors)."""
    from sangkien.definition import workflow_json_schema

    click.echo(json.dumps(workflow_json_schema(), ensure_ascii=False, indent=2))


@cli.command()
@click.argument("workflow")
@click.option("--format", "fmt", type=click.Choice(["mermaid", "dot"]), default="mermaid")
@click.option("--lang", default="vi", help="Label language (vi or en).")
@db_options
def diagram(
    workflow: str, fmt: str, lang: str, database_url: str | None, workflows: tuple[str, ...]
) -> None:
    """Draw WORKFLOW (a file or a key) as Mermaid or Graphviz DOT."""
    from sangkien.diagram import to_dot, to_mermaid

    d = _find_workflow(_settings(database_url, workflows), workflow)
    if d is None:
        _fail(f"no workflow {workflow!r} found")
    click.echo(to_mermaid(d, lang) if fmt == "mermaid" else to_dot(d, lang), nl=False)


@cli.group()
def db() -> None:
    """Database schema management."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
@db_options
def db_upgrade(revision: str, database_url: str | None, workflows: tuple[str, ...]) -> None:
    """Apply schema migrations."""
    from sangkien.store.db import create_db_engine, current_revision, upgrade

    s = _settings(database_url, workflows)
    engine = create_db_engine(s.database_url)
    try:
        upgrade(engine, revision)
        click.echo(f"database at revision {current_revision(engine)}")
    finally:
        engine.dispose()


@db.command("current")
@db_options
def db_current(database_url: str | None, workflows: tuple[str, ...]) -> None:
    """Print the database's schema revision."""
    from sangkien.store.db import create_db_engine, current_revision, head_revision

    s = _settings(database_url, workflows)
    engine = create_db_engine(s.database_url)
    try:
        cur = current_revision(engine)
    finally:
        engine.dispose()
    click.echo(f"{cur or 'empty'} (head {head_revision()})")


@cli.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@db_options
def publish(files: tuple[str, ...], database_url: str | None, workflows: tuple[str, ...]) -> None:
    """Register workflow FILES so instances can start on them."""
    from sangkien.definition import load_definition

    with _opened(database_url, workflows) as engine:
        for f in files:
            d = engine.register(load_definition(f))
            click.echo(f"{d.key} v{d.version} {d.content_hash[:12]} published")


@cli.command()
@click.argument("workflow")
@actor_options(required=True)
@data_options
@click.option("--parent", default=None, help="Id of the parent instance (e.g. the campaign).")
@click.option("--ref", "external_ref", default=None, help="Reference in the host system.")
@click.option("--comment", default=None)
@click.option("--idempotency-key", default=None)
@click.option(
    "--in-unit", "in_unit", default=None, help="Unit of the new instance (default: --unit)."
)
@json_option
@db_options
def start(
    workflow: str,
    actor_id: str,
    roles: tuple[str, ...],
    unit: str | None,
    data: str | None,
    data_file: str | None,
    sets: tuple[str, ...],
    parent: str | None,
    external_ref: str | None,
    comment: str | None,
    idempotency_key: str | None,
    in_unit: str | None,
    as_json: bool,
    database_url: str | None,
    workflows: tuple[str, ...],
) -> None:
    """Start an instance of WORKFLOW (a key or a YAML file)."""
    s = _settings(database_url, workflows)
    values = _data(data, data_file, sets)
    engine = _engine(s)
    try:
        d = _find_workflow(s, workflow)
        if d is not None:
            engine.register(d)
            key = d.key
        else:
            key = workflow
        inst = engine.start(
            key,
            actor=_actor(actor_id, roles, unit),
            unit=in_unit,
            data=values,
            parent=parent,
            external_ref=external_ref,
            comment=comment,
            idempotency_key=idempotency_key,
        )
    finally:
        engine.close()
    _print_instance(inst, as_json)


@cli.command()
@click.argument("instance_id")
@click.argument("trigger")
@actor_options(required=True)
@data_options
@click.option("--comment", default=None, help="Reason or note recorded in history.")
@click.option("--idempotency-key", default=None)
@click.option(
    "--expected-version",
    type=int,
    default=None,
    help="Refuse if the instance changed since this version.",
)
@json_option
@db_options
def fire(
    instance_id: str,
    trigger: str,
    actor_id: str,
    roles: tuple[str, ...],
    unit: str | None,
    data: str | None,
    data_file: str | None,
    sets: tuple[str, ...],
    comment: str | None,
    idempotency_key: str | None,
    expected_version: int | None,
    as_json: bool,
    database_url: str | None,
    workflows: tuple[str, ...],
) -> None:
    """Fire TRIGGER on INSTANCE_ID as the given actor."""
    s = _settings(database_url, workflows)
    values = _data(data, data_file, sets)
    engine = _engine(s)
    try:
        inst = engine.fire(
            instance_id,
            trigger,
            actor=_actor(actor_id, roles, unit),
            data=values,
            comment=comment,
            idempotency_key=idempotency_key,
            expected_version=expected_version,
        )
    finally:
        engine.close()
    _print_instance(inst, as_json)


@cli.command()
@click.argument("instance_id")
@actor_options(required=False)
@json_option
@db_options
def show(
    instance_id: str,
    actor_id: str | None,
    roles: tuple[str, ...],
    unit: str | None,
    as_json: bool,
    database_url: str | None,
    workflows: tuple[str, ...],
) -> None:
    """Show an instance; with --actor, also the triggers that actor may fire now."""
    engine = _engine(_settings(database_url, workflows))
    actor = _actor(actor_id, roles, unit)
    try:
        inst = engine.get(instance_id, actor=actor)
        extra = None
        if actor is not None:
            extra = {"triggers": [o.to_dict() for o in engine.available(instance_id, actor=actor)]}
    finally:
        engine.close()
    _print_instance(inst, as_json, extra)


@cli.command()
@click.argument("instance_id")
@actor_options(required=True)
@json_option
@db_options
def triggers(
    instance_id: str,
    actor_id: str,
    roles: tuple[str, ...],
    unit: str | None,
    as_json: bool,
    database_url: str | None,
    workflows: tuple[str, ...],
) -> None:
    """List the triggers the actor may fire now, with the reason for each refused one."""
    with _opened(database_url, workflows) as engine:
        options = engine.available(instance_id, actor=_actor(actor_id, roles, unit))
    if as_json:
        click.echo(json.dumps([o.to_dict() for o in options], ensure_ascii=False, indent=2))
        return
    for o in options:
        why = f"  ({'; '.join(o.reasons)})" if o.reasons else ""
        click.echo(f"{'ok' if o.allowed else 'no'}  {o.trigger} -> {o.to_state or '(stays)'}{why}")


@cli.command()
@click.argument("instance_id")
@json_option
@db_options
def history(
    instance_id: str, as_json: bool, database_url: str | None, workflows: tuple[str, ...]
) -> None:
    """Print an instance's history, oldest first."""
    with _opened(database_url, workflows) as engine:
        events = engine.history(instance_id)
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in events], ensure_ascii=False, indent=2))
        return
    for e in events:
        move = f"{e.from_state or '-'} -> {e.to_state}"
        note = f"  “{e.comment}”" if e.comment else ""
        click.echo(
            f"{e.seq:>3}  {e.at:%Y-%m-%d %H:%M:%S}  {e.kind:<10} {e.trigger or '':<18} "
            f"{move:<40} by {e.actor_id}{note}"
        )


@cli.command("list")
@click.option("--workflow", default=None)
@click.option("--state", default=None)
@click.option("--unit", default=None)
@click.option("--parent", default=None)
@click.option("--after", default=None, help="Cursor: the last id of the previous page.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 1000))
@json_option
@db_options
def list_(
    workflow: str | None,
    state: str | None,
    unit: str | None,
    parent: str | None,
    after: str | None,
    limit: int,
    as_json: bool,
    database_url: str | None,
    workflows: tuple[str, ...],
) -> None:
    """List instances."""
    with _opened(database_url, workflows) as engine:
        items = engine.list(
            workflow=workflow, state=state, unit=unit, parent=parent, after=after, limit=limit
        )
    if as_json:
        click.echo(json.dumps([i.to_dict() for i in items], ensure_ascii=False, indent=2))
        return
    for i in items:
        title = i.data.get("title", "")
        click.echo(f"{i.id}  {i.workflow:<12} {i.state:<22} {i.unit:<16} {title}")


@cli.command()
@click.argument("instance_id", required=False)
@db_options
def verify(instance_id: str | None, database_url: str | None, workflows: tuple[str, ...]) -> None:
    """Verify the hash chains of the history (one instance or all); exit 1 on tampering."""
    with _opened(database_url, workflows) as engine:
        breaks = engine.verify(instance_id)
    for b in breaks:
        click.echo(str(b))
    if breaks:
        _fail(f"history tampered: {len(breaks)} problem(s) found")
    click.echo("history verified: every chain intact")


@cli.command("settings")
@click.option(
    "--markdown", is_flag=True, help="A Markdown table of the defaults (as in docs/operations.md)."
)
def settings_command(markdown: bool) -> None:
    """List every SANGKIEN_* environment variable: its default, its value here, its meaning.

    Secrets show as ***. Every sangkien process (serve, worker, the CLI) reads these.
    """
    from sangkien.bootstrap import settings_reference

    try:
        docs = settings_reference(values=not markdown)
    except Exception as exc:  # pydantic ValidationError on a bad SANGKIEN_* variable
        _fail(_setting_error(exc))
    if markdown:
        click.echo("| variable | default | meaning |")
        click.echo("|---|---|---|")
        for d in docs:
            click.echo(f"| `{d.variable}` | `{d.default}` | {d.meaning} |")
        return
    width = max(len(d.variable) for d in docs)
    for d in docs:
        mark = "" if d.value == d.default else "   (set)"
        click.echo(f"{d.variable:<{width}}  {d.value}{mark}")
        if d.meaning:
            click.echo(f"{'':<{width}}    {d.meaning}")


@cli.command()
@click.option("--lang", default="vi", help="Label language (vi or en).")
@click.option(
    "--keep",
    "keep",
    default=None,
    type=click.Path(dir_okay=False),
    help="Keep the demo database at this path instead of a temporary file.",
)
def demo(lang: str, keep: str | None) -> None:
    """Run a campaign and a few initiatives through their lifecycle on a temporary database."""
    from sangkien.demo import run_demo

    run_demo(lang=lang, keep=keep, echo=click.echo)


@cli.command()
@click.option("--interval", default=5.0, show_default=True, help="Seconds between passes.")
@click.option("--batch", default=200, show_default=True, help="Timers claimed per transaction.")
@click.option("--once", is_flag=True, help="Run one pass (catching up on everything due) and exit.")
@db_options
def worker(
    interval: float, batch: int, once: bool, database_url: str | None, workflows: tuple[str, ...]
) -> None:
    """Run the deadline runner (reminders, overdue notices, escalations) and deliver the
    outbox, every --interval seconds (Ctrl-C or SIGTERM stops)."""
    from sangkien.bootstrap import dispatcher_from_settings
    from sangkien.worker import Worker

    s = _settings(database_url, workflows)
    engine = _engine(s)
    try:
        dispatcher = dispatcher_from_settings(engine, s)
        w = Worker(engine, interval=interval, batch=batch, dispatcher=dispatcher)
        if once:
            result = engine.tick(limit=batch)
            try:
                sent = dispatcher.run(limit=batch)
            finally:
                dispatcher.settle()  # what a pass the database cut short still holds
            click.echo(
                f"fired {result.fired}, skipped {result.skipped}, "
                f"cancelled {result.cancelled}, retried {result.retried}"
            )
            click.echo(
                f"delivered {sent.delivered}, retried {sent.retried}, dead {sent.dead}",
                err=True,
            )
            return
        if _logs_to_a_person():  # a collector gets the worker.started line alone
            click.echo(
                f"sangkien worker on {engine.dialect}: every {interval:g}s (Ctrl-C to stop)",
                err=True,
            )
        w.run_forever()
    finally:
        engine.close()


def _deadline_table(items: list[Any], as_json: bool, empty: str) -> None:
    if as_json:
        click.echo(json.dumps([d.to_dict() for d in items], ensure_ascii=False, indent=2))
        return
    if not items:
        click.echo(empty)
        return
    for d in items:
        if d.overdue:
            hours = int(d.late_by.total_seconds() // 3600)
            late = f"late {d.working_days_late} working day(s) ({hours // 24}d {hours % 24}h)"
        else:
            left = -d.late_by
            late = f"due in {left.days}d {left.seconds // 3600}h"
        step = (
            f"escalation {d.escalation_step}/{d.escalation_steps}"
            if d.escalation_steps
            else "no escalation"
        )
        title = f"  {d.title}" if d.title else ""
        click.echo(
            f"{d.instance_id}  {d.unit:<16} {d.workflow:<11} {d.kind}:{d.name:<20} "
            f"due {d.due_at:%Y-%m-%d %H:%M}Z  {late}  {step}{title}"
        )


@cli.command()
@click.option("--unit", default=None, help="Only this unit.")
@click.option("--workflow", default=None, help="Only this workflow.")
@json_option
@db_options
def overdue(
    unit: str | None,
    workflow: str | None,
    as_json: bool,
    database_url: str | None,
    workflows: tuple[str, ...],
) -> None:
    """List what is overdue: how late, and the current escalation step."""
    with _opened(database_url, workflows) as engine:
        items = engine.overdue(unit=unit, workflow=workflow)
    _deadline_table(items, as_json, "nothing is overdue")


@cli.command("due-soon")
@click.option("--within", default="5 working days", show_default=True)
@click.option("--unit", default=None)
@click.option("--workflow", default=None)
@json_option
@db_options
def due_soon(
    within: str,
    unit: str | None,
    workflow: str | None,
    as_json: bool,
    database_url: str | None,
    workflows: tuple[str, ...],
) -> None:
    """List deadlines falling due within a period."""
    with _opened(database_url, workflows) as engine:
        items = engine.due_soon(within, unit=unit, workflow=workflow)
    _deadline_table(items, as_json, f"nothing falls due within {within}")


@cli.command()
@click.argument("instance_id")
@json_option
@db_options
def deadlines(
    instance_id: str, as_json: bool, database_url: str | None, workflows: tuple[str, ...]
) -> None:
    """Show an instance's open deadlines."""
    with _opened(database_url, workflows) as engine:
        items = engine.deadlines(instance_id)
    _deadline_table(items, as_json, "no open deadline")


@cli.command()
@click.argument("instance_id", required=False)
@click.option(
    "--campaign",
    "parent",
    default=None,
    help="Extend every instance under this parent (a whole campaign).",
)
@click.option("--by", default=None, help="Period to add, e.g. '10 working days'.")
@click.option("--until", "until", default=None, help="New due date (YYYY-MM-DD).")
@click.option("--reason", required=True, help="Why; recorded in history.")
@click.option("--deadline", default=None, help="Only this deadline ('state' or a clock name).")
@actor_options(required=True)
@db_options
def extend(
    instance_id: str | None,
    parent: str | None,
    by: str | None,
    until: str | None,
    reason: str,
    deadline: str | None,
    actor_id: str,
    roles: tuple[str, ...],
    unit: str | None,
    database_url: str | None,
    workflows: tuple[str, ...],
) -> None:
    """Extend a deadline for one instance, or for a whole campaign with --campaign."""
    from datetime import date as _date

    if (instance_id is None) == (parent is None):
        raise click.UsageError("give INSTANCE_ID or --campaign, not both")
    try:
        until_d = _date.fromisoformat(until) if until else None
    except ValueError:
        _fail(f"--until {until!r} is not a date YYYY-MM-DD")
    engine = _engine(_settings(database_url, workflows))
    actor = _actor(actor_id, roles, unit)
    try:
        if parent:
            n = engine.extend_children(
                parent, actor=actor, reason=reason, by=by, until=until_d, deadline=deadline
            )
            click.echo(f"extended the open deadlines of {n} instance(s)")
        else:
            assert instance_id is not None
            items = engine.extend_deadline(
                instance_id, actor=actor, reason=reason, by=by, until=until_d, deadline=deadline
            )
            _deadline_table(items, False, "no open deadline")
    finally:
        engine.close()


@cli.command("recompute-deadlines")
@click.option(
    "--calendar-dir",
    "calendar_dirs",
    multiple=True,
    help="Extra calendar data folder (repeatable; env SANGKIEN_CALENDAR_DIRS).",
)
@db_options
def recompute_deadlines(
    calendar_dirs: tuple[str, ...], database_url: str | None, workflows: tuple[str, ...]
) -> None:
    """Recompute open deadlines after calendar data changed (each move is logged)."""
    from sangkien.runtime import Engine

    s = _settings(database_url, workflows)
    dirs = [*s.calendar_dir_paths(), *calendar_dirs]
    engine = Engine(s.database_url, calendar_dirs=dirs)
    try:
        moved = engine.recompute_deadlines()
    finally:
        engine.close()
    for m in moved:
        click.echo(f"{m['instance_id']}  {m['deadline']}  {m['from']} -> {m['to']}")
    click.echo(f"{len(moved)} deadline(s) moved")


@cli.command(name="simulate")
@click.argument("scenario", type=click.Path(dir_okay=False))
@click.option("--lang", default="vi", help="Label language (vi or en).")
@json_option
@db_options
def simulate_cmd(
    scenario: str, lang: str, as_json: bool, database_url: str | None, workflows: tuple[str, ...]
) -> None:
    """Run a scenario against a moving clock and print the timeline of deadlines."""
    from sangkien.simulate import format_entry, simulate

    entries = simulate(scenario, extra_workflows=[Path(w) for w in workflows], lang=lang)
    if as_json:
        click.echo(json.dumps([e.to_dict() for e in entries], ensure_ascii=False, indent=2))
        return
    from sangkien.calendar import load_calendar

    tz = load_calendar().timezone
    for e in entries:
        click.echo(format_entry(e, tz))


@cli.group()
def outbox() -> None:
    """Messages waiting, delivered or dead (notifications and event webhooks)."""


@outbox.command("list")
@click.option(
    "--status", type=click.Choice(["pending", "delivering", "delivered", "dead"]), default=None
)
@click.option("--instance", "instance_id", default=None)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, 10000))
@json_option
@db_options
def outbox_list(
    status: str | None,
    instance_id: str | None,
    limit: int,
    as_json: bool,
    database_url: str | None,
    workflows: tuple[str, ...],
) -> None:
    """List messages, newest first (with counts per status)."""
    from sangkien.outbox import counts, list_messages

    with _opened(database_url, workflows) as engine:
        items = list_messages(engine, status=status, instance_id=instance_id, limit=limit)
        totals = counts(engine)
    if as_json:
        click.echo(
            json.dumps(
                {"counts": totals, "messages": [m.to_dict() for m in items]},
                ensure_ascii=False,
                indent=2,
            )
        )
        return
    click.echo("  ".join(f"{k}: {v}" for k, v in sorted(totals.items())) or "outbox is empty")
    for m in items:
        err = f"  ({m.last_error})" if m.last_error else ""
        click.echo(
            f"{m.id}  {m.status:<10} {m.channel:<8} {m.kind:<12} {m.recipient:<32} "
            f"tries={m.attempts}  {m.subject[:50]}{err}"
        )


@outbox.command("show")
@click.argument("message_id")
@json_option
@db_options
def outbox_show(
    message_id: str, as_json: bool, database_url: str | None, workflows: tuple[str, ...]
) -> None:
    """Show one message with its body or payload."""
    from sangkien.outbox import get_message

    with _opened(database_url, workflows) as engine:
        m = get_message(engine, message_id)
    if as_json:
        click.echo(json.dumps(m.to_dict(full=True), ensure_ascii=False, indent=2))
        return
    for k, v in m.to_dict().items():
        click.echo(f"{k}: {v}")
    click.echo("")
    click.echo(m.body or json.dumps(dict(m.payload), ensure_ascii=False, indent=2))


@outbox.command("retry")
@click.argument("message_ids", nargs=-1)
@click.option("--instance", "instance_id", default=None, help="Every dead message of one instance.")
@click.option("--all-dead", is_flag=True, help="Every dead message.")
@db_options
def outbox_retry(
    message_ids: tuple[str, ...],
    instance_id: str | None,
    all_dead: bool,
    database_url: str | None,
    workflows: tuple[str, ...],
) -> None:
    """Queue dead messages again (attempts reset)."""
    from sangkien.outbox import retry_dead

    if not (message_ids or instance_id or all_dead):
        raise click.UsageError("give MESSAGE_IDS, --instance or --all-dead")
    with _opened(database_url, workflows) as engine:
        n = retry_dead(engine, ids=message_ids, instance_id=instance_id, all_dead=all_dead)
    click.echo(f"{n} message(s) queued again")


def _attach_commands() -> None:
    from sangkien.api.cli import serve, token
    from sangkien.calendar_cli import calendar

    cli.add_command(calendar)
    cli.add_command(serve)
    cli.add_command(token)


_attach_commands()


# --------------------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> None:
    """Console entry point: never a traceback for a user error."""
    try:
        cli.main(args=argv, prog_name="sangkien", standalone_mode=False)
    except click.exceptions.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except click.Abort:
        click.echo("aborted", err=True)
        raise SystemExit(1) from None
    except click.ClickException as exc:
        exc.show()
        raise SystemExit(exc.exit_code) from None
    except DefinitionError as exc:
        for p in exc.problems:
            click.echo(str(p), err=True)
        raise SystemExit(1) from None
    except SangkienError as exc:
        click.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except SystemExit:
        raise
    except Exception as exc:  # last resort: one line, the details only on request
        if os.environ.get("SANGKIEN_DEBUG"):
            raise
        click.echo(
            f"error: unexpected {type(exc).__name__}: {exc} (set SANGKIEN_DEBUG=1 for details)",
            err=True,
        )
        raise SystemExit(1) from None
    raise SystemExit(0)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
