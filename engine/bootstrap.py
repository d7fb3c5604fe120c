"""Build an Engine and its adapters from Settings: the one place the edges wire things up."""

from __future__ import annotations

from typing import Any

from sangkien.runtime import Engine

__all__ = ["adapters_from_settings", "dispatcher_from_settings", "engine_from_settings"]


def engine_from_settings(settings: Any, **overrides: Any) -> Engine:
    """An Engine configured from *settings* (database, calendars, directory, templates)."""
    from sangkien.directory import load_directory
    from sangkien.templates import TemplateStore, shipped_templates_dir

    dirs = [p / "templates" for p in settings.workflow_paths() if (p / "templates").is_dir()]
    if shipped_templates_dir() not in dirs:
        dirs.append(shipped_templates_dir())
    kwargs: dict[str, Any] = {
        "calendar_dirs": settings.calendar_dir_paths(),
        "skip_late_reminders": settings.skip_late_reminders,
        "directory": load_directory(settings.directory or None),
        "templates": TemplateStore(dirs),
        "channels": settings.channel_names(),
        "link_pattern": settings.link_pattern,
        "subscribers": settings.subscribers,
    }
    kwargs.update(overrides)
    return Engine(settings.database_url, **kwargs)


def adapters_from_settings(settings: Any) -> dict[str, Any]:
    """The delivery adapters for the enabled channels (fails loudly on misconfiguration)."""
    from sangkien.adapters import load_adapters

    return load_adapters(settings)


def dispatcher_from_settings(engine: Engine, settings: Any, **overrides: Any) -> Any:
    """A Dispatcher for *engine* using the enabled adapters and the retry settings."""
    from sangkien.outbox import Dispatcher

    kwargs: dict[str, Any] = {
        "max_attempts": settings.outbox_max_attempts,
        "backoff": settings.outbox_backoff_seconds,
        "backoff_max": settings.outbox_backoff_max_seconds,
        "lease": settings.outbox_lease_seconds,
    }
    kwargs.update(overrides)
    return Dispatcher(engine, adapters_from_settings(settings), **kwargs)
