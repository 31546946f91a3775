"""Checkpoints of threads that ended long ago are deleted, in batches, by a command and an hourly
task; live threads (paused ones included) and recent ones keep theirs."""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.utils import timezone
from prometheus_client import REGISTRY
from pytest_django import DjangoAssertNumQueries
from pytest_django.fixtures import Settings as SettingsWrapper

from conversations.models import Conversation, Thread, ThreadState
from conversations.services import (
    ThreadOutcome,
    message_handle,
    thread_claim,
    thread_outcome_record,
)
from engine.checkpoint import (
    TurnState,
    checkpoint_save,
    conversation_checkpoint_path,
    now_iso,
    thread_checkpoint_path,
)
from engine.retention import _KINDS, _delete_statement, checkpoints_prune
from engine.tasks import checkpoints_prune_job
from tests.conversations.factories import ConversationFactory, ThreadFactory
from workspace.models import Document
from workspace.services import document_write

pytestmark = pytest.mark.django_db


def _ago(days: float) -> datetime:
    return timezone.now() - timedelta(days=days)


def _thread(
    state: ThreadState,
    *,
    finished_days_ago: float | None = None,
    conversation: Conversation | None = None,
) -> Thread:
    return ThreadFactory.create(
        conversation=conversation or ConversationFactory.create(),
        state=state,
        tracked=False,
        finished_at=None if finished_days_ago is None else _ago(finished_days_ago),
    )


def _checkpoint(path: str, *, written_days_ago: float, user_id: str = "alice") -> str:
    document = document_write(user_id=user_id, path=path, content='{"steps": []}')
    Document.objects.filter(pk=document.pk).update(updated_at=_ago(written_days_ago))
    return path


def _checkpoints_of(thread: Thread, *, written_days_ago: float) -> tuple[str, str]:
    assert thread.conversation_id is not None
    return (
        _checkpoint(thread_checkpoint_path(thread.id), written_days_ago=written_days_ago),
        _checkpoint(
            conversation_checkpoint_path(thread.conversation_id),
            written_days_ago=written_days_ago,
        ),
    )


def _paths() -> set[str]:
    return set(Document.objects.values_list("path", flat=True))


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def test_threads_finished_long_ago_lose_their_checkpoints_and_every_other_keeps_them() -> None:
    gone = [
        path
        for state in (ThreadState.COMPLETED, ThreadState.FAILED, ThreadState.STOPPED)
        for path in _checkpoints_of(_thread(state, finished_days_ago=8), written_days_ago=8)
    ]
    recent = _checkpoints_of(
        _thread(ThreadState.COMPLETED, finished_days_ago=6), written_days_ago=6
    )
    # Live threads keep theirs however long they have been quiet: a paused one resumes from it.
    live = [
        path
        for state in (
            ThreadState.CREATED,
            ThreadState.RUNNING,
            ThreadState.WAITING,
            ThreadState.SUSPENDED,
        )
        for path in _checkpoints_of(_thread(state), written_days_ago=30)
    ]

    result = checkpoints_prune(older_than_days=7)

    assert (result.thread_checkpoints, result.conversation_checkpoints) == (3, 3)
    assert result.stored_bytes > 0
    assert _paths() == {*recent, *live}
    assert not _paths() & set(gone)


def test_a_checkpoint_written_after_its_thread_finished_waits_until_it_is_as_old() -> None:
    thread = _thread(ThreadState.COMPLETED, finished_days_ago=30)
    path = _checkpoint(thread_checkpoint_path(thread.id), written_days_ago=2)

    checkpoints_prune(older_than_days=7)

    assert _paths() == {path}


def test_a_conversation_checkpoint_stays_while_any_of_its_threads_is_live_or_recent() -> None:
    paused, recent, ended = ConversationFactory.create_batch(3)
    _thread(ThreadState.SUSPENDED, conversation=paused)
    _thread(ThreadState.COMPLETED, finished_days_ago=1, conversation=recent)
    _thread(ThreadState.FAILED, finished_days_ago=9, conversation=ended)
    for conversation in (paused, recent, ended):
        first = _thread(ThreadState.COMPLETED, finished_days_ago=20, conversation=conversation)
        _checkpoint(thread_checkpoint_path(first.id), written_days_ago=20)
        _checkpoint(conversation_checkpoint_path(conversation.id), written_days_ago=9)

    result = checkpoints_prune(older_than_days=7)

    assert (result.thread_checkpoints, result.conversation_checkpoints) == (3, 1)
    assert _paths() == {
        conversation_checkpoint_path(paused.id),
        conversation_checkpoint_path(recent.id),
    }


