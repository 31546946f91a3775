"""Retry-After on the answers a client should simply retry: 409 *_busy, 429 and 503."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
from django.db import connection, transaction
from pytest_django.fixtures import Settings
from rest_framework.test import APIClient

from conversations.errors import ConversationBusy, ThreadBusy
from core.api.exceptions import api_exception_handler
from core.errors import ApplicationError, Conflict, RateLimited, ServiceUnavailable
from workspace import services
from workspace.errors import DocumentBusy
from workspace.models import Document


@pytest.mark.parametrize(
    ("error", "status", "retry_after"),
    [
        (ConversationBusy(), 409, "1"),
        (ThreadBusy(), 409, "1"),
        (DocumentBusy(), 409, "1"),
        (RateLimited(retry_after=17), 429, "17"),
        (ServiceUnavailable(), 503, "1"),
    ],
)
def test_retryable_errors_carry_retry_after(
    error: ApplicationError, status: int, retry_after: str
) -> None:
    response = api_exception_handler(error, {})

    assert response is not None
    assert response.status_code == status
    assert response["Retry-After"] == retry_after
    assert response.data["error"]["code"] == error.code


def test_other_conflicts_carry_no_retry_after() -> None:
    response = api_exception_handler(Conflict(), {})

    assert response is not None
    assert "Retry-After" not in response


@pytest.mark.django_db(transaction=True)
def test_a_write_to_a_locked_document_is_document_busy_with_retry_after(
    settings: Settings, tenant_client: Callable[[str], APIClient]
) -> None:
    settings.WORKSPACE_LOCK_TIMEOUT_MS = 100
    services.document_write(user_id="alice", path="held.md", content="one")
    alice = tenant_client("alice")
    locked, release = threading.Event(), threading.Event()

    def hold_the_row() -> None:
        try:
            with transaction.atomic():
                Document.objects.select_for_update().get(path="held.md")
                locked.set()
                release.wait(timeout=30)
        finally:
            connection.close()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    assert locked.wait(timeout=10)
    try:
        response = alice.put(
            "/api/v1/workspace/documents/held.md", {"content": "two"}, format="json"
        )
    finally:
        release.set()
        holder.join(timeout=30)

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "document_busy"
    assert response["Retry-After"] == "1"
