"""The event streams' data: thread events recorded by the database, cursors, replay from any
cursor, and live delivery from real notifications, which must agree with the replay exactly."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from rest_framework.test import APIClient

from conversations.models import Thread, ThreadEvent
from conversations.services import message_handle, thread_claim, thread_stop
from conversations.streams import (
    DELTAS_CHANNEL,
    EVENTS_CHANNEL,
    READ_PAGE_BYTES,
    ConversationCursor,
    ConversationRead,
    ConversationStream,
    CursorInvalid,
    ThreadStream,
    thread_cursor_parse,
)
from core.notify import ENTRIES_CHANNEL, dedicated_connection
from engine.checkpoint import TurnState, checkpoint_save, now_iso
from engine.model_clients import ModelReply
from engine.runner import Turn
from tests.engine.test_runner import ScriptedModel
from workspace.errors import WriteFenced

pytestmark = pytest.mark.django_db(transaction=True)

Frame = tuple[str | None, str, dict[str, Any]]


def _parse(raw: bytes) -> Frame:
    fields: dict[str, str] = {}
    for line in raw.decode().strip("\n").split("\n"):
        name, _, value = line.partition(": ")
        fields[name] = value
    return fields.get("id"), fields["event"], json.loads(fields["data"])


def _drain(stream: ConversationStream | ThreadStream) -> list[Frame]:
    """Everything a stream sends from its cursor by reading, as a stream behind would."""
    frames: list[Frame] = []
    while True:
        sent, again = stream.read_done(stream.read_plan()())
        frames.extend(_parse(raw) for raw in sent)
        if not again:
            return frames


def _listen() -> psycopg.Connection[Any]:
    listener = dedicated_connection()
    for channel in (ENTRIES_CHANNEL, EVENTS_CHANNEL, DELTAS_CHANNEL):
        listener.execute(f"LISTEN {channel}")
    return listener


def _notifications(listener: psycopg.Connection[Any]) -> list[tuple[str, str, dict[str, Any]]]:
    got = []
    for notice in listener.notifies(timeout=0.5, stop_after=None):
        keys, _, body = notice.payload.partition(" {")
        got.append((notice.channel, keys.split(" ")[0], json.loads("{" + body)))
    return got


def _record_a_conversation() -> tuple[uuid.UUID, list[uuid.UUID]]:
    """Two turns (one of two model steps), a message injected mid-turn, and a stopped thread."""
    first = message_handle(user_id="alice", channel="web", content="hello")
    model = ScriptedModel(
        replies=[
            ModelReply(text="working step 1: thinking", final=False, output_tokens=3),
            ModelReply(text="hello to you", output_tokens=4),
        ]
    )
    Turn(Thread.objects.get(pk=first.thread_id), model=model).run()
    second = message_handle(user_id="alice", channel="web", content="and now?")
    Turn(Thread.objects.get(pk=second.thread_id), model=ScriptedModel()).run()
    third = message_handle(user_id="alice", channel="web", content="stop me")
    thread_stop(user_id="alice", thread_id=third.thread_id)
    return first.conversation_id, [first.thread_id, second.thread_id, third.thread_id]


def test_a_thread_records_each_change_of_state_and_each_step_numbered_without_gaps() -> None:
    conversation_id, threads = _record_a_conversation()
    kinds = list(
        ThreadEvent.objects.filter(thread_id=threads[0]).order_by("seq").values_list("seq", "kind")
    )
    assert kinds == [
        (1, "spawned"),
        (2, "claimed"),
        (3, "step"),
        (4, "step"),
        (5, "completed"),
    ]
    completed = ThreadEvent.objects.get(thread_id=threads[0], seq=5)
    assert completed.data["state"] == "completed"
    assert completed.data["output_tokens"] == 7
    assert completed.data["outcome"]["kind"] == "completed"
    assert completed.conversation_id == conversation_id
    step = ThreadEvent.objects.get(thread_id=threads[0], seq=3)
    assert step.data["n"] == 1
    assert step.data["final"] is False
    assert list(
        ThreadEvent.objects.filter(thread_id=threads[2])
        .order_by("seq")
        .values_list("kind", flat=True)
    ) == ["spawned", "stopped"]
    # The thread row's number is the last event's.
    assert Thread.objects.get(pk=threads[0]).event_seq == 5


def test_a_replay_from_any_cursor_sends_exactly_what_follows_it() -> None:
    conversation_id, threads = _record_a_conversation()
    everything = _drain(ConversationStream(conversation_id, ConversationCursor(), user_id="alice"))
    entries = [data["seq"] for _, event, data in everything if event == "entry"]
    assert entries == list(range(1, len(entries) + 1))
    for thread_id in threads:
        seqs = [
            data["seq"]
            for _, event, data in everything
            if event == "thread" and data["thread_id"] == str(thread_id)
        ]
        assert seqs
        assert seqs == list(range(1, len(seqs) + 1))
    # Each thread's events come after the entry that announced it.
    position = {
        (event, data.get("thread_id"), data["seq"]): i
        for i, (_, event, data) in enumerate(everything)
    }
    for thread_id in threads:
        start = Thread.objects.get(pk=thread_id).start_seq
        assert position[("entry", str(thread_id), start)] < position[("thread", str(thread_id), 1)]

    for i, (cursor, _, _) in enumerate(everything):
        assert cursor is not None
        resumed = _drain(
            ConversationStream(conversation_id, ConversationCursor.parse(cursor), user_id="alice")
        )
        assert [(e, d) for _, e, d in resumed] == [(e, d) for _, e, d in everything[i + 1 :]], (
            cursor
        )


def test_the_live_stream_from_real_notifications_matches_the_replay_whatever_their_order() -> None:
    listener = _listen()
    try:
        conversation_id, _ = _record_a_conversation()
        notices = _notifications(listener)
    finally:
        listener.close()
    replay = [
        (e, d)
        for _, e, d in _drain(
            ConversationStream(conversation_id, ConversationCursor(), user_id="alice")
        )
    ]
    mine = [n for n in notices if n[1] == str(conversation_id)]
    assert {channel for channel, _, _ in mine} == {ENTRIES_CHANNEL, EVENTS_CHANNEL}

    in_order = _live(conversation_id, mine)
    assert in_order.reads == 0, "notifications in commit order need no read"
    assert in_order.frames == replay

    generator = random.Random(7)
    for _ in range(20):
        shuffled = [*mine, *generator.sample(mine, k=len(mine) // 3)]
        generator.shuffle(shuffled)
        delivered = _live(conversation_id, shuffled)
        # Out of order, some are settled by reads; nothing lost, nothing twice.
        assert sorted(map(_key, delivered.frames)) == sorted(map(_key, replay))


def _key(item: tuple[str, dict[str, Any]]) -> tuple[str, str, int]:
    event, data = item
    return event, str(data.get("thread_id")), data["seq"]


class _Live:
    def __init__(self) -> None:
        self.frames: list[tuple[str, dict[str, Any]]] = []
        self.reads = 0


def _live(conversation_id: uuid.UUID, notices: list[tuple[str, str, dict[str, Any]]]) -> _Live:
    stream = ConversationStream(conversation_id, ConversationCursor(), user_id="alice")
    live = _Live()

    def take(sent: list[bytes]) -> None:
        live.frames.extend((event, data) for _, event, data in map(_parse, sent))

    for channel, key, data in notices:
        sent, read = stream.notified(channel, key, data)
        take(sent)
        while read:
            live.reads += 1
            sent, read = stream.read_done(stream.read_plan()())
            take(sent)
    # Whatever is still held waits for a read, as the hub's reconnect or next gap would do.
    if stream.pending:
        live.reads += 1
        take(stream.read_done(stream.read_plan()())[0])
    return live


def test_a_payload_too_large_for_a_notification_is_read_from_the_database() -> None:
    listener = _listen()
    try:
        sent = message_handle(user_id="alice", channel="web", content="é" * 6000)
        notices = _notifications(listener)
    finally:
        listener.close()
    partial = [d for c, _, d in notices if c == ENTRIES_CHANNEL and d.get("partial")]
    assert partial == [{"seq": 1, "partial": True}]
    stream = ConversationStream(sent.conversation_id, ConversationCursor(), user_id="alice")
    frames, read = stream.notified(ENTRIES_CHANNEL, str(sent.conversation_id), partial[0])
    assert (frames, read) == ([], True)
    frames, _ = stream.read_done(stream.read_plan()())
    assert _parse(frames[0])[2]["content"] == "é" * 6000


def test_a_thread_stream_ends_with_the_threads_final_event() -> None:
    _, threads = _record_a_conversation()
    stream = ThreadStream(threads[0], after=2, user_id="alice")
    frames = _drain(stream)
    assert [(i, d["type"]) for i, _, d in frames] == [
        ("3", "step"),
        ("4", "step"),
        ("5", "completed"),
    ]
    assert stream.done()
    assert frames[-1][2]["usage"]["output_tokens"] == 7


@pytest.mark.parametrize(
    "text",
    [
        "",
        "x",
        "-1",
        "3.",
        "3.4",
        "1.2:3",
        "1" * 19,
        "2.1:1.1:2",
        # Past the event numbers' column, and digits of other scripts (which int() would read).
        "1.1:2147483648",
        "2.1:9999999999",
        "\uff11",
        "1.1:\u0661",
    ],
)
def test_a_cursor_the_stream_did_not_send_is_refused(text: str) -> None:
    with pytest.raises(CursorInvalid):
        ConversationCursor.parse(text)


@pytest.mark.parametrize("text", ["2147483648", "9999999999", "\uff11", "\u0663"])
def test_a_thread_cursor_past_any_event_number_is_refused(text: str) -> None:
    with pytest.raises(CursorInvalid):
        thread_cursor_parse(text)


def test_the_largest_event_number_is_a_cursor() -> None:
    assert thread_cursor_parse("2147483647") == 2147483647
    assert ConversationCursor.parse("1.1:2147483647").threads == {1: 2147483647}


@pytest.mark.parametrize("after", ["1.1:2147483648", "1.1:9999999999"])
def test_an_event_number_too_large_for_the_database_is_a_400_not_a_500(
    tenant_client: Callable[[str], APIClient], after: str
) -> None:
    sent = message_handle(user_id="alice", channel="web", content="hello")
    response = tenant_client("alice").get(
        f"/api/v1/conversations/{sent.conversation_id}/events", {"after": after}
    )
    assert response.status_code == 400
    assert "after" in response.json()["error"]["details"]


def test_cursors_read_back_as_written() -> None:
    cursor = ConversationCursor(12, {9: 3, 11: 0})
    assert str(cursor) == "12.9:3.11:0"
    assert ConversationCursor.parse(str(cursor)) == cursor


def test_a_step_checkpointed_after_its_thread_stopped_is_refused_no_event_follows_the_end() -> None:
    """An operator stops a thread while its model call runs (its worker keeps the lease epoch:
    a stop is no new claim); the step that call then checkpoints must not become an event after
    the thread's final one, which would leave a stream of the ended thread open, never saying how
    it ended."""
    sent = message_handle(user_id="alice", channel="web", content="hello")
    claimed = thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1")
    thread_stop(user_id="alice", thread_id=sent.thread_id)
    state = TurnState(
        thread_id=str(sent.thread_id),
        conversation_id=str(sent.conversation_id),
        user_id="alice",
        started_at=now_iso(),
    )

    with pytest.raises(WriteFenced):
        checkpoint_save(
            state,
            user_id="alice",
            changed_by="w1",
            lease_epoch=claimed.claim_count,
            step={"n": 1, "final": True},
        )

    kinds = list(
        ThreadEvent.objects.filter(thread_id=sent.thread_id)
        .order_by("seq")
        .values_list("kind", flat=True)
    )
    assert kinds == ["spawned", "claimed", "stopped"]
    thread = Thread.objects.get(pk=sent.thread_id)
    assert thread.event_seq == 3
    # The stream of the ended thread says how it ended, and ends.
    stream = ThreadStream(thread.id, after=thread.event_seq - 1, user_id="alice")
    assert [d["type"] for _, _, d in _drain(stream)] == ["stopped"]
    assert stream.done()


def test_notifications_of_threads_the_stream_saw_end_are_not_held() -> None:
    """A stream that opens as threads end gets, after its replay, the notifications committed
    meanwhile (the hub keeps them for it): those of a thread whose final event the replay sent
    are old news, not events waiting for their thread's announcement."""
    listener = _listen()
    try:
        conversation_id, _ = _record_a_conversation()
        notices = _notifications(listener)
    finally:
        listener.close()
    stream = ConversationStream(conversation_id, ConversationCursor(), user_id="alice")
    _drain(stream)

    for channel, key, data in notices:
        if key == str(conversation_id):
            assert stream.notified(channel, key, data) == ([], False)

    assert stream.pending == {}


def test_a_replay_reads_a_page_of_bounded_bytes_at_a_time() -> None:
    """Entries of 60 KB: a page stops at the first entry past READ_PAGE_BYTES, and the stream
    reads on from there, so a replay costs its web process a page, not the conversation."""
    sent = message_handle(user_id="alice", channel="web", content="x" * 60_000)
    for _ in range(9):
        message_handle(user_id="alice", channel="web", content="x" * 60_000)
    stream = ConversationStream(sent.conversation_id, ConversationCursor(), user_id="alice")
    first = stream.read_plan()()
    assert isinstance(first, ConversationRead)
    assert first.more
    sizes = [len(entry["content"].encode()) for entry in first.entries]
    # Up to and including the first entry that takes the page past the budget.
    assert sum(sizes[:-1]) <= READ_PAGE_BYTES < sum(sizes)
    frames, again = stream.read_done(first)
    assert again
    rest = _drain(stream)
    entries = [_parse(raw)[2]["seq"] for raw in frames if b"event: entry" in raw]
    entries += [data["seq"] for _, event, data in rest if event == "entry"]
    assert entries == list(range(1, 12))  # ten messages and one "Thread started"
