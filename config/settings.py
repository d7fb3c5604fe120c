"""Settings read from the environment at the edges (CLI, servers); the core takes objects."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "Subscriber", "shipped_workflows_dir"]


def shipped_workflows_dir() -> Path:
    """Folder holding the workflows that ship with sangkien (campaign, initiative)."""
    return Path(str(resources.files("sangkien.workflows")))


class Subscriber(BaseModel):
    """A host platform's endpoint that receives signed event webhooks."""

    url: str
    events: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Event types to send ('*' for all, or e.g. 'transition.applied').",
    )


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
    # --- notifications
    channels: str = Field(
        "log", description="Enabled delivery channels, comma-separated (log, email, webhook, ...)."
    )
    directory: str = Field(
        "", description="Directory YAML (units, people, roles, contacts); default: the demo one."
    )
    link_pattern: str = Field(
        "",
        description="Link to an instance in the host platform, e.g. "
        "'https://portal.example/sang-kien/{instance_id}'.",
    )
    smtp_host: str = Field("localhost", description="SMTP server of the email channel.")
    smtp_port: int = Field(25, description="Its port.")
    smtp_security: Literal["none", "starttls", "tls"] = Field(
        "none", description="none, starttls (port 587) or tls (port 465)."
    )
    smtp_username: str | None = Field(None, description="SMTP login, if the server asks.")
    smtp_password: SecretStr | None = Field(None, description="Its password (never logged).")
    smtp_from: str = Field("sangkien@localhost", description="Sender address of the emails.")
    smtp_timeout: float = Field(10.0, description="Seconds to wait for the SMTP server.")
    webhook_secret: SecretStr | None = Field(
        None, description="Standard Webhooks signing secret ('whsec_' + base64)."
    )
    webhook_allowed_hosts: str = Field(
        "", description="Hosts webhooks may be sent to, comma-separated (empty: none)."
    )
    webhook_timeout: float = Field(10.0, description="Seconds to wait for a webhook receiver.")
    subscribers: list[Subscriber] = Field(
        default_factory=list,
        description="Event webhooks for hosts, as JSON: "
        '[{"url": "https://host/hook", "events": ["*"]}] (signed with webhook_secret).',
    )
    outbox_max_attempts: int = Field(
        8, ge=1, description="Tries of a message before it is dead (kept for a person)."
    )
    outbox_backoff_seconds: float = Field(
        30.0, gt=0, description="Wait before the first retry; it doubles at each try (with jitter)."
    )
    outbox_backoff_max_seconds: float = Field(
        3600.0, gt=0, description="Longest wait between two tries."
    )
    outbox_lease_seconds: float = Field(
        300.0,
        gt=0,
        description="How long a worker holds the messages it claimed (renewed while it sends "
        "them); after that (the worker died) another sends them again, with the same id.",
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="Logs on stderr: json, console, or auto (console in a terminal)."
    )
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")

    @field_validator("subscribers", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            import json

            try:
                return json.loads(value) if value.strip() else []
            except json.JSONDecodeError as exc:
                raise ValueError(f"SANGKIEN_SUBSCRIBERS is not valid JSON: {exc.msg}") from None
        return value

    def channel_names(self) -> list[str]:
        return [c.strip() for c in self.channels.split(",") if c.strip()]

    def calendar_dir_paths(self) -> list[Path]:
        import os

        return [Path(p) for p in self.calendar_dirs.split(os.pathsep) if p.strip()]

    def workflow_paths(self) -> list[Path]:
        import os

        extra = [Path(p) for p in self.workflows.split(os.pathsep) if p.strip()]
        return [shipped_workflows_dir(), *extra]
