"""Settings of the REST API, read from ``SANGKIEN_*`` variables by the edges that serve it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = ["ApiSettings"]

_ASYMMETRIC = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512")
_ALLOWED_ALGORITHMS = ("HS256", "HS384", "HS512", *_ASYMMETRIC)

# A shorter HMAC key can be brute-forced offline from any token it signed (RFC 7518 §3.2).
MIN_SECRET_LENGTH = 32


def _split(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [p.strip() for p in text.split(",") if p.strip()]
    return value


class ApiSettings(BaseSettings):
    """How the REST API authenticates callers and where it listens.

    Callers authenticate with ``Authorization: Bearer <JWT>`` (HS256 with ``jwt_secret``, or
    RS256/ES256 with keys from ``jwt_jwks_file`` / ``jwt_jwks_url``) or with a static
    ``X-API-Key`` listed, hashed, in ``api_keys_file``.
    """

    model_config = SettingsConfigDict(env_prefix="SANGKIEN_", extra="ignore")

    jwt_secret: SecretStr | None = Field(
        None, description="Shared secret for HS256 tokens (at least 32 characters)."
    )
    jwt_jwks_file: Path | None = Field(
        None, description="JSON Web Key Set file with the public keys of RS256/ES256 tokens."
    )
    jwt_jwks_url: str | None = Field(
        None, description="URL of the identity provider's JWKS (keys are cached 5 minutes)."
    )
    jwt_algorithms: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["HS256", "RS256", "ES256"],
        description="Accepted token algorithms, comma-separated; HS* needs jwt_secret, the "
        "others a JWKS.",
    )
    jwt_audience: str | None = Field(None, description="Required `aud` claim, if set.")
    jwt_issuer: str | None = Field(None, description="Required `iss` claim, if set.")
    jwt_leeway: float = Field(30.0, ge=0, description="Clock skew allowed on exp/nbf (seconds).")
    api_keys_file: Path | None = Field(
        None,
        description="YAML or JSON list of {name, key_sha256, roles, unit}: static API keys, "
        "stored as SHA-256 hex digests.",
    )
    admin_role: str = Field(
        "admin", description="Role that publishes definitions and manages the outbox."
    )
    extend_roles: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["admin", "unit_head", "committee_chair"],
        description="Roles that may extend an instance's deadlines, comma-separated.",
    )
    host: str = Field("127.0.0.1", description="Interface `sangkien serve` listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port `sangkien serve` listens on.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Browser origins allowed to call the API (CORS)."
    )
    worker: bool = Field(
        False,
        description="Run the deadline runner and the outbox dispatcher inside the API "
        "process (`sangkien serve` turns it on unless --no-worker).",
    )
    worker_interval: float = Field(5.0, gt=0, description="Seconds between worker passes.")
    docs: bool = Field(True, description="Serve the interactive docs at /docs and /redoc.")
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body.")
    idempotency_lease: float = Field(
        60.0,
        gt=0,
        description="Seconds a request holding an Idempotency-Key blocks a replay of the "
        "same key before it is presumed dead.",
    )

    @field_validator("jwt_algorithms", "extend_roles", "cors_origins", mode="before")
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        out = [v.upper() for v in value]
        unknown = [v for v in out if v not in _ALLOWED_ALGORITHMS]
        if unknown:
            raise ValueError(
                f"unknown JWT algorithm(s) {', '.join(unknown)}; "
                f"use some of {', '.join(_ALLOWED_ALGORITHMS)}"
            )
        return out

    @field_validator("jwt_secret")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"SANGKIEN_JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters; make "
                "one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value

    def has_credentials(self) -> bool:
        """Return whether any way to authenticate is configured."""
        return bool(
            self.jwt_secret or self.jwt_jwks_file or self.jwt_jwks_url or self.api_keys_file
        )
