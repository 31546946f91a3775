"""Each event of a thread's life writes one log line naming the thread and its tenant."""

from __future__ import annotations

import datetime
import logging

import pytest
from django.utils import timezone

from conversations.models import Thread
from conversations.services import (
    conversation_busy_policy_set,
    message_handle,
    thread_claim,
    thread_leases_sweep,
)

pytestmark = pytest.mark.django_db

THREAD_LOGGER = "conversations.services"


def _lines(caplog: pytest.LogCaptureFixture, words: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if words in record.getMessage()]


def test_a_claim_is_logged_with_the_thread_tenant_and_worker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    with caplog.at_level(logging.INFO, logger=THREAD_LOGGER):
        thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1")

    [claim] = _lines(caplog, "claimed")
    assert claim.__dict__["thread_id"] == str(sent.thread_id)
    assert claim.__dict__["tenant"] == "alice"
    assert claim.__dict__["worker_id"] == "w1"


def test_an_interrupt_is_logged_with_the_thread_and_tenant(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = message_handle(user_id="alice", channel="web", content="hello")
    conversation_busy_policy_set(
        user_id="alice", conversation_id=first.conversation_id, busy_policy="interrupt"
    )

    with caplog.at_level(logging.INFO, logger=THREAD_LOGGER):
        message_handle(user_id="alice", channel="web", content="no, do this")

    [interrupt] = _lines(caplog, "interrupted")
    assert interrupt.__dict__["thread_id"] == str(first.thread_id)
    assert interrupt.__dict__["tenant"] == "alice"


def test_an_expired_lease_is_logged_by_the_sweeper(caplog: pytest.LogCaptureFixture) -> None:
    sent = message_handle(user_id="bob", channel="web", content="hello")
    thread_claim(user_id="bob", thread_id=sent.thread_id, worker_id="w1")
    Thread.objects.filter(pk=sent.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=5)
    )

    with caplog.at_level(logging.INFO, logger=THREAD_LOGGER):
        thread_leases_sweep()

    [expired] = _lines(caplog, "expired")
    assert expired.levelno == logging.WARNING
    assert expired.__dict__["thread_id"] == str(sent.thread_id)
    assert expired.__dict__["tenant"] == "bob"
