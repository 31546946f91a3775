"""The turn worker in-process: it takes runnable threads from their rows and hands them to
THREAD_RUNNER, on the real database, with real threads racing."""

from __future__ import annotations

import collections
import datetime
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DataError, OperationalError, connection, transaction
from django.test import override_settings
from django.utils import timezone

from conversations.models import LIVE_STATES, ConversationEntry, Thread
from conversations.services import (
    ThreadOutcome,
    lease_owner_id,
    message_handle,
    thread_claim,
    thread_claim_next,
    thread_claim_runnable,
    thread_leases_sweep,
    thread_outcome_record,
)
from core.notify import listener_stop
from engine.checkpoint import conversation_checkpoint_path, thread_checkpoint_path
from operations.models import WorkerName
from operations.turn_worker import TurnWorker
from tests.conversations.helpers import waiting_for_a_worker
from tests.support.concurrency import run_together
from tests.support.servers import database_url, worker_process
from workspace.models import Document

pytestmark = pytest.mark.django_db(transaction=True)

RUNS: list[tuple[str, str, str, str]] = []
_RUNS_LOCK = threading.Lock()


@pytest.fixture(autouse=True)
def _listener_stopped() -> Iterator[None]:
    """A worker started here listens on a connection of this process: close it after the test,
    or the test database could not be dropped."""
    yield
    listener_stop()


def record_run(*, thread: Thread, worker_id: str) -> None:
    """A runner that only notes what it was handed (thread, its state and lease, worker)."""
    with _RUNS_LOCK:
        RUNS.append((str(thread.pk), thread.state, thread.lease_owner, worker_id))


def fail_with_a_database_error(*, thread: Thread, worker_id: str) -> None:
    raise OperationalError("the database went away")


TURN_ENDS = threading.Event()


def wait_for_the_test(*, thread: Thread, worker_id: str) -> None:
    """A turn that lasts until the test lets it end."""
    TURN_ENDS.wait(timeout=30)


def _registered_worker(*, silent_for: float) -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT worker_id FROM procrastinate_register_worker_v1()")
        (worker_row,) = cursor.fetchone()
        cursor.execute(
            "UPDATE procrastinate_workers SET last_heartbeat = now() - make_interval(secs => %s)"
            " WHERE id = %s",
            [silent_for, worker_row],
        )
    return int(worker_row)


def _last_heartbeat(worker_row: int | None) -> datetime.datetime:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT last_heartbeat FROM procrastinate_workers WHERE id = %s", [worker_row]
        )
        (beat,) = cursor.fetchone()
    return beat


def _agent_entries(conversation_id: Any) -> list[str]:
    return list(
        ConversationEntry.objects.filter(conversation_id=conversation_id, sender="agent")
        .order_by("seq")
        .values_list("content", flat=True)
    )


@override_settings(THREAD_RUNNER="tests.operations.test_turn_worker.record_run")
def test_a_spawned_thread_is_claimed_and_handed_to_the_runner_once() -> None:
    RUNS.clear()
    sent = message_handle(user_id="alice", channel="web", content="hello")

    ran = TurnWorker(name="turns", concurrency=1).drain()

    ((thread_id, state, lease_owner, worker_id),) = RUNS
    assert (ran, thread_id, state) == (1, str(sent.thread_id), "running")
    # The runner holds the lease the worker claimed: its outcome and heartbeats are accepted.
    assert lease_owner == worker_id == Thread.objects.get(pk=sent.thread_id).lease_owner
    assert TurnWorker(name="turns", concurrency=1).drain() == 0


@override_settings(ENGINE_ECHO_LATENCY_MS=0)
def test_the_default_runner_is_the_reference_engine_and_answers() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    TurnWorker(name="turns", concurrency=1).drain()

    assert Thread.objects.get(pk=sent.thread_id).state == "completed"
    assert _agent_entries(sent.conversation_id) == ["echo: hello"]


