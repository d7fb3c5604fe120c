"""``sangkien serve`` and ``sangkien token`` (attached to the main CLI with add_command)."""

from __future__ import annotations

import os

import click

from sangkien.errors import DefinitionError, SangkienError

__all__ = ["serve", "token"]


class _Failure(click.ClickException):
    """One line on stderr, exit 1."""

    exit_code = 1

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _settings(database_url: str | None) -> object:
    from sangkien.config import Settings

    try:
        s = Settings()
    except Exception as exc:  # pydantic ValidationError on a bad SANGKIEN_* variable
        raise _Failure(f"invalid SANGKIEN_ setting: {str(exc).splitlines()[0]}") from None
    if database_url:
        s.database_url = database_url
    return s


def _api_settings() -> object:
    from sangkien.api.settings import ApiSettings

    try:
        return ApiSettings()
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise _Failure(f"invalid SANGKIEN_ API setting: {' '.join(lines[:3])}") from None


@click.command()
@click.option("--host", default=None, help="Interface (env SANGKIEN_HOST; default 127.0.0.1).")
@click.option(
    "--port",
    default=None,
    type=click.IntRange(0, 65535),
    help="Port (env SANGKIEN_PORT; default 8000).",
)
@click.option("--no-worker", is_flag=True, help="Do not run the deadline runner and dispatcher.")
@click.option(
    "--database-url",
    default=None,
    help="SQLAlchemy URL (env SANGKIEN_DATABASE_URL; default sqlite:///sangkien.db).",
)
def serve(host: str | None, port: int | None, no_worker: bool, database_url: str | None) -> None:
    """Serve the REST API (OpenAPI docs at /docs) with the worker in the same process."""
    from sangkien.api.server import run

    settings = _settings(database_url)
    api_settings = _api_settings()
    try:
        run(settings, api_settings, host, port, worker=not no_worker)  # type: ignore[arg-type]
    except DefinitionError as exc:
        for p in exc.problems:
            click.echo(str(p), err=True)
        raise SystemExit(1) from None
    except SangkienError as exc:
        raise _Failure(str(exc)) from None
    except OSError as exc:  # address in use, permission denied
        raise _Failure(f"cannot serve: {exc.strerror or exc}") from None


@click.command()
@click.option("--sub", required=True, help="Person id (the token's subject).")
@click.option(
    "--role",
    "roles",
    multiple=True,
    help="Role (repeatable or comma-separated); default: the person's roles in the directory.",
)
@click.option(
    "--unit",
    "units",
    multiple=True,
    help="Unit (repeatable); default: where the person holds those roles in the directory.",
)
@click.option("--ttl", default=3600, show_default=True, type=click.IntRange(1), help="Seconds.")
def token(sub: str, roles: tuple[str, ...], units: tuple[str, ...], ttl: int) -> None:
    """Print a bearer token (HS256) for a person of the directory.

    Signed with SANGKIEN_JWT_SECRET, or with the demo secret that `sangkien serve` accepts on
    a loopback address when no credential is configured.
    """
    from sangkien.api.tokens import DEMO_SECRET, make_token

    flat = [r.strip() for item in roles for r in item.split(",") if r.strip()]
    unit_list = [u.strip() for item in units for u in item.split(",") if u.strip()]
    if not flat or not unit_list:
        held = _directory_roles(sub)
        if not flat:
            flat = sorted({r for r, _ in held})
        if not unit_list:
            unit_list = list(dict.fromkeys(u for r, u in held if r in flat))
        if not flat and not unit_list:
            raise _Failure(f"{sub!r} holds no role in the directory; give --role and --unit")
    secret = os.environ.get("SANGKIEN_JWT_SECRET") or DEMO_SECRET
    if secret == DEMO_SECRET:
        click.echo(
            "note: signed with the DEMO secret (accepted only by a local `sangkien serve` "
            "without credentials); set SANGKIEN_JWT_SECRET for a real one",
            err=True,
        )
    unit: str | list[str] | None = unit_list[0] if len(unit_list) == 1 else (unit_list or None)
    click.echo(make_token(sub, flat, unit, secret, ttl))


def _directory_roles(sub: str) -> list[tuple[str, str]]:
    from sangkien.directory import DirectoryError, load_directory

    path = os.environ.get("SANGKIEN_DIRECTORY") or None
    try:
        directory = load_directory(path)
    except DirectoryError as exc:
        raise _Failure(str(exc)) from None
    return directory.roles_of(sub)
