from __future__ import annotations

import datetime
import uuid

import pytest
from django.utils import timezone

from conversations.errors import (
    ConversationNotFound,
    InvalidThreadTransition,
    LeaseNotHeld,
    OutcomeAlreadyRecorded,
    ThreadNotClaimable,
    ThreadNotFound,
)
from conversations.models import Conversation, ConversationEntry, Thread
from conversations.services import (
    MessageResult,
    OutcomeResult,
    ThreadOutcome,
    conversation_busy_policy_set,
    conversation_clear,
    message_handle,
    thread_claim,
    thread_inbox_take,
    thread_lease_give_up,
    thread_lease_renew,
    thread_leases_sweep,
    thread_outcome_record,
    thread_request_cancel,
)
from tests.conversations.helpers import entries_of, waiting_for_a_worker

pytestmark = pytest.mark.django_db


def _running(content: str = "hello", user_id: str = "alice") -> MessageResult:
    result = message_handle(user_id=user_id, channel="web", content=content)
    thread_claim(user_id=user_id, thread_id=result.thread_id, worker_id="w1")
    return result


def _record(result: MessageResult, outcome: ThreadOutcome, worker_id: str = "w1") -> OutcomeResult:
    return thread_outcome_record(
        user_id="alice", thread_id=result.thread_id, worker_id=worker_id, outcome=outcome
    )


def test_claim_takes_the_lease_and_starts_the_thread() -> None:
    result = message_handle(user_id="alice", channel="web", content="hello")

    thread = thread_claim(
        user_id="alice", thread_id=result.thread_id, worker_id="w1", lease_seconds=30
    )

    assert (thread.state, thread.lease_owner, thread.claim_count) == ("running", "w1", 1)
    assert thread.lease_expires_at is not None
    assert 25 < (thread.lease_expires_at - timezone.now()).total_seconds() <= 30
    assert thread.started_at is not None


def test_a_held_lease_cannot_be_claimed_by_another_worker() -> None:
    result = _running()

    with pytest.raises(ThreadNotClaimable):
        thread_claim(user_id="alice", thread_id=result.thread_id, worker_id="w2")

    assert Thread.objects.get(pk=result.thread_id).lease_owner == "w1"


def test_an_expired_lease_can_be_taken_over() -> None:
    result = _running()
    Thread.objects.filter(pk=result.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )

    thread = thread_claim(user_id="alice", thread_id=result.thread_id, worker_id="w2")

    assert (thread.lease_owner, thread.claim_count) == ("w2", 2)


def test_heartbeat_extends_the_lease_only_for_its_holder() -> None:
    result = _running()
    before = Thread.objects.get(pk=result.thread_id).lease_expires_at
    assert before is not None

    renewed = thread_lease_renew(
        user_id="alice", thread_id=result.thread_id, worker_id="w1", lease_seconds=600
    )
    with pytest.raises(LeaseNotHeld):
        thread_lease_renew(user_id="alice", thread_id=result.thread_id, worker_id="w2")

    assert renewed.lease_expires_at is not None
    assert renewed.lease_expires_at > before


def test_take_inbox_returns_undelivered_messages_once_in_order() -> None:
    result = _running()
    message_handle(user_id="alice", channel="web", content="one")
    message_handle(user_id="alice", channel="web", content="two")

    first = thread_inbox_take(user_id="alice", thread_id=result.thread_id, worker_id="w1")
    second = thread_inbox_take(user_id="alice", thread_id=result.thread_id, worker_id="w1")

    assert [entry.content for entry in first] == ["one", "two"]
    assert second == []
    assert not ConversationEntry.objects.filter(sender="user", delivered_at__isnull=True).exists()


def test_only_the_lease_holder_takes_the_inbox() -> None:
    result = _running()
    message_handle(user_id="alice", channel="web", content="one")

    with pytest.raises(LeaseNotHeld):
        thread_inbox_take(user_id="alice", thread_id=result.thread_id, worker_id="w2")

    assert ConversationEntry.objects.filter(sender="user", delivered_at__isnull=True).count() == 1