@override_settings(ENGINE_ECHO_LATENCY_MS=0)
def test_a_thread_paused_at_a_gate_runs_again_only_for_a_message() -> None:
    # An external engine claims the thread and pauses it at a gate.
    sent = message_handle(user_id="alice", channel="web", content="deploy it")
    thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="external")
    thread_outcome_record(
        user_id="alice",
        thread_id=sent.thread_id,
        outcome=ThreadOutcome(kind="gate_paused", gate_name="approval", gate_action="deploy"),
        worker_id="external",
    )

    # Nothing new was said: nothing to run.
    assert TurnWorker(name="turns", concurrency=1).drain() == 0
    paused = Thread.objects.get(pk=sent.thread_id)
    assert (paused.state, paused.claim_count) == ("waiting", 1)

    # A message for it makes it runnable, and the worker's turn answers.
    message_handle(user_id="alice", channel="web", content="approved")
    assert TurnWorker(name="turns", concurrency=1).drain() == 1

    assert Thread.objects.get(pk=sent.thread_id).state == "completed"
    assert len(_agent_entries(sent.conversation_id)) == 1


@override_settings(THREAD_RUNNER="tests.operations.test_turn_worker.record_run")
def test_leased_cancelled_and_finished_threads_are_not_claimed() -> None:
    RUNS.clear()
    leased = message_handle(user_id="alice", channel="a", content="one")
    thread_claim(user_id="alice", thread_id=leased.thread_id, worker_id="someone-else")
    cancelled = message_handle(user_id="alice", channel="b", content="two")
    Thread.objects.filter(pk=cancelled.thread_id).update(cancel_requested=True)

    assert TurnWorker(name="turns", concurrency=1).drain() == 0
    assert RUNS == []
    assert Thread.objects.get(pk=leased.thread_id).lease_owner == "someone-else"


@override_settings(THREAD_RUNNER="tests.operations.test_turn_worker.record_run")
def test_racing_workers_hand_each_thread_to_exactly_one_of_them() -> None:
    RUNS.clear()
    sent = [message_handle(user_id=f"tenant-{n}", channel="web", content="hi") for n in range(24)]

    results, errors = run_together(
        [TurnWorker(name="turns", concurrency=1).drain for _ in range(4)]
    )

    assert errors == []
    assert sum(results) == 24
    runs = collections.Counter(thread_id for thread_id, *_ in RUNS)
    assert runs == {str(message.thread_id): 1 for message in sent}


@override_settings(
    THREAD_RUNNER="tests.operations.test_turn_worker.fail_with_a_database_error",
    ENGINE_LEASE_SECONDS=1,
)
def test_a_turn_that_raises_is_not_lost_its_lease_lapses_and_the_sweeper_requeues_it() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    assert TurnWorker(name="turns", concurrency=1).drain() == 1

    thread = Thread.objects.get(pk=sent.thread_id)
    assert thread.state == "running"
    Thread.objects.filter(pk=sent.thread_id).update(
        lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
    )
    assert thread_leases_sweep().requeued == [thread.pk]
    assert waiting_for_a_worker(sent.thread_id)


CRASHING_CLAIMS: set[int] = set()


def crash_on_some_claims(*, thread: Thread, worker_id: str) -> None:
    """A runner that raises on the claims named in CRASHING_CLAIMS and answers on the others."""
    if thread.claim_count in CRASHING_CLAIMS:
        raise ValueError(f"Invalid isoformat string: 'x' (claim {thread.claim_count})")
    thread_outcome_record(
        user_id=thread.user_id,
        thread_id=thread.pk,
        worker_id=worker_id,
        lease_epoch=thread.claim_count,
        outcome=ThreadOutcome(kind="completed", response="done"),
    )


def _run_claims(thread_id: Any, claims: int) -> Thread:
    """Run the thread's next ``claims`` claims, sweeping each lapsed lease as the sweep would."""
    for _ in range(claims):
        assert TurnWorker(name="turns", concurrency=1).drain() == 1
        Thread.objects.filter(pk=thread_id, state="running").update(
            lease_expires_at=timezone.now() - datetime.timedelta(seconds=1)
        )
        thread_leases_sweep()
    return Thread.objects.get(pk=thread_id)


