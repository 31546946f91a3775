"""A receiver slow to answer holds only a slot of the webhook deliveries' own pool: the background
worker's other jobs (indexing, maintenance) run meanwhile, in a real worker process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import pytest
from django.db import connection
from procrastinate.contrib.django import app

from tests.support.servers import BASE_DIR, database_url
from tests.webhooks.factories import WebhookFactory
from tests.webhooks.helpers import delivery_emitted
from tests.webhooks.receiver import Answer, receiver_running
from webhooks.models import WebhookDelivery

RECEIVER_DELAY_SECONDS = 8


def _job_status(job_id: int) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT status FROM procrastinate_jobs WHERE id = %s", [job_id])
        return str(cursor.fetchone()[0])


def _wait(condition: Callable[[], object], *, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.django_db(transaction=True)
def test_a_maintenance_job_runs_while_a_slow_receiver_holds_a_delivery() -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "LOG_LEVEL": "WARNING",
        # One slot each: without a pool of its own, the delivery would hold the only one.
        "BACKGROUND_CONCURRENCY": "1",
        "WEBHOOK_CONCURRENCY": "1",
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "WEBHOOK_TIMEOUT_SECONDS": "30",
    }
    with receiver_running(default=Answer(200, delay=RECEIVER_DELAY_SECONDS)) as receiver:
        WebhookFactory.create(url=receiver.url())
        delivery = delivery_emitted()
        worker = subprocess.Popen(
            [sys.executable, "manage.py", "worker", "--kind", "background"],
            cwd=BASE_DIR,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            _wait(lambda: receiver.requests, seconds=60, what="the delivery was never attempted")
            sweep = app.configure_task(
                name="conversations.tasks.sweep_expired_leases", queueing_lock="isolation-test"
            ).defer(timestamp=0)
            _wait(
                lambda: _job_status(sweep) == "succeeded",
                seconds=RECEIVER_DELAY_SECONDS,
                what="the maintenance job waited for the receiver",
            )
            delivery.refresh_from_db()
            state_when_swept = delivery.state
            _wait(
                lambda: WebhookDelivery.objects.get(pk=delivery.pk).state == "delivered",
                seconds=60,
                what="the delivery never ended",
            )
        finally:
            worker.terminate()
            output = worker.communicate(timeout=30)[0]

    assert worker.returncode == 0, output
    assert state_when_swept == "pending"
    assert len(receiver.requests) == 1
