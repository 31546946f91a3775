from __future__ import annotations

import contextlib
import datetime

import pytest
from django.utils import timezone
from procrastinate.contrib.django import app
from procrastinate.exceptions import AlreadyEnqueued

from conversations.models import Thread
from conversations.services import message_handle, thread_claim
from tests.conversations.helpers import waiting_for_a_worker
from tests.support.worker import run_worker_until_empty


@pytest.mark.django_db(transaction=True)
def test_sweep_task_recovers_expired_leases() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="crashed")
    Thread.objects.filter(pk=sent.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(minutes=1)
    )
    from conversations.tasks import thread_leases_sweep_job

    # A worker of an earlier test may have deferred this minute's periodic sweep already.
    with contextlib.suppress(AlreadyEnqueued):
        app.configure_task(thread_leases_sweep_job.name).defer(
            timestamp=int(timezone.now().timestamp())
        )
    run_worker_until_empty("default")

    assert Thread.objects.get(pk=sent.thread_id).state == "created"
    assert waiting_for_a_worker(sent.thread_id)


def test_sweeper_is_registered_to_run_every_minute() -> None:
    from conversations.tasks import thread_leases_sweep_job

    periodic = [
        task
        for task in app.periodic_registry.periodic_tasks.values()
        if task.task is thread_leases_sweep_job
    ]

    assert [task.cron for task in periodic] == ["* * * * *"]
