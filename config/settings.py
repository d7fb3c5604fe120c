"""Settings read from the environment at the edges (CLI, servers); the core takes objects."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "shipped_workflows_dir"]


def shipped_workflows_dir() -> Path:
    """Folder holding the workflows that ship with sangkien (campaign, initiative)."""
    return Path(str(resources.files("sangkien.workflows")))


class Settings(BaseSettings):
    """Configuration of the sangkien command line and services."""

    model_config = SettingsConfigDict(env_prefix="SANGKIEN_", extra="ignore")

    database_url: str = Field(
        "sqlite:///sangkien.db", description="SQLAlchemy URL; SQLite file by default."
    )
    workflows: str = Field(
        "",
        description="Extra workflow files or folders, separated by the OS path separator; "
        "the shipped workflows are always available.",
    )
    calendar_dirs: str = Field(
        "",
        description="Folders with extra calendar data (a year's official days off), "
        "separated by the OS path separator.",
    )
    skip_late_reminders: bool = Field(
        True, description="Record a reminder due after its deadline as skipped, not send it."
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"

    def calendar_dir_paths(self) -> list[Path]:
        import os

        return [Path(p) for p in self.calendar_dirs.split(os.pathsep) if p.strip()]

    def workflow_paths(self) -> list[Path]:
        import os

        extra = [Path(p) for p in self.workflows.split(os.pathsep) if p.strip()]
        return [shipped_workflows_dir(), *extra]
