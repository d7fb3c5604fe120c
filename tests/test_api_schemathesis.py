"""Property-based checks of the REST API against its own OpenAPI document (schemathesis)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from sangkien.api import ApiSettings, create_app, make_token, register_workflows
from sangkien.bootstrap import engine_from_settings
from sangkien.clock import FrozenClock
from sangkien.config import Settings
from sangkien.model import Actor

SECRET = "test-secret-for-the-api-tests-0123456789"
PROVINCE = "tinh-quang-ngai"
ADMIN_TOKEN = make_token("it.admin", ["admin", "emulation_officer"], PROVINCE, SECRET, ttl=86400)


def _build(tmp: Path) -> tuple[Any, Any]:
    clock = FrozenClock(datetime(2026, 3, 2, 2, 0, tzinfo=UTC))
    s = Settings(database_url=f"sqlite:///{tmp / 'api.db'}")
    engine = engine_from_settings(s, clock=clock)
    register_workflows(engine, s.workflow_paths())
    officer = Actor("le.thi.hoa", ["emulation_officer"], "xa-nghia-hanh")
    engine.start("campaign", actor=officer, data={"title": "Phong trào"})
    return create_app(engine=engine, api_settings=ApiSettings(jwt_secret=SECRET)), engine


def _document() -> dict[str, Any]:
    """The OpenAPI document (built once at collection, from a throwaway database)."""
    with tempfile.TemporaryDirectory(prefix="sangkien-openapi-") as tmp:
        app, engine = _build(Path(tmp))
        try:
            return dict(app.openapi())
        finally:
            engine.close()


schema = schemathesis.openapi.from_dict(_document())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The app the generated requests go to, over a database holding a campaign."""
    app, engine = _build(tmp_path_factory.mktemp("schemathesis"))
    yield app
    engine.close()


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    database=None,
    derandomize=True,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_api_conforms_to_its_openapi(case: Any, served: Any) -> None:
    """No generated request makes the server fail, and every answer matches the document."""
    case.call_and_validate(
        app=served,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        checks=[not_a_server_error, response_schema_conformance],
    )


def test_openapi_document_is_self_contained() -> None:
    """Every $ref resolves, and every error response is documented as problem+json."""
    doc = _document()
    refs: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    refs.add(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    schemas = doc["components"]["schemas"]
    assert refs and all(r.rsplit("/", 1)[-1] in schemas for r in refs)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")) and "content" in response:
                    assert list(response["content"]) == ["application/problem+json"], (
                        method,
                        path,
                        code,
                    )
    assert set(doc["components"]["securitySchemes"]) == {"bearer", "apiKey"}
