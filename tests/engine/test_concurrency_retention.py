"""Retention beside turns writing their checkpoints: a row a writer holds is skipped, never
waited for, and a checkpoint written meanwhile is kept."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.utils import timezone

from conversations.models import ThreadState
from engine.checkpoint import thread_checkpoint_path
from engine.retention import checkpoints_prune
from tests.conversations.factories import ThreadFactory
from workspace.models import Document
from workspace.services import document_write

pytestmark = pytest.mark.django_db(transaction=True)


def _finished_thread_checkpoint() -> str:
    long_ago = timezone.now() - timedelta(days=8)
    thread = ThreadFactory.create(state=ThreadState.COMPLETED, tracked=False, finished_at=long_ago)
    path = thread_checkpoint_path(thread.id)
    document_write(user_id="alice", path=path, content='{"steps": []}')
    Document.objects.filter(path=path).update(updated_at=long_ago)
    return path


@pytest.mark.parametrize(("writer_ends", "rerun_deletes"), [("commit", False), ("rollback", True)])
def test_a_checkpoint_a_writer_holds_is_skipped_not_waited_for(
    writer_ends: str, rerun_deletes: bool
) -> None:
    held, free = _finished_thread_checkpoint(), _finished_thread_checkpoint()
    written, release = threading.Event(), threading.Event()

    def write_and_hold() -> None:
        # A checkpoint write in flight: the runtime upsert holds the row until its commit.
        try:
            with transaction.atomic():
                document_write(user_id="alice", path=held, content='{"steps": [1]}')
                written.set()
                release.wait(timeout=30)
                if writer_ends == "rollback":
                    transaction.set_rollback(True)
        finally:
            connection.close()

    writer = threading.Thread(target=write_and_hold)
    writer.start()
    assert written.wait(timeout=10)
    try:
        started = time.monotonic()
        # A prune that waited for the row would fail here rather than hang the test.
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET LOCAL lock_timeout = '100ms'")
            during = checkpoints_prune(older_than_days=7)
        took = time.monotonic() - started
    finally:
        release.set()
        writer.join(timeout=30)
    after = checkpoints_prune(older_than_days=7)

    assert took < 5
    assert during.thread_checkpoints == 1
    assert not Document.objects.filter(path=free).exists()
    # Committed, the write made the checkpoint new again: it waits out the retention afresh.
    assert after.thread_checkpoints == (1 if rerun_deletes else 0)
    assert Document.objects.filter(path=held).exists() is not rerun_deletes
