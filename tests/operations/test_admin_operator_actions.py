"""Every admin action that changes what the services own (clear a conversation, revoke a key,
reindex a document, purge runtime chunks) takes the model's change permission and is written to
the admin log, as the thread actions are: view-only staff cannot run them, and an object's
History and the index's Recent actions say what an operator did."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper

from accounts.models import ApiKey
from accounts.services import api_key_create
from conversations.models import Conversation, ConversationEntry
from conversations.services import message_handle
from workspace import services
from workspace.models import Document

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _index_inline(settings: SettingsWrapper) -> None:
    settings.WORKSPACE_INDEXING = "inline"
    settings.EMBEDDING_PROVIDER = "hashing"
    settings.EMBEDDING_DIMENSIONS = 64


def _conversation() -> str:
    return str(message_handle(user_id="alice", channel="web", content="hello").conversation_id)


def _api_key() -> str:
    return str(api_key_create(name="laptop", user_id="alice").api_key.pk)


def _document() -> str:
    services.document_write(user_id="alice", path="notes/a.md", content="# A\nferns\n")
    return str(Document.objects.get(path="notes/a.md").pk)


# What each action is run on, its changelist, its name, and how to tell it did nothing.
ACTIONS: dict[str, tuple[Any, str, str, Any]] = {
    "clear": (
        _conversation,
        "/admin/conversations/conversation/",
        "clear_conversations",
        lambda pk: ConversationEntry.objects.filter(conversation_id=pk).exists(),
    ),
    "revoke": (
        _api_key,
        "/admin/accounts/apikey/",
        "revoke_keys",
        lambda pk: ApiKey.objects.get(pk=pk).revoked_at is None,
    ),
    "reindex": (_document, "/admin/workspace/document/", "reindex", lambda pk: True),
    "purge": (_document, "/admin/workspace/document/", "purge_runtime_chunks", lambda pk: True),
}


def _view_only_staff() -> Client:
    user = get_user_model().objects.create_user("viewer", password="pw-123456", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(
            codename__in=["view_conversation", "view_apikey", "view_document"]
        )
    )
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("name", ACTIONS)
def test_an_operator_action_is_logged_with_what_it_did(admin_client: Client, name: str) -> None:
    build, url, action, untouched = ACTIONS[name]
    pk = build()

    listing = admin_client.get(url).content.decode()
    response = admin_client.post(url, {"action": action, "_selected_action": [pk]})

    assert f'value="{action}"' in listing
    assert response.status_code == 302
    entry = LogEntry.objects.get(object_id=pk, action_flag=CHANGE)
    assert entry.user.get_username() == "admin"
    assert entry.change_message.split(":")[0] in {
        "Clear",
        "Revoke",
        "Reindex",
        "Purge runtime chunks",
    }
    if name in ("clear", "revoke"):
        assert not untouched(pk)
    history = admin_client.get(f"{url}{pk}/history/").content.decode()
    assert entry.change_message in history


@pytest.mark.parametrize("name", ACTIONS)
def test_view_only_staff_can_neither_see_nor_run_an_operator_action(name: str) -> None:
    build, url, action, untouched = ACTIONS[name]
    pk = build()
    viewer = _view_only_staff()

    listing = viewer.get(url)
    viewer.post(url, {"action": action, "_selected_action": [pk]})

    assert listing.status_code == 200
    assert f'value="{action}"' not in listing.content.decode()
    assert untouched(pk)
    assert not LogEntry.objects.exists()


def test_a_cleared_conversation_says_how_much_it_cleared(admin_client: Client) -> None:
    pk = _conversation()
    admin_client.post(
        "/admin/conversations/conversation/",
        {"action": "clear_conversations", "_selected_action": [pk]},
    )
    assert Conversation.objects.filter(pk=pk).exists()
    assert LogEntry.objects.get(object_id=pk).change_message == (
        "Clear: 2 entries deleted, 1 threads cancelled"
    )
