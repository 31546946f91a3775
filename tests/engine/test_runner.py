"""The reference runner in-process: real services and database, scripted models."""

from __future__ import annotations

import datetime
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.utils import timezone

from conversations.models import ConversationEntry, Thread
from conversations.services import (
    conversation_busy_policy_set,
    message_handle,
)
from engine.checkpoint import (
    TurnState,
    checkpoint_save,
    conversation_checkpoint_path,
    thread_checkpoint_path,
)
from engine.model_clients import (
    ChatMessage,
    EchoModel,
    ModelClient,
    ModelError,
    ModelReply,
    OnText,
)
from engine.reads import NEWEST_UNDELIVERED_SQL, UNDELIVERED_SQL
from engine.runner import Turn
from workspace.models import Chunk, Document, DocumentVersion
from workspace.services import document_write

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass
class ScriptedModel:
    """A model whose replies the test decides; records what it was sent."""

    replies: list[ModelReply] = field(default_factory=list)
    calls: list[list[ChatMessage]] = field(default_factory=list)
    called_at: list[float] = field(default_factory=list)
    delay: float = 0.0
    error: Exception | None = None
    # Called with the call's number while the model works (on the model call's own thread).
    during: Callable[[int], None] | None = None
    name: str = "scripted"

    def complete(
        self, messages: list[ChatMessage], *, step: int, on_text: OnText | None = None
    ) -> ModelReply:
        self.calls.append(messages)
        self.called_at.append(time.monotonic())
        if self.during is not None:
            self.during(len(self.calls))
        if self.delay:
            time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        if self.replies:
            return self.replies.pop(0)
        return ModelReply(text=f"answer {len(self.calls)}", input_tokens=3, output_tokens=2)


def _agent_entries(conversation_id: uuid.UUID) -> list[str]:
    return list(
        ConversationEntry.objects.filter(conversation_id=conversation_id, sender="agent")
        .order_by("seq")
        .values_list("content", flat=True)
    )


def _system_entries(conversation_id: uuid.UUID) -> list[str]:
    return list(
        ConversationEntry.objects.filter(conversation_id=conversation_id, sender="system")
        .order_by("seq")
        .values_list("content", flat=True)
    )


def _run(thread_id: uuid.UUID, model: ModelClient) -> Thread:
    Turn(Thread.objects.get(pk=thread_id), model=model).run()
    return Thread.objects.get(pk=thread_id)


def test_turn_answers_the_message_and_records_usage() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    thread = _run(sent.thread_id, EchoModel(latency_ms=0))

    assert thread.state == "completed"
    assert _agent_entries(sent.conversation_id) == ["echo: hello"]
    assert thread.step_count == 1
    assert thread.input_tokens > 0
    assert thread.output_tokens > 0
    assert thread.tokens_used == thread.input_tokens + thread.output_tokens
    assert thread.claimed_at is not None
    assert thread.enqueued_at is not None
    assert [call["step"] for call in thread.model_calls] == [1]


def test_checkpoints_land_in_the_threads_own_tenant_without_versions_or_chunks() -> None:
    document_write(user_id="owner", path="notes.md", content="the owner's workspace")
    sent = message_handle(user_id="bob", channel="web", content="hi there")

    _run(sent.thread_id, EchoModel(latency_ms=0))

    checkpoint = Document.objects.get(user_id="bob", path=thread_checkpoint_path(sent.thread_id))
    state = json.loads(checkpoint.content)
    assert checkpoint.is_runtime
    assert state["status"] == "completed"
    assert [m["role"] for m in state["messages"]] == ["user", "assistant"]
    assert next(event["kind"] for event in state["events"]) == "claimed"
    conversation = Document.objects.get(
        user_id="bob", path=conversation_checkpoint_path(sent.conversation_id)
    )
    assert json.loads(conversation.content)["thread_id"] == str(sent.thread_id)
    assert not Document.objects.filter(user_id="owner", path__startswith="engine/").exists()
    assert not DocumentVersion.objects.filter(document__path__startswith="engine/").exists()
    assert not Chunk.objects.filter(document__path__startswith="engine/").exists()