@override_settings(THREAD_RUNNER="tests.operations.test_turn_worker.crash_on_some_claims")
def test_a_turn_that_crashes_on_three_claims_in_a_row_fails_with_the_error() -> None:
    CRASHING_CLAIMS.clear()
    CRASHING_CLAIMS.update({1, 2, 3})
    sent = message_handle(user_id="alice", channel="web", content="hello")

    after_two = _run_claims(sent.thread_id, 2)
    assert (after_two.state, after_two.metadata["crashed_claims"]) == ("created", [1, 2])
    thread = _run_claims(sent.thread_id, 1)

    assert (thread.state, thread.claim_count, thread.lease_owner) == ("failed", 3, "")
    assert thread.outcome is not None
    assert thread.outcome["error"] == (
        "the engine crashed on 3 claims in a row; the last: "
        "ValueError: Invalid isoformat string: 'x' (claim 3)"
    )
    # Its conversation is told, as of any failure.
    assert ConversationEntry.objects.filter(
        conversation_id=sent.conversation_id, sender="system", content__contains="failed"
    ).exists()


@override_settings(THREAD_RUNNER="tests.operations.test_turn_worker.crash_on_some_claims")
def test_crashes_that_are_not_in_a_row_or_are_database_errors_are_retried() -> None:
    CRASHING_CLAIMS.clear()
    CRASHING_CLAIMS.update({1, 2})
    sent = message_handle(user_id="alice", channel="web", content="hello")
    # Claim 3 answers: the thread completes, and its crashes before never add up to three.
    assert _run_claims(sent.thread_id, 3).state == "completed"

    failing = message_handle(user_id="bob", channel="web", content="hello")
    with override_settings(
        THREAD_RUNNER="tests.operations.test_turn_worker.fail_with_a_database_error"
    ):
        thread = _run_claims(failing.thread_id, 4)
    assert (thread.state, thread.claim_count) == ("created", 4)
    assert "crashed_claims" not in thread.metadata


def test_the_claim_is_served_by_the_index_of_created_threads() -> None:
    from conversations.services.lease import CLAIM_RUNNABLE_ANY_TENANT_SQL

    with transaction.atomic(), connection.cursor() as cursor:
        # An empty test table is scanned whatever the indexes: ask whether an index can serve it.
        cursor.execute("SET LOCAL enable_seqscan = off")
        params: list[Any] = ["probe", datetime.timedelta(seconds=30), "1s"]
        cursor.execute("EXPLAIN " + CLAIM_RUNNABLE_ANY_TENANT_SQL, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert "thread_claimable_idx" in plan


def _serve(worker: TurnWorker) -> threading.Thread:
    def run() -> None:
        try:
            worker.run()
        finally:
            connection.close()

    serving = threading.Thread(target=run, name="turn-worker")
    serving.start()
    return serving


def _wait_until(condition: Any, *, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.02)


@override_settings(ENGINE_ECHO_LATENCY_MS=0, WORKER_HEARTBEAT_SECONDS=0.2)
def test_a_running_worker_answers_new_messages_and_heartbeats_under_its_kind() -> None:
    worker = TurnWorker(name="turns", concurrency=4)
    serving = _serve(worker)
    try:
        _wait_until(lambda: WorkerName.objects.filter(name="turns").exists())
        # Where it runs, for the admin's workers table.
        assert WorkerName.objects.filter(name="turns").values_list("host", "pid").get() == (
            socket.gethostname(),
            os.getpid(),
        )
        sent = [
            message_handle(user_id="alice", channel=f"c{n}", content=f"hello {n}") for n in range(6)
        ]
        for message in sent:
            _wait_until(lambda m=message: bool(_agent_entries(m.conversation_id)))
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT last_heartbeat > now() - interval '5 seconds' FROM procrastinate_workers"
                " WHERE id = %s",
                [worker.worker_id],
            )
            assert cursor.fetchone() == (True,)
    finally:
        worker.stop()
        serving.join(timeout=15)
    assert not serving.is_alive()
    # Stopped: its heartbeat row is gone, so /readyz no longer counts it.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM procrastinate_workers WHERE id = %s", [worker.worker_id]
        )
        assert cursor.fetchone() == (0,)
    assert [_agent_entries(message.conversation_id) for message in sent] == [
        [f"echo: hello {n}"] for n in range(6)
    ]


