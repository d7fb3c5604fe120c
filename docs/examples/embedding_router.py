"""Embed the sangkien REST API in a host FastAPI application.

The host keeps its own app, routes and authentication front door; sangkien contributes its
/v1 routes under a prefix of the host's choosing. The routes answer their own errors as
problem+json, so the host installs no exception handler. Run it:

    python docs/examples/embedding_router.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.testclient import TestClient

from sangkien import Engine
from sangkien.api import ApiSettings, create_app, create_router, make_token
from sangkien.config import shipped_workflows_dir
from sangkien.directory import load_directory

# The host's identity provider signs tokens with this secret (or publishes a JWKS:
# ApiSettings(jwt_jwks_url="https://sso.example.gov.vn/.well-known/jwks.json")).
SECRET = "host-platform-shared-secret-0123456789abcdef"  # noqa: S105 (an example)


def build_host_app(database_url: str) -> tuple[FastAPI, Engine]:
    """The host's app with sangkien's routes under /workflow and its ops app under /sangkien."""
    engine = Engine(
        database_url,
        workflows=sorted(shipped_workflows_dir().glob("*.yaml")),
        directory=load_directory(),  # or the host's own Directory (units, people, roles)
    )
    api_settings = ApiSettings(jwt_secret=SECRET)

    host = FastAPI(title="Cổng dịch vụ công (host)")

    @host.get("/portal/ping")
    def ping() -> dict[str, str]:
        return {"portal": "ok"}

    # 1. Only the /v1 routes, inside the host's own OpenAPI document:
    host.include_router(create_router(engine, api_settings), prefix="/workflow")
    # 2. Or the whole sangkien app (its own /docs, /healthz, /readyz, /metrics):
    host.mount("/sangkien", create_app(engine=engine, api_settings=api_settings))
    return host, engine


def bearer(sub: str, roles: list[str], unit: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(sub, roles, unit, SECRET)}"}


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sangkien-host-") as tmp:
        host, engine = build_host_app(f"sqlite:///{Path(tmp) / 'host.db'}")
        try:
            client = TestClient(host)
            officer = bearer("le.thi.hoa", ["emulation_officer"], "xa-nghia-hanh")
            started = client.post(
                "/workflow/v1/instances",
                json={"workflow": "campaign", "data": {"title": "Phong trào thi đua 2026"}},
                headers={**officer, "Idempotency-Key": "portal-campaign-2026"},
            )
            print("start:", started.status_code, started.json()["state"])
            refused = client.post(
                f"/workflow/v1/instances/{started.json()['id']}/fire",
                json={"trigger": "launch", "data": {}},
                headers=officer,
            )
            print("launch by the officer:", refused.status_code, refused.json()["reasons"])
            ping = client.get("/portal/ping").json()
            ready = client.get("/sangkien/readyz").json()
            print("host route:", ping, "| sangkien ready:", ready)
            paths = sorted(p for p in host.openapi()["paths"] if p.startswith("/workflow"))
            print("host OpenAPI now lists", len(paths), "sangkien paths, e.g.", paths[0])
            assert started.status_code == 201 and started.json()["state"] == "draft"
            assert refused.status_code == 403
            assert refused.headers["content-type"] == "application/problem+json"
            assert ready["status"] == "ready" and ping == {"portal": "ok"}
            return {"instance": started.json()["id"], "paths": paths}
        finally:
            engine.close()


if __name__ == "__main__":
    main()
