"""The lease sweep gives back what nobody holds any more: expired leases, and the leases of turn
workers that are dead (by their heartbeat row, or because serve saw their process exit), but
never an external engine's live lease, nor a live turn worker's."""

from __future__ import annotations

import datetime
import os

import pytest
from django.db import connection
from django.utils import timezone
from pytest_django import DjangoAssertNumQueries

from conversations.models import ConversationEntry, Thread
from conversations.services import (
    MessageResult,
    lease_owner_id,
    message_handle,
    thread_claim,
    thread_claim_next,
    thread_claim_runnable,
    thread_leases_sweep,
    thread_request_cancel,
)
from core.errors import InvalidInput
from tests.conversations.helpers import waiting_for_a_worker

pytestmark = pytest.mark.django_db

DEAD_AFTER = datetime.timedelta(seconds=10)


def _worker(*, silent_for: float) -> int:
    """A registered worker row whose last heartbeat was ``silent_for`` seconds ago."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT worker_id FROM procrastinate_register_worker_v1()")
        (worker_row,) = cursor.fetchone()
        cursor.execute(
            "UPDATE procrastinate_workers SET last_heartbeat = now() - make_interval(secs => %s)"
            " WHERE id = %s",
            [silent_for, worker_row],
        )
    return int(worker_row)


def _gone_worker() -> int:
    """The id a worker had before it unregistered (or was pruned)."""
    worker_row = _worker(silent_for=0)
    with connection.cursor() as cursor:
        cursor.execute("SELECT procrastinate_unregister_worker_v1(%s)", [worker_row])
    return worker_row


def _claimed_by(owner: str, *, untouched_for: float = 60, channel: str = "web") -> MessageResult:
    """A thread claimed by ``owner`` that nobody has touched (renewed) for ``untouched_for`` s."""
    sent = message_handle(user_id="alice", channel=channel, content="hello")
    if owner.startswith("turn-worker:"):
        claimed = thread_claim_runnable(worker_id=owner)
        assert claimed is not None
        assert claimed.pk == sent.thread_id
    else:
        thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id=owner)
    Thread.objects.filter(pk=sent.thread_id).update(
        updated_at=timezone.now() - datetime.timedelta(seconds=untouched_for)
    )
    return sent


def test_a_turn_worker_silent_past_dead_after_loses_its_turns_to_the_queue() -> None:
    silent = _claimed_by(lease_owner_id(worker_row=_worker(silent_for=30)), channel="a")
    unregistered = _claimed_by(lease_owner_id(worker_row=_gone_worker()), channel="b")

    swept = thread_leases_sweep(dead_after=DEAD_AFTER)

    assert sorted(swept.requeued) == sorted([silent.thread_id, unregistered.thread_id])
    for sent in (silent, unregistered):
        thread = Thread.objects.get(pk=sent.thread_id)
        assert (thread.state, thread.lease_owner, thread.lease_expires_at) == ("created", "", None)
        assert waiting_for_a_worker(sent.thread_id)


def test_a_live_turn_worker_keeps_its_turns() -> None:
    beating = _claimed_by(lease_owner_id(worker_row=_worker(silent_for=1)), channel="a")
    # Its worker is silent (its loop waits out an outage), but the turn still renews its lease.
    renewing = _claimed_by(
        lease_owner_id(worker_row=_worker(silent_for=30)), untouched_for=1, channel="b"
    )

    swept = thread_leases_sweep(dead_after=DEAD_AFTER)

    assert (swept.requeued, swept.stopped) == ([], [])
    for sent in (beating, renewing):
        assert Thread.objects.get(pk=sent.thread_id).state == "running"


def test_an_external_engines_lease_is_never_taken_for_a_dead_worker() -> None:
    # Whatever its id looks like: only an expiry takes an engine's lease.
    engine = _claimed_by("engine-1", channel="a")
    lookalike = _claimed_by(f"{lease_owner_id()}", channel="b")

    swept = thread_leases_sweep(dead_after=DEAD_AFTER, dead_pids=[os.getpid()])

    assert swept.requeued == []
    assert Thread.objects.get(pk=engine.thread_id).lease_owner == "engine-1"
    assert Thread.objects.get(pk=lookalike.thread_id).state == "running"


def test_an_engine_may_not_claim_under_a_turn_workers_owner_id() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    owner = lease_owner_id(worker_row=1)

    with pytest.raises(InvalidInput, match="turn-worker:"):
        thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id=owner)
    with pytest.raises(InvalidInput, match="turn-worker:"):
        thread_claim_next(user_id="alice", worker_id=owner)

    assert Thread.objects.get(pk=sent.thread_id).state == "created"


def test_the_turns_of_a_process_serve_saw_die_go_back_at_once() -> None:
    # Its heartbeat and its lease renewals are fresh: only its pid says it is dead.
    dead = lease_owner_id(worker_row=_worker(silent_for=0)).split(":")
    dead[3] = "4000001"
    alive = list(dead)
    alive[3] = "4000002"
    killed = _claimed_by(":".join(dead), untouched_for=0, channel="a")
    other = _claimed_by(":".join(alive), untouched_for=0, channel="b")

    swept = thread_leases_sweep(dead_pids=[4000001])

    assert swept.requeued == [killed.thread_id]
    assert waiting_for_a_worker(killed.thread_id)
    assert Thread.objects.get(pk=other.thread_id).state == "running"


def test_without_dead_after_only_expired_leases_are_swept() -> None:
    silent = _claimed_by(lease_owner_id(worker_row=_worker(silent_for=600)))

    swept = thread_leases_sweep()

    assert swept.requeued == []
    assert Thread.objects.get(pk=silent.thread_id).state == "running"


def test_a_sweep_is_one_statement(django_assert_num_queries: DjangoAssertNumQueries) -> None:
    silent = _claimed_by(lease_owner_id(worker_row=_worker(silent_for=30)))

    with django_assert_num_queries(1):
        swept = thread_leases_sweep(dead_after=DEAD_AFTER)

    assert swept.requeued == [silent.thread_id]


def test_a_dead_workers_thread_that_was_asked_to_stop_is_stopped() -> None:
    sent = _claimed_by(lease_owner_id(worker_row=_gone_worker()))
    Thread.objects.filter(pk=sent.thread_id).update(cancel_requested=True, tracked=False)

    swept = thread_leases_sweep(dead_after=DEAD_AFTER)

    thread = Thread.objects.get(pk=sent.thread_id)
    assert swept.stopped == [sent.thread_id]
    assert (thread.state, thread.lease_owner) == ("stopped", "")
    assert thread.outcome == {
        "kind": "stopped",
        "reason": "its turn worker died after cancellation",
    }


def test_an_expired_thread_an_operator_asked_to_stop_is_stopped_with_its_entry() -> None:
    # The operator's request leaves the thread tracked (its engine was to record the stop): the
    # sweep stops it as the operator's stop does, and goes on sweeping the others.
    asked = _claimed_by("engine-1", channel="a")
    thread_request_cancel(user_id="alice", thread_id=asked.thread_id)
    expired = _claimed_by("engine-2", channel="b")
    Thread.objects.filter(pk__in=[asked.thread_id, expired.thread_id]).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=5)
    )

    swept = thread_leases_sweep()

    thread = Thread.objects.get(pk=asked.thread_id)
    assert (swept.stopped, swept.requeued) == ([asked.thread_id], [expired.thread_id])
    assert (thread.state, thread.tracked, thread.lease_owner) == ("stopped", False, "")
    assert ConversationEntry.objects.filter(
        thread_id=asked.thread_id, content="Thread stopped by an operator"
    ).exists()