def test_completed_outcome_adds_the_agent_response_and_untracks() -> None:
    result = _running()

    outcome = thread_outcome_record(
        user_id="alice",
        thread_id=result.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome(kind="completed", response="Done!"),
    )

    thread = Thread.objects.get(pk=result.thread_id)
    assert (thread.state, thread.tracked, thread.lease_owner) == ("completed", False, "")
    assert thread.outcome is not None
    assert thread.outcome["response"] == "Done!"
    assert outcome.follow_up is None
    assert entries_of(result.conversation_id)[-1] == (3, "agent", "Done!", thread.id)


def test_completed_without_a_response_adds_no_entry() -> None:
    result = _running()

    _record(result, ThreadOutcome(kind="completed"))

    assert len(entries_of(result.conversation_id)) == 2
    assert Thread.objects.get(pk=result.thread_id).state == "completed"


@pytest.mark.parametrize(
    ("outcome", "state", "text"),
    [
        (ThreadOutcome(kind="stopped"), "stopped", "Thread stopped"),
        (ThreadOutcome(kind="max_iterations"), "stopped", "Thread reached max iterations"),
        (
            ThreadOutcome(kind="failed", error="model timeout"),
            "failed",
            "Thread failed: model timeout",
        ),
    ],
)
def test_ending_outcomes_add_a_system_entry_and_untrack(
    outcome: ThreadOutcome, state: str, text: str
) -> None:
    result = _running()

    _record(result, outcome)

    thread = Thread.objects.get(pk=result.thread_id)
    assert (thread.state, thread.tracked) == (state, False)
    assert thread.finished_at is not None
    assert entries_of(result.conversation_id)[-1] == (3, "system", text, thread.id)


@pytest.mark.parametrize(
    ("outcome", "text"),
    [
        (
            ThreadOutcome(kind="max_iterations", response="echo: hello"),
            "Thread reached max iterations",
        ),
        (
            ThreadOutcome(kind="failed", response="echo: hello", error="the turn timed out"),
            "Thread failed: the turn timed out",
        ),
    ],
)
def test_an_outcome_that_carries_a_reply_writes_it_before_the_entry_saying_how_it_ended(
    outcome: ThreadOutcome, text: str
) -> None:
    result = _running()

    recorded = _record(result, outcome)

    thread = Thread.objects.get(pk=result.thread_id)
    assert entries_of(result.conversation_id)[-2:] == [
        (3, "agent", "echo: hello", thread.id),
        (4, "system", text, thread.id),
    ]
    assert [entry.sender for entry in recorded.entries] == ["agent", "system"]
    assert thread.outcome is not None
    assert (thread.outcome["kind"], thread.outcome["response"]) == (outcome.kind, "echo: hello")


def test_gate_paused_outcome_waits_and_stays_tracked() -> None:
    result = _running()

    _record(result, ThreadOutcome(kind="gate_paused", gate_name="approval", gate_action="rm -rf"))

    thread = Thread.objects.get(pk=result.thread_id)
    assert (thread.state, thread.tracked, thread.lease_owner) == ("waiting", True, "")
    assert entries_of(result.conversation_id)[-1] == (
        3,
        "system",
        "Gate 'approval' paused execution of action: rm -rf",
        thread.id,
    )


def test_recording_an_outcome_twice_is_a_conflict_and_adds_no_entry() -> None:
    result = _running()
    _record(result, ThreadOutcome(kind="completed", response="Done!"))

    with pytest.raises(OutcomeAlreadyRecorded) as raised:
        _record(result, ThreadOutcome(kind="completed", response="Done!"))

    assert raised.value.status_code == 409
    assert len(entries_of(result.conversation_id)) == 3