def _registered_workers() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM procrastinate_workers")
        (count,) = cursor.fetchone()
    return int(count)


def test_a_worker_whose_name_cannot_be_written_registers_nothing_and_tries_again() -> None:
    """Registration and name are one transaction: a worker registered without its name would beat
    for ever unseen by /readyz (as when new code started before its migration)."""
    worker = TurnWorker(name="t" * 101, concurrency=1)  # longer than the name column
    # Procrastinate's tables are not flushed between tests: count what others left.
    registered_before = _registered_workers()

    with pytest.raises(DataError):
        worker._heartbeat()

    assert (worker.worker_id, _registered_workers()) == (None, registered_before)
    # Fixed (here: the name; in life, the migration applied): the next beat registers both.
    worker.name = "turns"
    worker._heartbeat()
    assert _registered_workers() == registered_before + 1
    assert worker.worker_id is not None
    assert WorkerName.objects.get(worker_id=worker.worker_id).name == "turns"


@override_settings(THREAD_RUNNER="conversations.runners.wait_for_external_engine")
def test_with_external_engines_the_worker_claims_nothing() -> None:
    worker = TurnWorker(name="turns", concurrency=1)
    serving = _serve(worker)
    try:
        sent = message_handle(user_id="alice", channel="web", content="hello")
        _wait_until(lambda: WorkerName.objects.filter(name="turns").exists())
        time.sleep(1.5)  # more than a poll interval: the worker looked, and left it
        assert Thread.objects.get(pk=sent.thread_id).state == "created"
    finally:
        worker.stop()
        serving.join(timeout=15)
    assert waiting_for_a_worker(sent.thread_id)


def test_the_threads_queue_is_served_by_a_worker_of_its_own() -> None:
    with pytest.raises(CommandError, match="threads queue is served by a worker of its own"):
        call_command("run_worker", queues="threads,indexing", concurrency=1, name="mixed")


@override_settings(ENGINE_ECHO_LATENCY_MS=50, ENGINE_LEASE_SECONDS=1)
def test_a_turn_worker_killed_mid_model_call_loses_nothing() -> None:
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "ENGINE_MODEL": "echo",
        "ENGINE_ECHO_LATENCY_MS": "60000",
        "ENGINE_LEASE_SECONDS": "1",
        "ENGINE_HEARTBEAT_SECONDS": "0.2",
    }
    sent = message_handle(user_id="alice", channel="web", content="still there?")
    with worker_process(env, queues="threads", concurrency=1) as worker:
        # Claimed, the turn goes straight to its (minute-long) model call: nothing is written
        # before the first step's checkpoint.
        _wait_until(lambda: Thread.objects.filter(pk=sent.thread_id, state="running").exists())
        time.sleep(0.3)
        assert not Document.objects.filter(path=thread_checkpoint_path(sent.thread_id)).exists()
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    time.sleep(1.5)  # the killed worker's lease lapses

    assert thread_leases_sweep().requeued == [sent.thread_id]
    assert TurnWorker(name="turns", concurrency=1).drain() == 1

    thread = Thread.objects.get(pk=sent.thread_id)
    assert (thread.state, thread.claim_count) == ("completed", 2)
    assert _agent_entries(sent.conversation_id) == ["echo: still there?"]