def test_checkpoints_of_threads_and_conversations_that_no_longer_exist_go_once_as_old() -> None:
    missing_thread, missing_conversation = uuid.uuid4(), uuid.uuid4()
    _checkpoint(thread_checkpoint_path(missing_thread), written_days_ago=8)
    _checkpoint(conversation_checkpoint_path(missing_conversation), written_days_ago=8)
    fresh = _checkpoint(thread_checkpoint_path(uuid.uuid4()), written_days_ago=1)
    # Alice's live thread keeps the checkpoint in her workspace, not a document of that name in
    # bob's.
    alices = _thread(ThreadState.WAITING)
    kept = _checkpoint(thread_checkpoint_path(alices.id), written_days_ago=30)
    _checkpoint(thread_checkpoint_path(alices.id), written_days_ago=30, user_id="bob")

    result = checkpoints_prune(older_than_days=7)

    assert (result.thread_checkpoints, result.conversation_checkpoints) == (2, 1)
    assert set(Document.objects.values_list("user_id", "path")) == {
        ("alice", fresh),
        ("alice", kept),
    }


def test_only_runtime_documents_named_like_checkpoints_are_touched(
    settings: SettingsWrapper,
) -> None:
    missing = uuid.uuid4()
    names = [
        "engine/.runtime/threads/notes.json",
        f"engine/.runtime/threads/{str(missing).upper()}.json",
        f"engine/.runtime/threads/{missing}.json.bak",
        f"engine/.runtime/threads/{missing}/steps.json",
        f"engine/.runtime/threads-old/{missing}.json",
        f"engine/.runtime/{missing}.json",
    ]
    for name in names:
        _checkpoint(name, written_days_ago=30)
    # Once engine/.runtime/ is no longer a runtime path, a document written there is versioned:
    # its history is the tenant's, and retention leaves it.
    settings.WORKSPACE_RUNTIME_PATHS = []
    settings.WORKSPACE_INDEXING = "inline"
    settings.EMBEDDING_PROVIDER = "none"
    versioned = _checkpoint(f"engine/.runtime/conversations/{missing}.json", written_days_ago=30)

    result = checkpoints_prune(older_than_days=7)

    assert result.checkpoints == 0
    assert _paths() == {*names, versioned}


def test_a_real_turns_checkpoints_stay_until_its_thread_has_been_finished_long_enough() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    claimed = thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1")
    state = TurnState(
        thread_id=str(sent.thread_id),
        conversation_id=str(sent.conversation_id),
        user_id="alice",
        started_at=now_iso(),
    )
    checkpoint_save(
        state,
        user_id="alice",
        changed_by="w1",
        conversation_too=True,
        lease_epoch=claimed.claim_count,
    )
    thread_outcome_record(
        user_id="alice",
        thread_id=sent.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome("completed"),
    )
    paths = {
        thread_checkpoint_path(sent.thread_id),
        conversation_checkpoint_path(sent.conversation_id),
    }

    just_finished = checkpoints_prune(older_than_days=7)
    kept = _paths()
    Thread.objects.filter(pk=sent.thread_id).update(finished_at=_ago(8))
    Document.objects.filter(path__in=paths).update(updated_at=_ago(8))
    aged = checkpoints_prune(older_than_days=7)

    assert just_finished.checkpoints == 0
    assert kept == paths
    assert (aged.thread_checkpoints, aged.conversation_checkpoints) == (1, 1)
    assert _paths() == set()


def test_pruning_works_in_batches_and_a_rerun_finds_nothing() -> None:
    for _ in range(5):
        _checkpoints_of(_thread(ThreadState.COMPLETED, finished_days_ago=8), written_days_ago=8)

    first = checkpoints_prune(older_than_days=7, batch_size=2)
    second = checkpoints_prune(older_than_days=7, batch_size=2)

    # 5 of each kind in batches of 2: 3 batches each.
    assert (first.thread_checkpoints, first.conversation_checkpoints, first.batches) == (5, 5, 6)
    assert (second.checkpoints, second.batches) == (0, 0)
    assert _paths() == set()


@pytest.mark.parametrize("due", [1, 40])
def test_a_batch_is_one_statement_whatever_it_deletes(
    django_assert_num_queries: DjangoAssertNumQueries, due: int
) -> None:
    for _ in range(due):
        _checkpoints_of(_thread(ThreadState.COMPLETED, finished_days_ago=8), written_days_ago=8)
    _checkpoints_of(_thread(ThreadState.WAITING), written_days_ago=8)

    # One batch per kind: the DELETE ... RETURNING with its locking select, nothing per row.
    with django_assert_num_queries(2):
        result = checkpoints_prune(older_than_days=7)

    assert result.checkpoints == 2 * due


