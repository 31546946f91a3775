"""What an operator may do to a thread from the admin: request cancel, stop, requeue."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from conversations.errors import LeaseNotHeld, OutcomeAlreadyRecorded, ThreadNotClaimable
from conversations.models import Thread
from conversations.services import (
    MessageResult,
    ThreadOutcome,
    conversation_busy_policy_set,
    message_handle,
    thread_claim,
    thread_lease_renew,
    thread_outcome_record,
    thread_request_cancel,
    thread_requeue,
    thread_stop,
)
from tests.conversations.helpers import entries_of, waiting_for_a_worker

pytestmark = pytest.mark.django_db


def _running(content: str = "hello") -> MessageResult:
    result = message_handle(user_id="alice", channel="web", content=content)
    thread_claim(user_id="alice", thread_id=result.thread_id, worker_id="w1")
    return result


def _expire_lease(result: MessageResult) -> None:
    Thread.objects.filter(pk=result.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(minutes=5)
    )


def test_stop_ends_a_running_thread_and_says_so_in_the_conversation() -> None:
    result = _running()

    stopped = thread_stop(user_id="alice", thread_id=result.thread_id)

    thread = Thread.objects.get(pk=result.thread_id)
    assert stopped.done
    assert "was running, leased by w1" in stopped.message
    assert (thread.state, thread.lease_owner, thread.lease_expires_at) == ("stopped", "", None)
    assert (thread.tracked, thread.cancel_requested) == (False, True)
    assert thread.outcome is not None
    assert thread.outcome["kind"] == "stopped"
    assert thread.finished_at is not None
    assert entries_of(result.conversation_id)[-1][1:] == (
        "system",
        "Thread stopped by an operator",
        thread.id,
    )


def test_the_engine_of_a_stopped_thread_loses_its_lease() -> None:
    result = _running()
    thread_stop(user_id="alice", thread_id=result.thread_id)

    with pytest.raises(LeaseNotHeld):
        thread_lease_renew(user_id="alice", thread_id=result.thread_id, worker_id="w1")
    with pytest.raises(OutcomeAlreadyRecorded):
        thread_outcome_record(
            user_id="alice",
            thread_id=result.thread_id,
            worker_id="w1",
            outcome=ThreadOutcome(kind="completed", response="late"),
        )


def test_stop_skips_a_finished_thread() -> None:
    result = _running()
    thread_outcome_record(
        user_id="alice",
        thread_id=result.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome(kind="completed", response="done"),
    )

    skipped = thread_stop(user_id="alice", thread_id=result.thread_id)

    assert (skipped.done, skipped.message) == (False, "already completed")
    assert Thread.objects.get(pk=result.thread_id).state == "completed"


def test_stop_carries_unread_messages_to_a_follow_up_thread() -> None:
    result = _running("first")
    message_handle(user_id="alice", channel="web", content="second")  # injected, never taken

    stopped = thread_stop(user_id="alice", thread_id=result.thread_id)

    follow_up = Thread.objects.get(tracked=True)
    assert "1 unread message(s) moved to thread" in stopped.message
    assert follow_up.goal == "second"
    assert waiting_for_a_worker(follow_up.id)


def test_request_cancel_flags_a_running_thread_for_its_engine() -> None:
    result = _running()

    requested = thread_request_cancel(user_id="alice", thread_id=result.thread_id)
    renewed = thread_lease_renew(user_id="alice", thread_id=result.thread_id, worker_id="w1")
    again = thread_request_cancel(user_id="alice", thread_id=result.thread_id)

    assert requested.done
    assert renewed.cancel_requested is True
    assert renewed.state == "running"
    assert (again.done, again.message) == (False, "cancellation already requested")


def test_request_cancel_stops_a_thread_nobody_runs() -> None:
    result = message_handle(user_id="alice", channel="web", content="hello")

    requested = thread_request_cancel(user_id="alice", thread_id=result.thread_id)

    assert requested.done
    assert Thread.objects.get(pk=result.thread_id).state == "stopped"
    with pytest.raises(ThreadNotClaimable):
        thread_claim(user_id="alice", thread_id=result.thread_id, worker_id="w1")


def test_requeue_returns_an_expired_running_thread_to_the_queue() -> None:
    result = _running()
    _expire_lease(result)
    assert not waiting_for_a_worker(result.thread_id)

    requeued = thread_requeue(user_id="alice", thread_id=result.thread_id)

    thread = Thread.objects.get(pk=result.thread_id)
    assert requeued.done
    assert requeued.message == "back to created (its lease had expired): waiting for a worker"
    assert (thread.state, thread.lease_owner, thread.lease_expires_at) == ("created", "", None)
    assert waiting_for_a_worker(thread.id)


def test_requeue_leaves_a_created_thread_where_it_is() -> None:
    result = message_handle(user_id="alice", channel="web", content="hello")

    requeued = thread_requeue(user_id="alice", thread_id=result.thread_id)

    assert (requeued.done, requeued.message) == (False, "created: already waiting for a worker")
    assert waiting_for_a_worker(result.thread_id)


def test_requeue_leaves_a_live_lease_and_a_paused_thread_alone() -> None:
    running = _running()
    conversation_busy_policy_set(
        user_id="alice", conversation_id=running.conversation_id, busy_policy="queue"
    )
    thread_outcome_record(
        user_id="alice",
        thread_id=running.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome(kind="gate_paused", gate_name="approval", gate_action="send"),
    )
    other = message_handle(user_id="alice", channel="other", content="hi")
    thread_claim(user_id="alice", thread_id=other.thread_id, worker_id="w2")

    paused = thread_requeue(user_id="alice", thread_id=running.thread_id)
    leased = thread_requeue(user_id="alice", thread_id=other.thread_id)

    assert (paused.done, paused.message) == (False, "waiting: nothing to requeue")
    assert (leased.done, leased.message) == (False, "running with a live lease held by w2")
    assert Thread.objects.get(pk=other.thread_id).state == "running"


def test_an_operators_stop_names_them_in_the_outcome_not_in_the_conversation() -> None:
    result = _running()
    anonymous = _running_elsewhere()

    thread_stop(user_id="alice", thread_id=result.thread_id, operator="ops-alice")
    thread_stop(user_id="alice", thread_id=anonymous.thread_id)

    named = Thread.objects.get(pk=result.thread_id).outcome
    unnamed = Thread.objects.get(pk=anonymous.thread_id).outcome
    assert named is not None
    assert unnamed is not None
    assert named["reason"] == "stopped by an operator (ops-alice)"
    assert unnamed["reason"] == "stopped by an operator"
    # The conversation's people see that an operator stopped it, not which one.
    assert entries_of(result.conversation_id)[-1][2] == "Thread stopped by an operator"


def test_a_cancel_an_operator_requested_is_theirs_in_the_outcome_the_engine_records() -> None:
    result = _running()
    nobody_runs = message_handle(user_id="alice", channel="idle", content="hi")

    thread_request_cancel(user_id="alice", thread_id=result.thread_id, operator="ops-bob")
    thread_request_cancel(user_id="alice", thread_id=nobody_runs.thread_id, operator="ops-bob")
    thread_outcome_record(
        user_id="alice",
        thread_id=result.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome(kind="stopped"),
    )

    stopped = Thread.objects.get(pk=result.thread_id)
    at_once = Thread.objects.get(pk=nobody_runs.thread_id)
    assert stopped.metadata["cancel_requested_by"] == "ops-bob"
    assert stopped.outcome is not None
    assert at_once.outcome is not None
    assert (stopped.outcome["kind"], stopped.outcome["reason"]) == (
        "stopped",
        "cancelled by an operator (ops-bob)",
    )
    assert at_once.outcome["reason"] == "cancelled by an operator (ops-bob)"


def test_a_cancel_requested_without_an_operator_leaves_the_engines_outcome_as_it_was() -> None:
    result = _running()

    thread_request_cancel(user_id="alice", thread_id=result.thread_id)
    thread_outcome_record(
        user_id="alice",
        thread_id=result.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome(kind="stopped"),
    )

    thread = Thread.objects.get(pk=result.thread_id)
    assert "cancel_requested_by" not in thread.metadata
    assert thread.outcome is not None
    assert "reason" not in thread.outcome


def _running_elsewhere() -> MessageResult:
    result = message_handle(user_id="alice", channel="other", content="hello")
    thread_claim(user_id="alice", thread_id=result.thread_id, worker_id="w2")
    return result