def test_a_killed_turn_workers_turn_is_answered_once_by_another_worker_once_it_is_dead() -> None:
    with _two_workers_one_in_a_turn("still there?") as (sent, doomed, _):
        # Step 1 is checkpointed and step 2 is with the model when its worker dies.
        doomed.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        _wait_until(lambda: bool(_agent_entries(sent.conversation_id)), seconds=30)
        answered_after = time.monotonic() - killed_at
        time.sleep(1.5)  # longer than a step: a second run would have answered again by now

    print(f"turn worker SIGKILL, heartbeat only: answered {answered_after:.1f} s after the kill")
    assert answered_after <= 10
    assert _agent_entries(sent.conversation_id) == ["echo: still there?"]
    thread = Thread.objects.get(pk=sent.thread_id)
    assert (thread.state, thread.claim_count) == ("completed", 2)
    assert [call["step"] for call in thread.model_calls] == [1, 2, 3]


@contextmanager
def _two_workers_one_in_a_turn(
    content: str,
) -> Iterator[tuple[Any, subprocess.Popen[str], subprocess.Popen[str]]]:
    """Two turn workers, as on two hosts (no serve to say one died, only its heartbeat), and a
    three-step turn whose step 1 is checkpointed and step 2 is with the model. Yields the sent
    message, the worker running the turn and the other one. The lease (30 s) and the minute
    sweep are far longer than the tests wait."""
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "ENGINE_MODEL": "echo",
        "ENGINE_ECHO_LATENCY_MS": "1000",
        "ENGINE_ECHO_STEPS": "3",
        "ENGINE_HEARTBEAT_SECONDS": "0.5",
        "WORKER_HEARTBEAT_SECONDS": "0.5",
        "TURN_WORKER_DEAD_SECONDS": "2",
        "TURN_WORKER_SWEEP_SECONDS": "0.5",
    }
    with worker_process(env, concurrency=1) as first, worker_process(env, concurrency=1) as second:
        _wait_until(lambda: WorkerName.objects.filter(name="worker").count() == 2, seconds=60)
        sent = message_handle(user_id="alice", channel="web", content=content)
        _wait_until(lambda: _checkpointed_steps(sent.thread_id) == 1)
        holder = Thread.objects.get(pk=sent.thread_id).lease_owner
        running, other = (
            (first, second) if holder.split(":")[3] == str(first.pid) else (second, first)
        )
        yield sent, running, other


def _checkpointed_steps(thread_id: Any) -> int:
    content = (
        Document.objects.filter(path=thread_checkpoint_path(thread_id))
        .values_list("content", flat=True)
        .first()
    )
    return len(json.loads(content)["steps"]) if content else 0


@override_settings(THREAD_RUNNER="tests.operations.test_turn_worker.record_run")
def test_the_thread_that_has_waited_longest_is_claimed_first_paused_or_new() -> None:
    # A thread paused at a gate, then spoken to; then a new conversation's thread is spawned.
    paused = message_handle(user_id="alice", channel="gate", content="deploy it")
    thread_claim(user_id="alice", thread_id=paused.thread_id, worker_id="external")
    thread_outcome_record(
        user_id="alice",
        thread_id=paused.thread_id,
        outcome=ThreadOutcome(kind="gate_paused", gate_name="approval", gate_action="deploy"),
        worker_id="external",
    )
    message_handle(user_id="alice", channel="gate", content="approved")
    newer = message_handle(user_id="bob", channel="web", content="hello")
    RUNS.clear()

    TurnWorker(name="turns", concurrency=1).drain()

    # The approval came first: a stream of new threads never starves a paused one.
    assert [thread_id for thread_id, *_ in RUNS] == [str(paused.thread_id), str(newer.thread_id)]