def test_gate_paused_twice_is_a_conflict() -> None:
    result = _running()
    gate = ThreadOutcome(kind="gate_paused", gate_name="g", gate_action="a")
    _record(result, gate)

    with pytest.raises(InvalidThreadTransition):
        _record(result, gate)

    assert len(entries_of(result.conversation_id)) == 3


def test_outcome_from_a_worker_without_the_lease_is_a_conflict() -> None:
    result = _running()

    with pytest.raises(LeaseNotHeld):
        _record(result, ThreadOutcome(kind="completed", response="x"), worker_id="w2")

    assert Thread.objects.get(pk=result.thread_id).state == "running"


def test_outcome_for_unknown_or_foreign_thread_is_not_found() -> None:
    result = _running(user_id="bob")

    with pytest.raises(ThreadNotFound):
        thread_outcome_record(
            user_id="alice",
            thread_id=result.thread_id,
            worker_id="w1",
            outcome=ThreadOutcome(kind="stopped"),
        )
    with pytest.raises(ThreadNotFound):
        thread_outcome_record(
            user_id="alice", thread_id=uuid.uuid4(), outcome=ThreadOutcome(kind="stopped")
        )

    assert Thread.objects.get(pk=result.thread_id).state == "running"


def test_clear_of_unknown_or_foreign_conversation_is_not_found() -> None:
    result = _running(user_id="bob")

    with pytest.raises(ConversationNotFound):
        conversation_clear(user_id="alice", conversation_id=result.conversation_id)
    with pytest.raises(ConversationNotFound):
        conversation_clear(user_id="alice", conversation_id=uuid.uuid4())

    assert len(entries_of(result.conversation_id)) == 2


def test_message_after_last_inbox_read_is_carried_by_a_follow_up_thread() -> None:
    result = _running()
    message_handle(user_id="alice", channel="web", content="early")
    thread_inbox_take(user_id="alice", thread_id=result.thread_id, worker_id="w1")
    late = message_handle(user_id="alice", channel="web", content="late")

    outcome = thread_outcome_record(
        user_id="alice",
        thread_id=result.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome(kind="completed", response="answer to early"),
    )

    assert late.action == "injected"
    assert outcome.follow_up is not None
    follow_up = Thread.objects.get(pk=outcome.follow_up.id)
    assert (follow_up.goal, follow_up.tracked, follow_up.state) == ("late", True, "created")
    assert follow_up.metadata["goal_entry_seqs"] == [late.seq]
    assert ConversationEntry.objects.get(seq=late.seq).delivered_at is not None
    assert entries_of(result.conversation_id)[-2:] == [
        (5, "agent", "answer to early", result.thread_id),
        (6, "system", "Thread started", follow_up.id),
    ]
    assert waiting_for_a_worker(follow_up.id)


def test_interrupted_threads_later_outcome_is_stopped_and_adds_nothing() -> None:
    result = _running()
    conversation_busy_policy_set(
        user_id="alice", conversation_id=result.conversation_id, busy_policy="interrupt"
    )
    message_handle(user_id="alice", channel="web", content="instead")
    before = entries_of(result.conversation_id)

    outcome = _record(result, ThreadOutcome(kind="completed", response="too late"))

    thread = Thread.objects.get(pk=result.thread_id)
    assert thread.state == "stopped"
    assert thread.outcome is not None
    assert thread.outcome["reported_kind"] == "completed"
    assert entries_of(result.conversation_id) == before
    assert outcome.follow_up is None


def test_created_thread_can_only_be_stopped_or_failed() -> None:
    result = message_handle(user_id="alice", channel="web", content="hello")

    with pytest.raises(InvalidThreadTransition):
        _record(result, ThreadOutcome(kind="completed", response="x"))
    _record(result, ThreadOutcome(kind="failed", error="no engine"), worker_id="any")

    assert Thread.objects.get(pk=result.thread_id).state == "failed"


