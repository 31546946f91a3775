from __future__ import annotations

import hashlib
from collections.abc import Callable
from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.test import Client
from rest_framework.test import APIClient

from accounts.models import ApiKey
from accounts.services import CreatedApiKey, api_key_create, api_key_revoke
from conversations.models import ConversationEntry
from conversations.services import message_handle
from core.errors import InvalidInput

pytestmark = pytest.mark.django_db


def test_api_key_is_stored_only_as_its_hash() -> None:
    created = api_key_create(name="laptop", user_id="alice")

    stored = ApiKey.objects.get(pk=created.api_key.pk)
    assert created.raw_key not in {stored.key_hash, stored.prefix, stored.name}
    assert stored.key_hash == hashlib.sha256(created.raw_key.encode()).hexdigest()
    assert created.raw_key.startswith(stored.prefix)
    assert len(created.raw_key) > 40


def test_each_api_key_is_different() -> None:
    keys = {api_key_create(name="k", user_id="alice").raw_key for _ in range(5)}

    assert len(keys) == 5


def test_tenant_key_requires_a_valid_user_id() -> None:
    with pytest.raises(InvalidInput) as error:
        api_key_create(name="k", user_id="bad\nid")

    assert "user_id" in error.value.details
    assert ApiKey.objects.count() == 0


def test_database_refuses_a_tenant_key_without_user_id() -> None:
    with pytest.raises(IntegrityError), transaction.atomic():
        ApiKey.objects.create(name="k", user_id="", is_service=False, prefix="x", key_hash="h")


def test_me_returns_the_tenant_of_a_tenant_key(api_client: APIClient) -> None:
    created = api_key_create(name="laptop", user_id="alice")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}")

    response = api_client.get("/api/v1/me")

    assert response.status_code == 200
    assert response.json() == {"user_id": "alice", "key_name": "laptop", "service": False}


def test_service_key_acts_for_the_tenant_in_x_user_id(api_client: APIClient) -> None:
    created = api_key_create(name="bridge", is_service=True)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}", HTTP_X_USER_ID="bob")

    response = api_client.get("/api/v1/me")

    assert response.status_code == 200
    assert response.json() == {"user_id": "bob", "key_name": "bridge", "service": True}


def _assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    error: dict[str, Any] = body["error"]
    return error


def test_missing_key_is_401_json(api_client: APIClient) -> None:
    response = api_client.get("/api/v1/me")

    _assert_error(response, 401, "not_authenticated")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_wrong_key_is_401_json(
    api_client: APIClient, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    make_api_key("alice")
    api_client.credentials(HTTP_AUTHORIZATION="Bearer ick_not-a-real-key")

    response = api_client.get("/api/v1/me")

    _assert_error(response, 401, "authentication_failed")


def test_revoked_key_is_401_json(api_client: APIClient) -> None:
    created = api_key_create(name="old", user_id="alice")
    api_key_revoke(api_key_id=created.api_key.pk)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}")

    response = api_client.get("/api/v1/me")

    _assert_error(response, 401, "authentication_failed")


@pytest.mark.parametrize(
    "header", ["Basic YWxpY2U6eA==", "Bearer", "Bearer two parts", "Token abc"]
)
def test_malformed_authorization_header_is_401_json(api_client: APIClient, header: str) -> None:
    api_client.credentials(HTTP_AUTHORIZATION=header)

    response = api_client.get("/api/v1/me")

    _assert_error(response, 401, "authentication_failed")


def test_service_key_without_x_user_id_is_400_json(api_client: APIClient) -> None:
    created = api_key_create(name="bridge", is_service=True)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}")

    response = api_client.get("/api/v1/me")

    error = _assert_error(response, 400, "missing_user_id")
    assert "X-User-Id" in str(error["message"])


def test_service_key_with_invalid_x_user_id_is_400_json(api_client: APIClient) -> None:
    created = api_key_create(name="bridge", is_service=True)
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}", HTTP_X_USER_ID="x" * 300)

    response = api_client.get("/api/v1/me")

    _assert_error(response, 400, "invalid_user_id")


def test_a_user_id_with_a_comma_is_refused_in_x_user_id(api_client: APIClient) -> None:
    created = api_key_create(name="bridge", is_service=True)
    api_client.credentials(
        HTTP_AUTHORIZATION=f"Bearer {created.raw_key}", HTTP_X_USER_ID="bob,alice"
    )

    response = api_client.get("/api/v1/me")

    error = _assert_error(response, 400, "invalid_user_id")
    assert "X-User-Id" in str(error["message"])


def test_a_user_id_with_a_comma_gets_no_key_and_no_message() -> None:
    # A repeated X-User-Id header arrives comma-joined: a user id with a comma could never be
    # told from two, so no key, header or service accepts one.
    with pytest.raises(InvalidInput) as key_error:
        api_key_create(name="k", user_id="bob,alice")
    with pytest.raises(InvalidInput) as message_error:
        message_handle(user_id="bob, alice", channel="web", content="hello")

    assert "comma" in key_error.value.details["user_id"][0]
    assert "comma" in message_error.value.details["user_id"][0]
    assert ApiKey.objects.count() == 0
    assert ConversationEntry.objects.count() == 0


def test_tenant_key_cannot_act_for_another_tenant(api_client: APIClient) -> None:
    created = api_key_create(name="laptop", user_id="alice")
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.raw_key}", HTTP_X_USER_ID="bob")

    response = api_client.get("/api/v1/me")

    _assert_error(response, 403, "tenant_mismatch")


def test_create_api_key_command_prints_a_working_key_once(api_client: APIClient) -> None:
    stdout, stderr = StringIO(), StringIO()

    call_command("create_api_key", "alice", "--name", "cli", stdout=stdout, stderr=stderr)

    raw_key = stdout.getvalue().strip()
    assert "\n" not in raw_key
    assert raw_key not in stderr.getvalue()
    assert ApiKey.objects.get().key_hash == hashlib.sha256(raw_key.encode()).hexdigest()
    api_client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw_key}")
    assert api_client.get("/api/v1/me").json()["user_id"] == "alice"


def test_create_api_key_command_makes_service_keys() -> None:
    stdout = StringIO()

    call_command(
        "create_api_key", "--service", "--name", "bridge", stdout=stdout, stderr=StringIO()
    )

    key = ApiKey.objects.get()
    assert key.is_service
    assert key.user_id == ""
    assert key.name == "bridge"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "user_id is required"),
        (("alice", "--service"), "omit user_id"),
        (("bad\tid",), "user_id"),
        (("alice", "--name", "  "), "--name"),
    ],
)
def test_create_api_key_command_rejects_bad_options(args: tuple[str, ...], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("create_api_key", *args, stdout=StringIO(), stderr=StringIO())

    assert ApiKey.objects.count() == 0


@pytest.mark.django_db
def test_api_keys_can_be_revoked_but_not_deleted_in_the_admin(admin_client: Client) -> None:
    created = api_key_create(name="bridge", user_id="alice")

    listing = admin_client.get("/admin/accounts/apikey/").content.decode()
    delete_page = admin_client.get(f"/admin/accounts/apikey/{created.api_key.pk}/delete/")

    assert "revoke_keys" in listing
    assert "delete_selected" not in listing
    assert delete_page.status_code == 403