def test_external_engines_claim_in_the_same_order_and_get_the_inbox_with_it() -> None:
    paused = message_handle(user_id="alice", channel="gate", content="deploy it")
    thread_claim(user_id="alice", thread_id=paused.thread_id, worker_id="external")
    thread_outcome_record(
        user_id="alice",
        thread_id=paused.thread_id,
        outcome=ThreadOutcome(kind="gate_paused", gate_name="approval", gate_action="deploy"),
        worker_id="external",
    )
    message_handle(user_id="alice", channel="gate", content="approved")
    newer = message_handle(user_id="alice", channel="web", content="hello")

    first = thread_claim_next(user_id="alice", worker_id="engine")
    second = thread_claim_next(user_id="alice", worker_id="engine")

    assert first is not None
    assert second is not None
    assert (first.thread.pk, [entry.content for entry in first.inbox]) == (
        paused.thread_id,
        ["approved"],
    )
    assert second.thread.pk == newer.thread_id
    assert thread_claim_next(user_id="bob", worker_id="engine") is None


@override_settings(
    THREAD_RUNNER="tests.operations.test_turn_worker.record_run",
    TURN_WORKER_DEAD_SECONDS=5,
    TURN_WORKER_SWEEP_SECONDS=0.1,
)
def test_a_running_worker_takes_over_the_turns_of_a_dead_turn_worker_but_not_of_an_engine() -> None:
    RUNS.clear()
    dead = message_handle(user_id="alice", channel="a", content="orphaned")
    thread_claim_runnable(worker_id=lease_owner_id(worker_row=_registered_worker(silent_for=60)))
    engine = message_handle(user_id="alice", channel="b", content="the engine's")
    thread_claim(user_id="alice", thread_id=engine.thread_id, worker_id="engine-1")
    Thread.objects.filter(pk__in=[dead.thread_id, engine.thread_id]).update(
        updated_at=timezone.now() - datetime.timedelta(seconds=60)
    )
    worker = TurnWorker(name="turns", concurrency=1)

    serving = _serve(worker)
    try:
        _wait_until(lambda: any(run[0] == str(dead.thread_id) for run in RUNS), seconds=10)
    finally:
        worker.stop()
        serving.join(timeout=15)

    thread = Thread.objects.get(pk=dead.thread_id)
    assert (thread.claim_count, thread.lease_owner.split(":")[1]) == (2, str(worker.worker_id))
    assert Thread.objects.get(pk=engine.thread_id).lease_owner == "engine-1"


@override_settings(
    THREAD_RUNNER="tests.operations.test_turn_worker.record_run",
    TURN_WORKER_SWEEP_SECONDS=60,
)
def test_a_worker_gives_up_the_turns_of_the_worker_it_replaces_before_its_first_claim() -> None:
    RUNS.clear()
    # The dead worker's heartbeat and lease renewals are fresh: only serve knows it is gone.
    owner = lease_owner_id(worker_row=_registered_worker(silent_for=0)).split(":")
    owner[3] = "4000001"
    sent = message_handle(user_id="alice", channel="web", content="interrupted")
    thread_claim_runnable(worker_id=":".join(owner))
    worker = TurnWorker(name="turns", concurrency=1, replaces=[4000001])

    serving = _serve(worker)
    try:
        _wait_until(lambda: bool(RUNS), seconds=10)
    finally:
        worker.stop()
        serving.join(timeout=15)

    assert [run[0] for run in RUNS] == [str(sent.thread_id)]
    assert Thread.objects.get(pk=sent.thread_id).claim_count == 2


@override_settings(
    THREAD_RUNNER="tests.operations.test_turn_worker.wait_for_the_test",
    WORKER_HEARTBEAT_SECONDS=0.1,
)
def test_a_stopping_worker_beats_until_its_turns_end() -> None:
    TURN_ENDS.clear()
    sent = message_handle(user_id="alice", channel="web", content="a long one")
    worker = TurnWorker(name="turns", concurrency=1)
    serving = _serve(worker)
    try:
        _wait_until(lambda: Thread.objects.get(pk=sent.thread_id).state == "running")
        worker.stop()
        stopped_beat = _last_heartbeat(worker.worker_id)
        time.sleep(0.5)

        assert serving.is_alive()
        assert _last_heartbeat(worker.worker_id) > stopped_beat
    finally:
        TURN_ENDS.set()
        serving.join(timeout=15)
    assert not serving.is_alive()
    # Its runner returned without an outcome while the worker stopped: handed back.
    assert waiting_for_a_worker(sent.thread_id)


