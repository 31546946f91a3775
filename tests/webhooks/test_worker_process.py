"""A turn that completes is delivered to a receiver that fails twice, by a real background
worker process: exactly one accepted delivery, every attempt signed with the same webhook-id."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from django.db import connection
from standardwebhooks.webhooks import Webhook as Verifier

from conversations.services import (
    ThreadOutcome,
    message_handle,
    thread_claim,
    thread_outcome_record,
)
from tests.support.servers import BASE_DIR, database_url
from tests.webhooks.factories import WebhookFactory
from tests.webhooks.receiver import Answer, receiver_running
from webhooks.models import WebhookAttempt, WebhookDelivery

DEADLINE_SECONDS = 90


@pytest.mark.django_db(transaction=True)
def test_a_background_worker_delivers_a_completed_turn_once_after_two_failures() -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "LOG_LEVEL": "WARNING",
        "BACKGROUND_CONCURRENCY": "2",
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "WEBHOOK_RETRY_BASE_SECONDS": "0.05",
        "WEBHOOK_TIMEOUT_SECONDS": "5",
    }
    with receiver_running([Answer(500), Answer(503)]) as receiver:
        webhook = WebhookFactory.create(url=receiver.url(), events=["thread.completed"])
        message = message_handle(user_id="alice", channel="web", content="hi")
        thread_claim(user_id="alice", thread_id=message.thread_id, worker_id="w1")
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "worker", "--kind", "background"],
            cwd=BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            thread_outcome_record(
                user_id="alice",
                thread_id=message.thread_id,
                worker_id="w1",
                outcome=ThreadOutcome(kind="completed", response="done"),
            )
            delivery = WebhookDelivery.objects.get(user_id="alice")
            deadline = time.monotonic() + DEADLINE_SECONDS
            while WebhookDelivery.objects.get(pk=delivery.pk).state == "pending":
                assert worker.poll() is None, worker.communicate()[0]
                assert time.monotonic() < deadline, "the delivery never ended"
                time.sleep(0.1)
            # Any stray job would post again within this while: it must not.
            time.sleep(1)
        finally:
            worker.terminate()
            output = worker.communicate(timeout=30)[0]

    assert worker.returncode == 0, output
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == ("delivered", 3, 200)
    assert len(receiver.requests) == 3
    assert {request.headers["webhook-id"] for request in receiver.requests} == {str(delivery.pk)}
    verifier = Verifier(webhook.secret)
    for request in receiver.requests:
        body = verifier.verify(request.body, request.headers)
        assert body["type"] == "thread.completed"
        assert body["data"]["thread_id"] == str(message.thread_id)
    assert list(
        WebhookAttempt.objects.filter(user_id="alice", delivery=delivery)
        .order_by("number")
        .values_list("result", "status_code")
    ) == [("http_error", 500), ("http_error", 503), ("success", 200)]