def test_each_batch_walks_the_checkpoint_index() -> None:
    plans = []
    with transaction.atomic(), connection.cursor() as cursor:
        # Forbidden, not impossible: a sequential scan still comes out when no index serves.
        cursor.execute("SET LOCAL enable_seqscan = off")
        for kind in _KINDS:
            cursor.execute(
                f"EXPLAIN {_delete_statement(kind)}",
                {
                    "pattern": kind.name_pattern,
                    "cutoff": timezone.now(),
                    "live": ["created"],
                    "after": uuid.UUID(int=0),
                    "limit": 10,
                },
            )
            plans.append("\n".join(row[0] for row in cursor.fetchall()))

    thread_plan, conversation_plan = plans
    assert "engine_thread_checkpoints_idx" in thread_plan, thread_plan
    assert "engine_conversation_checkpoints_idx" in conversation_plan, conversation_plan


def test_dry_run_counts_and_deletes_nothing() -> None:
    paths = _checkpoints_of(_thread(ThreadState.STOPPED, finished_days_ago=8), written_days_ago=8)

    output = run("prune_checkpoints", "--days", "7", "--dry-run")

    assert "Found 1 thread and 1 conversation checkpoint(s) past 7 days" in output
    assert "Dry run: nothing deleted." in output
    assert _paths() == set(paths)


def test_prune_checkpoints_uses_the_retention_setting(settings: SettingsWrapper) -> None:
    settings.RUNTIME_RETENTION_DAYS = 3
    kept = _checkpoints_of(_thread(ThreadState.COMPLETED, finished_days_ago=2), written_days_ago=2)
    _checkpoints_of(_thread(ThreadState.COMPLETED, finished_days_ago=4), written_days_ago=4)

    output = run("prune_checkpoints", "-v", "2")

    assert "Found 1 thread and 1 conversation checkpoint(s) past 3 days" in output
    assert "batch 2: 2 checkpoint(s) so far" in output
    assert "Deleted 2 checkpoint(s) in 2 batch(es)." in output
    assert _paths() == set(kept)


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--days", "0"], "--days must be between 1 and 36500, got 0."),
        (["--days", "-3"], "--days must be between 1 and 36500, got -3."),
        (["--days", "999999999"], "--days must be between 1 and 36500, got 999999999."),
        (["--days", "7", "--batch-size", "0"], "--batch-size must be at least 1, got 0."),
    ],
)
def test_prune_checkpoints_refuses_bad_options_naming_them(
    arguments: list[str], message: str
) -> None:
    with pytest.raises(CommandError, match=message):
        run("prune_checkpoints", *arguments)


def test_prune_checkpoints_without_days_refuses_when_retention_is_forever(
    settings: SettingsWrapper,
) -> None:
    settings.RUNTIME_RETENTION_DAYS = 0

    with pytest.raises(CommandError, match="RUNTIME_RETENTION_DAYS is 0"):
        run("prune_checkpoints")


def test_the_hourly_task_prunes_with_the_setting_logs_and_counts_and_keeps_all_at_zero(
    settings: SettingsWrapper, caplog: pytest.LogCaptureFixture
) -> None:
    paths = _checkpoints_of(
        _thread(ThreadState.COMPLETED, finished_days_ago=400), written_days_ago=400
    )

    def deleted(kind: str) -> float:
        return REGISTRY.get_sample_value("ironclaw_checkpoints_deleted_total", {"kind": kind}) or 0

    before = deleted("thread"), deleted("conversation")
    settings.RUNTIME_RETENTION_DAYS = 0
    checkpoints_prune_job(timestamp=0)
    kept_at_zero = _paths()
    settings.RUNTIME_RETENTION_DAYS = 7
    with caplog.at_level(logging.INFO, logger="engine.tasks"):
        checkpoints_prune_job(timestamp=0)

    assert kept_at_zero == set(paths)
    assert _paths() == set()
    assert (deleted("thread") - before[0], deleted("conversation") - before[1]) == (1, 1)
    [line] = [record.getMessage() for record in caplog.records]
    assert line.startswith("checkpoints: deleted 1 thread and 1 conversation checkpoints")
    assert "past the 7-day retention, in 2 batches" in line


@pytest.mark.parametrize(
    ("days", "batch_size", "message"),
    [(0, 10, "older_than_days"), (36_501, 10, "older_than_days"), (7, 0, "batch_size")],
)
def test_the_service_refuses_a_cutoff_or_batch_out_of_range(
    days: int, batch_size: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        checkpoints_prune(older_than_days=days, batch_size=batch_size)
