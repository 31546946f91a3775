from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable
from typing import Any

import django.db.utils
import psycopg
import psycopg.errors
import pytest
from django.db import OperationalError, connection
from django.test import Client
from procrastinate.contrib.django import app
from procrastinate.exceptions import ConnectorException
from rest_framework.test import APIClient

from core.api.exceptions import api_exception_handler, is_database_unavailable

pytestmark = pytest.mark.django_db


def test_unknown_api_route_is_a_json_404(tenant_client: Callable[[str], APIClient]) -> None:
    response = tenant_client("alice").get("/api/v1/no-such-thing")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "/api/v1/no-such-thing" in response.json()["error"]["message"]


def test_unknown_api_route_is_a_json_404_without_a_key(api_client: APIClient) -> None:
    response = api_client.post("/api/nothing/here", {"a": 1}, format="json")

    assert response.status_code == 404
    assert response["Content-Type"] == "application/json"
    assert set(response.json()["error"]) == {"code", "message", "details"}


def test_wrong_method_is_a_json_405(tenant_client: Callable[[str], APIClient]) -> None:
    response = tenant_client("alice").delete("/api/v1/me")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_healthz_answers_without_the_database(client: Client) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_is_ready_when_migrated(client: Client) -> None:
    response = client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "workers": {}},
    }


def test_openapi_schema_documents_the_api(client: Client) -> None:
    response = client.get("/api/schema/", HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    schema = response.json()
    assert "/api/v1/me" in schema["paths"]
    assert schema["components"]["securitySchemes"]["bearerKey"]["scheme"] == "bearer"
    assert schema["paths"]["/api/v1/me"]["get"]["security"] == [{"bearerKey": []}]
    assert not any(path.startswith("/api/{") for path in schema["paths"])


def test_openapi_schema_documents_the_errors_every_operation_can_answer(client: Client) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    operations = [
        (f"{method.upper()} {path}", operation)
        for path, item in schema["paths"].items()
        for method, operation in item.items()
    ]
    assert operations
    for name, operation in operations:
        assert {"400", "401", "403", "503"} <= set(operation["responses"]), name
        if "requestBody" in operation:
            assert "413" in operation["responses"], name
    entries = schema["paths"]["/api/v1/conversations/{conversation_id}/entries"]["get"]
    assert entries["responses"]["400"]["description"].startswith("after_seq, sender or cursor")


def test_api_without_a_key_is_a_401_in_the_documented_error_shape(
    client: Client, api_client: APIClient
) -> None:
    schema = client.get("/api/schema/", HTTP_ACCEPT="application/json").json()

    response = api_client.post(
        "/api/v1/messages", {"channel": "web", "content": "hi"}, format="json"
    )

    assert response.status_code == 401
    assert "401" in schema["paths"]["/api/v1/messages"]["post"]["responses"]
    assert set(response.json()["error"]) == {"code", "message", "details"}


def test_docs_ui_loads_its_assets_from_this_server(client: Client) -> None:
    response = client.get("/api/docs/")

    html = response.content.decode()
    assert response.status_code == 200
    assert "swagger-ui-bundle.js" in html
    assert "cdn." not in html
    assert "unpkg" not in html
    asset = html.split('src="')[1].split('"')[0]
    assert asset.startswith("/static/")
    assert client.get(asset).status_code == 200


def test_json_nested_too_deeply_is_a_400_parse_error(
    tenant_client: Callable[[str], APIClient],
) -> None:
    body = "[" * 100_000

    response = tenant_client("alice").post(
        "/api/v1/messages", body, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "parse_error"


@pytest.mark.django_db(transaction=True)
def test_a_job_deferred_on_a_lost_connection_is_a_503_not_a_500() -> None:
    # The connection dies the way it does when PostgreSQL is killed: the server ends it.
    with contextlib.suppress(OperationalError), connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    with pytest.raises(ConnectorException) as raised:
        app.configure_task(name="workspace.index_document", queue="indexing").defer(
            document_id=str(uuid.uuid4())
        )

    response = api_exception_handler(raised.value, {})

    assert response is not None
    assert response.status_code == 503
    assert response.data["error"]["code"] == "database_unavailable"
    connection.close()


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
def test_probes_and_metrics_refuse_other_methods_with_a_json_405(path: str) -> None:
    # A browser-like client that enforces CSRF: before, a POST got Django's HTML CSRF page.
    client = Client(enforce_csrf_checks=True)

    posted = client.post(path, REMOTE_ADDR="127.0.0.1")
    head = client.head(path, REMOTE_ADDR="127.0.0.1")

    assert posted.status_code == 405
    assert posted.json()["error"]["code"] == "method_not_allowed"
    assert posted["Allow"] == "GET, HEAD"
    assert head.status_code == 200


def test_a_refused_csrf_check_outside_the_admin_is_json(rf: Any) -> None:
    from core.error_views import csrf_failure

    response = csrf_failure(rf.post("/somewhere"), reason="CSRF cookie not set.")
    admin_page = csrf_failure(rf.post("/admin/login/"), reason="CSRF cookie not set.")

    assert response.status_code == 403
    assert json.loads(response.content)["error"]["code"] == "csrf_failed"
    assert admin_page.status_code == 403
    assert admin_page["Content-Type"].startswith("text/html")


def _raised_by_django(cause: Exception) -> Exception:
    """``cause`` as Django's database layer re-raises it (its own class, the original chained)."""
    for name in ("OperationalError", "InternalError", "DatabaseError"):
        if isinstance(cause, getattr(psycopg, name)):
            wrapped: Exception = getattr(django.db.utils, name)(*cause.args)
            wrapped.__cause__ = cause
            return wrapped
    raise AssertionError(f"not a database error: {cause!r}")


@pytest.mark.parametrize(
    ("cause", "unavailable"),
    [
        # The postmaster killed behind PgBouncer mid-BEGIN: the error came with the answer.
        (psycopg.InternalError("received 2 results from command 'BEGIN'"), True),
        (psycopg.OperationalError("terminating connection due to administrator command"), True),
        # A statement in a transaction that failed before, a server bug: the code's, a 500.
        (psycopg.errors.InFailedSqlTransaction("current transaction is aborted"), False),
        (psycopg.InternalError("cache lookup failed for relation 1234"), False),
    ],
)
def test_a_command_answered_out_of_step_is_unavailable_and_other_internal_errors_are_not(
    cause: Exception, unavailable: bool
) -> None:
    assert is_database_unavailable(_raised_by_django(cause)) is unavailable
