"""The client follows the server's schema: its generated models match the live schema's
components, and its operation table names every path and method of the schema, both ways."""

from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path
from types import ModuleType

import httpx
from ironclaw_client import OPERATIONS, AsyncClient, Client
from ironclaw_client import models as committed_models

from tests.support.servers import BASE_DIR

HTTP_METHODS = {"get", "put", "post", "delete", "patch"}


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "generate_models", BASE_DIR / "clients" / "python" / "generate_models.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _live_schema(live_url: str) -> dict:
    response = httpx.get(f"{live_url}/api/schema/", params={"format": "json"}, timeout=30)
    response.raise_for_status()
    return dict(response.json())


def test_committed_models_match_the_live_servers_schema(live_url: str) -> None:
    generated = _generator().render(_live_schema(live_url))

    committed = Path(inspect.getfile(committed_models)).read_text()

    assert generated == committed, (
        "clients/python/src/ironclaw_client/models.py is out of date: run "
        "clients/python/generate_models.py and follow the schema change in the client"
    )


def test_every_schema_operation_has_a_client_method_and_no_method_is_stale(
    live_url: str,
) -> None:
    schema = _live_schema(live_url)

    in_schema = {
        (method.upper(), path)
        for path, operations in schema["paths"].items()
        for method in operations
        if method in HTTP_METHODS
    }

    assert sorted(in_schema - OPERATIONS.keys()) == [], "operations without a client method"
    assert sorted(OPERATIONS.keys() - in_schema) == [], "client operations the API lacks"
    for name in OPERATIONS.values():
        assert callable(getattr(Client, name, None)), f"Client.{name} is missing"
        assert callable(getattr(AsyncClient, name, None)), f"AsyncClient.{name} is missing"


def test_the_sync_and_async_clients_offer_the_same_methods() -> None:
    # dir, not vars: what both inherit from their shared settings counts too.
    def public(cls: type) -> set[str]:
        return {name for name in dir(cls) if not name.startswith("_")}

    assert public(Client) == public(AsyncClient)
