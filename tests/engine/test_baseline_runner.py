"""The turns benchmark's baseline runner: the reference turn, its checkpoints written under one
process-wide mutex (the origin's) through the runner's checkpoint hook."""

from __future__ import annotations

import threading
import time

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from bench import baseline_runner
from bench.baseline_runner import run_thread
from conversations.models import ConversationEntry, Thread
from conversations.services import message_handle, thread_claim_runnable
from engine.checkpoint import thread_checkpoint_path
from workspace.models import Document

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_baseline_runner_answers_and_its_checkpoints_wait_for_the_global_mutex(
    settings: SettingsWrapper,
) -> None:
    settings.ENGINE_MODEL = "echo"
    settings.ENGINE_ECHO_LATENCY_MS = 0
    sent = message_handle(user_id="alice", channel="web", content="hello")
    checkpoint = Document.objects.filter(
        user_id="alice", path=thread_checkpoint_path(sent.thread_id)
    )
    baseline_runner._GLOBAL_MUTEX.acquire()
    claimed = thread_claim_runnable(worker_id="baseline")
    assert claimed is not None
    runner = threading.Thread(
        target=run_thread, kwargs={"thread": claimed, "worker_id": "baseline"}
    )
    runner.start()
    try:
        time.sleep(1)
        # Claimed, but its first checkpoint waits for the mutex this test holds.
        assert Thread.objects.get(pk=sent.thread_id).state == "running"
        assert not checkpoint.exists()
    finally:
        baseline_runner._GLOBAL_MUTEX.release()
        runner.join(timeout=30)

    assert Thread.objects.get(pk=sent.thread_id).state == "completed"
    assert checkpoint.exists()
    agent = ConversationEntry.objects.filter(conversation_id=sent.conversation_id, sender="agent")
    assert list(agent.values_list("content", flat=True)) == ["echo: hello"]
