from __future__ import annotations

import contextlib
import datetime

import pytest
from django.db import OperationalError, connection
from django.test import override_settings
from django.utils import timezone
from procrastinate.contrib.django import app
from procrastinate.exceptions import AlreadyEnqueued

from conversations.models import Thread
from conversations.services import message_handle, thread_claim
from tests.conversations.helpers import mark_run_jobs_taken, run_jobs_for
from tests.support.worker import run_worker_until_empty

RUNS: list[str] = []


def record_run(*, thread_id: str) -> None:
    RUNS.append(thread_id)


@pytest.mark.django_db(transaction=True)
@override_settings(THREAD_RUNNER="tests.conversations.test_tasks.record_run")
def test_spawned_thread_runs_through_the_configured_runner() -> None:
    RUNS.clear()
    sent = message_handle(user_id="alice", channel="web", content="hello")

    run_worker_until_empty("threads")

    # procrastinate_jobs outlives transactional tests, so runs of earlier tests' threads may
    # come first; this thread's run must be there exactly once.
    assert RUNS.count(str(sent.thread_id)) == 1
    assert run_jobs_for(sent.thread_id) == ["succeeded"]


@pytest.mark.django_db(transaction=True)
@override_settings(THREAD_RUNNER="conversations.runners.wait_for_external_engine")
def test_external_engine_runner_leaves_the_thread_for_an_external_engine() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    run_worker_until_empty("threads")

    assert run_jobs_for(sent.thread_id) == ["succeeded"]
    assert Thread.objects.get(pk=sent.thread_id).state == "created"


@pytest.mark.django_db(transaction=True)
@override_settings(ENGINE_ECHO_LATENCY_MS=0)
def test_default_runner_is_the_reference_engine_and_answers_the_thread() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    run_worker_until_empty("threads")

    assert run_jobs_for(sent.thread_id) == ["succeeded"]
    assert Thread.objects.get(pk=sent.thread_id).state == "completed"


@pytest.mark.django_db(transaction=True)
def test_sweep_task_recovers_expired_leases() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="crashed")
    mark_run_jobs_taken(sent.thread_id)
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
    # The crashed run job (doing, no live worker) is retried by the stalled-job sweep that the
    # same worker runs, or a new one is deferred: either way exactly one run waits.
    assert run_jobs_for(sent.thread_id).count("todo") == 1


def test_sweeper_is_registered_to_run_every_minute() -> None:
    from conversations.tasks import thread_leases_sweep_job

    periodic = [
        task
        for task in app.periodic_registry.periodic_tasks.values()
        if task.task is thread_leases_sweep_job
    ]

    assert [task.cron for task in periodic] == ["* * * * *"]


def fail_with_a_database_error(*, thread_id: str) -> None:
    raise OperationalError("the database went away")


@pytest.mark.django_db(transaction=True)
@override_settings(THREAD_RUNNER="tests.conversations.test_tasks.fail_with_a_database_error")
def test_a_run_failing_on_the_database_is_retried_later_not_dropped() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    run_worker_until_empty("threads")

    # Without a retry the job would be "failed" and the thread left created with nothing to
    # run it; with one it waits (todo, scheduled in the future) for its next attempt.
    assert run_jobs_for(sent.thread_id) == ["todo"]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT attempts, scheduled_at > now() FROM procrastinate_jobs"
            " WHERE args->>'thread_id' = %s",
            [str(sent.thread_id)],
        )
        assert cursor.fetchone() == (1, True)