def _checkpoint(thread_id: Any) -> dict[str, Any]:
    content = Document.objects.get(path=thread_checkpoint_path(thread_id)).content
    return dict(json.loads(content))


@override_settings(ENGINE_ECHO_LATENCY_MS=2000, WORKER_HEARTBEAT_SECONDS=0.2)
def test_a_stopping_worker_hands_its_turn_back_without_waiting_for_the_model() -> None:
    sent = message_handle(user_id="alice", channel="web", content="still there?")
    worker = TurnWorker(name="turns", concurrency=1)
    serving = _serve(worker)
    try:
        # Claimed, the turn goes straight to its (two-second) model call.
        _wait_until(lambda: Thread.objects.filter(pk=sent.thread_id, state="running").exists())
        call_ends = time.monotonic() + 2.0
        time.sleep(0.2)
        stopping_at = time.monotonic()
        worker.stop()
        serving.join(timeout=15)
        stopped_in = time.monotonic() - stopping_at
    finally:
        worker.stop()
        serving.join(timeout=15)
    handed_back = Thread.objects.get(pk=sent.thread_id)
    checkpoint = _checkpoint(sent.thread_id)
    # The abandoned call ends in its own thread meanwhile; nothing of the turn may write after.
    time.sleep(max(0.0, call_ends - time.monotonic()) + 0.5)
    after_the_call = Thread.objects.get(pk=sent.thread_id)

    print(f"turn worker stop mid model call: stopped in {stopped_in:.2f} s")
    assert stopped_in < 1.5
    assert (handed_back.state, handed_back.lease_owner, handed_back.claim_count) == (
        "created",
        "",
        1,
    )
    assert [event["kind"] for event in checkpoint["events"]] == ["claimed", "handed_back"]
    assert (checkpoint["status"], checkpoint["steps"]) == ("running", [])
    assert after_the_call.updated_at == handed_back.updated_at
    assert _checkpoint(sent.thread_id) == checkpoint
    assert _agent_entries(sent.conversation_id) == []

    with override_settings(ENGINE_ECHO_LATENCY_MS=0):
        assert TurnWorker(name="turns", concurrency=1).drain() == 1

    thread = Thread.objects.get(pk=sent.thread_id)
    assert (thread.state, thread.claim_count) == ("completed", 2)
    assert _agent_entries(sent.conversation_id) == ["echo: still there?"]
    assert [call["step"] for call in thread.model_calls] == [1]
    assert [event["kind"] for event in _checkpoint(sent.thread_id)["events"]] == [
        "claimed",
        "handed_back",
        "resumed",
        "step",
        "outcome",
    ]


def test_only_a_turn_worker_replaces_a_dead_one() -> None:
    with pytest.raises(CommandError, match="--replaces names a dead turn worker"):
        call_command("run_worker", queues="indexing", concurrency=1, name="bg", replaces=[1])


def test_a_worker_paused_past_its_lease_writes_nothing_after_the_takeover() -> None:
    """SIGSTOP a turn worker mid-turn; the other worker finds it dead, takes the turn over and
    answers; SIGCONT the first: every write it then tries (checkpoint, heartbeat, outcome) names
    its lease epoch and is refused, so the thread, its checkpoints and the conversation are as
    the successor left them."""
    with _two_workers_one_in_a_turn("are you there?") as (sent, paused, successor):
        paused.send_signal(signal.SIGSTOP)
        try:
            _wait_until(lambda: bool(_agent_entries(sent.conversation_id)), seconds=30)
            time.sleep(0.5)  # the successor's last checkpoint, after its outcome
            after_takeover = _checkpoints(sent.thread_id, sent.conversation_id)
        finally:
            paused.send_signal(signal.SIGCONT)
        time.sleep(3.0)  # its model call and heartbeat are long due: it tries its writes now
        alive = paused.poll() is None

    thread = Thread.objects.get(pk=sent.thread_id)
    assert (thread.state, thread.claim_count) == ("completed", 2)
    assert thread.outcome is not None
    assert thread.outcome["worker_id"].split(":")[3] == str(successor.pid)
    assert _agent_entries(sent.conversation_id) == ["echo: are you there?"]
    assert _checkpoints(sent.thread_id, sent.conversation_id) == after_takeover
    assert after_takeover[0] is not None
    assert json.loads(after_takeover[0][0])["status"] == "completed"
    assert alive, "the paused worker should go on serving after its lease was taken over"


