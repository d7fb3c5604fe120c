"""The sangkien REST API (FastAPI): the engine's operations over HTTP, with OpenAPI.

    from sangkien.api import create_app
    app = create_app()          # reads Settings and ApiSettings from SANGKIEN_* when called

Run it with ``sangkien serve`` (API and worker in one process), with any ASGI server
(``uvicorn --factory sangkien.api:create_app``), or include :func:`create_router` in a host
FastAPI app. Nothing is read from the environment, and no database is touched, at import.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sangkien.api.app import create_app, create_router, register_workflows
    from sangkien.api.auth import hash_api_key
    from sangkien.api.context import ApiContext
    from sangkien.api.middleware import RequestContextMiddleware
    from sangkien.api.problems import ApiError
    from sangkien.api.settings import ApiSettings
    from sangkien.api.tokens import DEMO_SECRET, make_token

_WHERE = {
    "create_app": "app",
    "create_router": "app",
    "register_workflows": "app",
    "hash_api_key": "auth",
    "ApiContext": "context",
    "RequestContextMiddleware": "middleware",
    "ApiError": "problems",
    "ApiSettings": "settings",
    "DEMO_SECRET": "tokens",
    "make_token": "tokens",
}


def __getattr__(name: str) -> Any:
    # FastAPI loads only when the API is used, so the command line stays quick to start
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"sangkien.api.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'sangkien.api' has no attribute {name!r}")


__all__ = [
    "DEMO_SECRET",
    "ApiContext",
    "ApiError",
    "ApiSettings",
    "RequestContextMiddleware",
    "create_app",
    "create_router",
    "hash_api_key",
    "make_token",
    "register_workflows",
]