def test_model_input_has_identity_files_history_and_the_new_message() -> None:
    document_write(user_id="alice", path="AGENTS.md", content="Be brief.")
    document_write(user_id="alice", path="MEMORY.md", content="Alice likes tea.")
    first = message_handle(user_id="alice", channel="web", content="first question")
    _run(first.thread_id, EchoModel(latency_ms=0))
    model = ScriptedModel()
    second = message_handle(user_id="alice", channel="web", content="second question")

    _run(second.thread_id, model)

    (messages,) = model.calls
    assert messages[0]["role"] == "system"
    assert "## Agent Instructions\n\nBe brief." in messages[0]["content"]
    assert "## Long-Term Memory\n\nAlice likes tea." in messages[0]["content"]
    assert "SOUL.md" not in messages[0]["content"]
    assert messages[1:] == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "echo: first question"},
        {"role": "user", "content": "second question"},
    ]


@override_settings(ENGINE_HISTORY_ENTRIES=1)
def test_history_keeps_only_the_most_recent_entries() -> None:
    first = message_handle(user_id="alice", channel="web", content="old question")
    _run(first.thread_id, EchoModel(latency_ms=0))
    model = ScriptedModel()
    second = message_handle(user_id="alice", channel="web", content="new question")

    _run(second.thread_id, model)

    assert model.calls[0] == [
        {"role": "assistant", "content": "echo: old question"},
        {"role": "user", "content": "new question"},
    ]


def test_working_steps_run_until_the_final_reply_and_each_is_checkpointed() -> None:
    sent = message_handle(user_id="alice", channel="web", content="plan it")

    thread = _run(sent.thread_id, EchoModel(latency_ms=0, steps=3, step_bytes=10))

    assert thread.step_count == 3
    assert _agent_entries(sent.conversation_id) == ["echo: plan it"]
    state = json.loads(
        Document.objects.get(user_id="alice", path=thread_checkpoint_path(sent.thread_id)).content
    )
    assert [step["final"] for step in state["steps"]] == [False, False, True]


@override_settings(ENGINE_MAX_ITERATIONS=2)
def test_turn_stops_at_max_iterations() -> None:
    sent = message_handle(user_id="alice", channel="web", content="loop")
    model = ScriptedModel(replies=[ModelReply(text="more", final=False)] * 5)

    thread = _run(sent.thread_id, model)

    assert thread.state == "stopped"
    assert thread.outcome is not None
    assert thread.outcome["kind"] == "max_iterations"
    assert len(model.calls) == 2
    # The agent answers with its last output, and says why it stopped there.
    assert _agent_entries(sent.conversation_id) == [
        "more\n\nI stopped before I could finish: this turn reached its limit of 2 model calls."
    ]
    assert _system_entries(sent.conversation_id)[-1] == "Thread reached max iterations"


@override_settings(ENGINE_MAX_ITERATIONS=2)
def test_a_turn_at_its_limit_answers_what_it_took_and_a_follow_up_takes_the_rest() -> None:
    sent = message_handle(user_id="alice", channel="web", content="m1")

    def send_next(call: int) -> None:
        # A steady stream: each model call finds a new message waiting when it ends.
        try:
            message_handle(user_id="alice", channel="web", content=f"m{call + 1}")
        finally:
            connection.close()

    model = ScriptedModel(during=send_next)

    thread = _run(sent.thread_id, model)

    assert thread.outcome is not None
    assert (thread.state, thread.outcome["kind"]) == ("stopped", "max_iterations")
    assert [call[-1]["content"] for call in model.calls] == ["m1", "m2"]
    assert _agent_entries(sent.conversation_id) == ["answer 1\n\nanswer 2"]
    assert _system_entries(sent.conversation_id)[-2:] == [
        "Thread reached max iterations",
        "Thread started",
    ]
    follow_up = Thread.objects.get(conversation_id=sent.conversation_id, tracked=True)
    assert (follow_up.state, follow_up.goal) == ("created", "m3")