def _checkpoints(thread_id: Any, conversation_id: Any) -> list[tuple[str, Any] | None]:
    """The thread's and the conversation's checkpoint: content and when it was written."""
    paths = (thread_checkpoint_path(thread_id), conversation_checkpoint_path(conversation_id))
    return [
        Document.objects.filter(path=path).values_list("content", "updated_at").first()
        for path in paths
    ]


def _send_every(
    interval: float, seconds: float, *, user_id: str, channel: str
) -> tuple[threading.Thread, list[str]]:
    """A sender on its own connection: one message every ``interval`` for ``seconds``."""
    sent: list[str] = []

    def send() -> None:
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                content = f"message {len(sent) + 1:04d}"
                message_handle(user_id=user_id, channel=channel, content=content)
                sent.append(content)
                time.sleep(interval)
        finally:
            connection.close()

    sender = threading.Thread(target=send, name="sender")
    sender.start()
    return sender, sent


@override_settings(
    ENGINE_ECHO_LATENCY_MS=100, ENGINE_MAX_ITERATIONS=3, ENGINE_INBOX_DEBOUNCE_MS=200
)
def test_a_steady_stream_into_one_conversation_gets_every_message_answered() -> None:
    worker = TurnWorker(name="turns", concurrency=2)
    serving = _serve(worker)
    try:
        sender, sent = _send_every(0.05, 4.0, user_id="alice", channel="web")
        sender.join(timeout=30)
        stream_ended = timezone.now()
        conversation_id = ConversationEntry.objects.get(content=sent[0]).conversation_id
        threads = Thread.objects.filter(conversation_id=conversation_id)
        _wait_until(lambda: not threads.filter(state__in=LIVE_STATES).exists(), seconds=60)
    finally:
        worker.stop()
        serving.join(timeout=15)

    entries = list(ConversationEntry.objects.filter(conversation_id=conversation_id))
    # Every thread that ended wrote the agent's reply after the last message it was sent.
    for thread in threads:
        own = [entry for entry in entries if entry.thread_id == thread.pk]
        # Its messages: those sent to it, and its goal's. A follow-up thread's goal may be only
        # messages carried over from the thread before it (sent to that one, or queued), which
        # keep their entry's thread; its metadata names them.
        sent_to_it = [entry.seq for entry in own if entry.sender == "user"]
        last_user = max([*sent_to_it, *thread.metadata.get("goal_entry_seqs", [])])
        replies = [entry.seq for entry in own if entry.sender == "agent"]
        assert replies, f"thread {thread.pk} ({thread.outcome}) ended without a reply"
        assert max(replies) > last_user
    # Every message is answered (the echo model repeats each), and the conversation ends with the
    # agent's reply to the last ones.
    echoed = {
        line.removeprefix("echo: ")
        for entry in entries
        if entry.sender == "agent"
        for line in entry.content.splitlines()
    }
    assert set(sent) <= echoed
    last = max(entries, key=lambda entry: entry.seq if entry.sender != "system" else 0)
    assert (last.sender, sent[-1] in last.content) == ("agent", True)
    # Answers came while the stream lasted, not only once it stopped: the debounce holds a step
    # back only so long.
    assert any(entry.sender == "agent" and entry.created_at < stream_ended for entry in entries)