def test_clear_deletes_entries_and_untracks_threads() -> None:
    result = _running()
    message_handle(user_id="alice", channel="web", content="more")

    cleared = conversation_clear(user_id="alice", conversation_id=result.conversation_id)
    after = message_handle(user_id="alice", channel="web", content="fresh start")

    thread = Thread.objects.get(pk=result.thread_id)
    assert cleared.deleted_entries == 3
    assert cleared.untracked_thread_ids == [thread.id]
    assert (thread.tracked, thread.cancel_requested) == (False, True)
    assert after.action == "spawned"
    assert [entry[2] for entry in entries_of(result.conversation_id)] == [
        "fresh start",
        "Thread started",
    ]
    assert after.seq == 4  # seqs are never reused
    assert Conversation.objects.get(pk=result.conversation_id).last_seq == 5


def test_expired_lease_returns_the_thread_to_the_queue() -> None:
    result = _running()
    Thread.objects.filter(pk=result.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=5)
    )
    assert not waiting_for_a_worker(result.thread_id)

    swept = thread_leases_sweep()

    thread = Thread.objects.get(pk=result.thread_id)
    assert swept.requeued == [thread.id]
    assert (thread.state, thread.lease_owner, thread.lease_expires_at) == ("created", "", None)
    assert waiting_for_a_worker(thread.id)


def test_sweep_leaves_live_leases_alone() -> None:
    result = _running()

    swept = thread_leases_sweep()

    assert swept.requeued == []
    assert Thread.objects.get(pk=result.thread_id).state == "running"


def test_sweep_stops_an_expired_thread_that_was_asked_to_stop() -> None:
    result = _running()
    conversation_clear(user_id="alice", conversation_id=result.conversation_id)
    Thread.objects.filter(pk=result.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=5)
    )

    swept = thread_leases_sweep()

    assert swept.stopped == [result.thread_id]
    assert Thread.objects.get(pk=result.thread_id).state == "stopped"


def test_a_stopping_holder_gives_its_thread_back_to_the_queue_unfinished() -> None:
    result = _running()

    given_up = thread_lease_give_up(
        user_id="alice", thread_id=result.thread_id, worker_id="w1", lease_epoch=1
    )

    thread = Thread.objects.get(pk=result.thread_id)
    assert given_up
    assert (thread.state, thread.lease_owner, thread.lease_expires_at) == ("created", "", None)
    # The epoch moves only with the next claim, which resumes the turn.
    assert (thread.claim_count, thread.outcome) == (1, None)
    assert waiting_for_a_worker(thread.id)
    assert thread_claim(user_id="alice", thread_id=thread.id, worker_id="w2").claim_count == 2


def test_a_lease_not_held_any_more_is_not_given_up() -> None:
    result = _running()
    Thread.objects.filter(pk=result.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    thread_claim(user_id="alice", thread_id=result.thread_id, worker_id="w2")

    by_the_old_holder = thread_lease_give_up(
        user_id="alice", thread_id=result.thread_id, worker_id="w1", lease_epoch=1
    )
    with_an_old_epoch = thread_lease_give_up(
        user_id="alice", thread_id=result.thread_id, worker_id="w2", lease_epoch=1
    )

    thread = Thread.objects.get(pk=result.thread_id)
    assert (by_the_old_holder, with_an_old_epoch) == (False, False)
    assert (thread.state, thread.lease_owner, thread.claim_count) == ("running", "w2", 2)


def test_a_thread_asked_to_stop_is_stopped_rather_than_given_back() -> None:
    result = _running()
    thread_request_cancel(user_id="alice", thread_id=result.thread_id)

    given_up = thread_lease_give_up(
        user_id="alice", thread_id=result.thread_id, worker_id="w1", lease_epoch=1
    )

    thread = Thread.objects.get(pk=result.thread_id)
    assert given_up
    assert (thread.state, thread.lease_owner) == ("stopped", "")
    assert not waiting_for_a_worker(thread.id)