@override_settings(ENGINE_MAX_ITERATIONS=2)
def test_a_follow_up_thread_sees_the_reply_its_predecessor_gave_before_its_own_messages() -> None:
    """The follow-up's goal (m3) was sent before its predecessor replied: the model must see that
    reply in the history, before m3, or it would take m1 and m2 for unanswered."""
    sent = message_handle(user_id="alice", channel="web", content="m1")

    def send_next(call: int) -> None:
        try:
            message_handle(user_id="alice", channel="web", content=f"m{call + 1}")
        finally:
            connection.close()

    _run(sent.thread_id, ScriptedModel(during=send_next))
    follow_up = Thread.objects.get(conversation_id=sent.conversation_id, tracked=True)
    model = ScriptedModel()
    _run(follow_up.id, model)

    assert [(m["role"], m["content"]) for m in model.calls[0] if m["role"] != "system"] == [
        ("user", "m1"),
        ("user", "m2"),
        ("assistant", "answer 1\n\nanswer 2"),
        ("user", "m3"),
    ]


def _send_from_a_thread(contents: list[str], *, every: float) -> threading.Thread:
    def send() -> None:
        try:
            for content in contents:
                time.sleep(every)
                message_handle(user_id="alice", channel="web", content=content)
        finally:
            connection.close()

    sender = threading.Thread(target=send, name="sender")
    sender.start()
    return sender


def _statements_of_a_turn(model: ModelClient) -> list[str]:
    """The SQL the turn's own thread sends, as written (the debug log shows prepared statements
    without their text)."""
    sent = message_handle(user_id="alice", channel="web", content="hello")
    statements: list[str] = []

    def record(execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        statements.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(record):
        _run(sent.thread_id, model)
    return statements


def test_a_turn_no_message_reaches_reads_its_inbox_twice_and_a_step_is_one_statement() -> None:
    one_step = _statements_of_a_turn(EchoModel(latency_ms=0))
    three_steps = _statements_of_a_turn(EchoModel(latency_ms=0, steps=3))

    # The inbox at the start and after the answer, never during working steps; no debounce read.
    assert three_steps.count(UNDELIVERED_SQL) == 2
    assert NEWEST_UNDELIVERED_SQL not in three_steps
    # Each further step is its checkpoint, one statement.
    assert len(three_steps) == len(one_step) + 2
    # The whole of a one-step turn: the claim; its checkpoint, goal, inbox, identity files and
    # history read; the step's checkpoint; the inbox again; the outcome (conversation and thread
    # locks, the thread's update, the carried messages, the entries); the final checkpoint's two
    # documents; and this test's own read of the thread before and after. Nothing is written
    # at the claim: a run that dies before its first step starts again as it did.
    assert len(one_step) == 17


@override_settings(ENGINE_INBOX_DEBOUNCE_MS=300)
def test_a_burst_injected_while_the_model_works_is_answered_in_one_step_once_quiet() -> None:
    sent = message_handle(user_id="alice", channel="web", content="m1")
    senders: list[threading.Thread] = []

    def burst(call: int) -> None:
        # m2 arrives while the first call works, m3 and m4 in the 200 ms after it.
        if call == 1:
            try:
                message_handle(user_id="alice", channel="web", content="m2")
            finally:
                connection.close()
            senders.append(_send_from_a_thread(["m3", "m4"], every=0.1))

    model = ScriptedModel(during=burst)

    thread = _run(sent.thread_id, model)
    senders[0].join(timeout=10)

    assert thread.state == "completed"
    assert len(model.calls) == 2
    assert [m["content"] for m in model.calls[1] if m["role"] == "user"] == ["m1", "m2", "m3", "m4"]
    assert _agent_entries(sent.conversation_id) == ["answer 1\n\nanswer 2"]
    assert Thread.objects.filter(conversation_id=sent.conversation_id).count() == 1


@override_settings(ENGINE_INBOX_DEBOUNCE_MS=100, ENGINE_MAX_ITERATIONS=2)
def test_a_stream_that_never_pauses_holds_a_step_back_at_most_four_debounce_windows() -> None:
    sent = message_handle(user_id="alice", channel="web", content="m1")
    senders: list[threading.Thread] = []

    def stream(call: int) -> None:
        # A message every 50 ms for 5 s, from the first call on.
        if call == 1:
            try:
                message_handle(user_id="alice", channel="web", content="s0")
            finally:
                connection.close()
            senders.append(_send_from_a_thread([f"s{n}" for n in range(1, 100)], every=0.05))

    model = ScriptedModel(during=stream)

    thread = _run(sent.thread_id, model)
    streaming = senders[0].is_alive()
    senders[0].join(timeout=30)

    assert streaming
    assert thread.step_count == 2
    # It waited for the inbox to fall quiet, up to four 100 ms windows, then answered.
    assert 0.3 < model.called_at[1] - model.called_at[0] < 2
    assert _agent_entries(sent.conversation_id) == ["answer 1\n\nanswer 2"]


@override_settings(ENGINE_TURN_TIMEOUT_S=1)
def test_turn_fails_when_it_runs_past_its_timeout() -> None:
    sent = message_handle(user_id="alice", channel="web", content="slow")
    started = time.monotonic()

    thread = _run(sent.thread_id, ScriptedModel(delay=5))

    assert time.monotonic() - started < 4
    assert thread.state == "failed"
    assert "timed out after 1 s" in thread.outcome["error"]  # type: ignore[index]
    assert _system_entries(sent.conversation_id)[-1].startswith("Thread failed: the turn timed out")
    assert _agent_entries(sent.conversation_id) == [
        "I stopped before I could finish: this turn ran out of time after 1 s."
    ]


def test_model_error_fails_the_turn_with_the_error_text() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")

    thread = _run(sent.thread_id, ScriptedModel(error=ModelError("APIStatusError: 500 boom")))

    assert thread.state == "failed"
    assert _system_entries(sent.conversation_id)[-1] == (
        "Thread failed: model error: APIStatusError: 500 boom"
    )


@override_settings(ENGINE_LEASE_SECONDS=1, ENGINE_HEARTBEAT_SECONDS=0.1)
def test_interrupt_stops_the_running_turn_mid_call() -> None:
    first = message_handle(user_id="alice", channel="web", content="long task")
    conversation_busy_policy_set(
        user_id="alice", conversation_id=first.conversation_id, busy_policy="interrupt"
    )
    turn = Turn(Thread.objects.get(pk=first.thread_id), model=ScriptedModel(delay=3))

    runner = threading.Thread(target=turn.run)
    runner.start()
    deadline = time.monotonic() + 5
    while Thread.objects.get(pk=first.thread_id).state != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)

    second = message_handle(user_id="alice", channel="web", content="never mind")
    runner.join(timeout=5)

    assert not runner.is_alive()
    assert second.action == "spawned"
    assert second.interrupted_thread_id == first.thread_id
    assert Thread.objects.get(pk=first.thread_id).state == "stopped"
    assert _agent_entries(first.conversation_id) == []


def test_a_resumed_turn_does_not_send_checkpointed_steps_again() -> None:
    sent = message_handle(user_id="alice", channel="web", content="step by step")
    thread = Thread.objects.get(pk=sent.thread_id)
    crashed = ScriptedModel(
        replies=[ModelReply(text="first part", final=False)], error=None, delay=0
    )
    # The first worker: one working step, checkpointed; then it "dies" (its lease lapses).
    turn = Turn(thread, model=crashed)
    assert turn._claim()
    state = turn._resume_or_start()
    turn._step(state, deadline=time.time() + 60)
    Thread.objects.filter(pk=thread.pk).update(
        state="created", lease_owner="", lease_expires_at=None
    )
    resumed = ScriptedModel(replies=[ModelReply(text="second part")])

    finished = _run(sent.thread_id, resumed)

    assert len(crashed.calls) == 1
    assert len(resumed.calls) == 1
    assert resumed.calls[0][-1] == {"role": "assistant", "content": "first part"}
    assert finished.state == "completed"
    assert _agent_entries(sent.conversation_id) == ["second part"]
    assert finished.step_count == 2


@override_settings(CONVERSATION_MAX_MESSAGE_BYTES=1_000)
def test_a_reply_longer_than_an_entry_may_be_is_cut_and_the_turn_completes() -> None:
    """Refused whole, the outcome failed, the lease lapsed and the thread ran again, for ever."""
    sent = message_handle(user_id="alice", channel="web", content="talk a lot")
    model = ScriptedModel(replies=[ModelReply(text="é" * 3_000)])
    thread = _run(sent.thread_id, model)
    assert thread.state == "completed"
    (reply,) = _agent_entries(sent.conversation_id)
    assert len(reply.encode()) <= 1_000
    assert reply.startswith("é" * 100)
    assert reply.endswith("[cut: longer than CONVERSATION_MAX_MESSAGE_BYTES]")


def test_the_final_checkpoint_commits_with_the_outcome_and_one_too_large_keeps_the_reply() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    limit = override_settings()
    written: list[str] = []

    def save_then_shrink_the_limit(state: TurnState, **kwargs: Any) -> None:
        checkpoint_save(state, **kwargs)
        written.append(state.status)
        if len(written) == 1:
            # The step's checkpoint fits; the final state, a few bytes more (its outcome event),
            # does not: WORKSPACE_MAX_DOCUMENT_BYTES refuses it as it would a grown state.
            nonlocal limit
            limit = override_settings(WORKSPACE_MAX_DOCUMENT_BYTES=len(state.to_json()) + 10)
            limit.enable()

    turn = Turn(
        Thread.objects.get(pk=sent.thread_id),
        model=EchoModel(latency_ms=0),
        checkpoint_save=save_then_shrink_the_limit,
    )
    try:
        turn.run()
    finally:
        limit.disable()

    # The outcome and the reply commit; the checkpoint keeps the step's state.
    thread = Thread.objects.get(pk=sent.thread_id)
    assert (thread.state, _agent_entries(sent.conversation_id)) == ("completed", ["echo: hello"])
    assert written == ["running"]
    checkpoint = Document.objects.get(user_id="alice", path=thread_checkpoint_path(sent.thread_id))
    assert json.loads(checkpoint.content)["status"] == "running"

    # Without the refusal, the final state is written in the outcome's transaction.
    second = message_handle(user_id="alice", channel="web", content="again")
    _run(second.thread_id, EchoModel(latency_ms=0))
    final = Document.objects.get(user_id="alice", path=thread_checkpoint_path(second.thread_id))
    assert json.loads(final.content)["status"] == "completed"


@override_settings(ENGINE_TURN_TIMEOUT_S=60)
def test_a_first_run_started_again_keeps_the_time_limit_of_its_first_claim() -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    # Its first claim was two minutes ago, and that run's worker died before any checkpoint:
    # nothing but the thread row says when the turn began.
    Thread.objects.filter(pk=sent.thread_id).update(
        started_at=timezone.now() - datetime.timedelta(minutes=2)
    )
    model = ScriptedModel()

    thread = _run(sent.thread_id, model)

    assert model.calls == []
    assert thread.state == "failed"
    assert "timed out" in (thread.outcome or {})["error"]
