"""Token deltas: a model step's text as it is produced, received by a real LISTEN connection."""

from __future__ import annotations

import datetime
import itertools
import json
import logging
import threading
import time
import uuid

import pytest
from django.db import connection, transaction
from django.test import override_settings
from hypothesis import given
from hypothesis import strategies as st

from conversations.models import Thread
from conversations.services import message_handle
from core import notify
from engine import delta_sender as delta_sender_module
from engine import deltas
from engine.checkpoint import thread_checkpoint_path
from engine.delta_sender import delta_sender
from engine.deltas import MAX_PAYLOAD_BYTES, DeltaPublisher, delta_payloads
from engine.model_clients import EchoModel
from engine.runner import Turn
from tests.support.deltas import Delta, applied, deltas_listener
from workspace.models import Document

THREAD = uuid.UUID("00000000-0000-4000-8000-000000000001")
CONVERSATION = uuid.UUID("00000000-0000-4000-8000-000000000002")
# Every kind of character a payload must carry: multi-byte ones (two, three and four bytes in
# UTF-8), and what JSON escapes (quotes, backslashes, control characters).
MIXED = 'ascii é ü 中文 😀🎉 "quoted" back\\slash\ttab\nline \x01 '


def _text_of(deltas: list[Delta]) -> str:
    (text,) = applied(deltas).values()
    return text


@pytest.mark.django_db(transaction=True)
@override_settings(ENGINE_DELTA_INTERVAL_MS=200)
def test_an_echo_turns_text_arrives_as_it_is_produced_at_most_every_interval() -> None:
    sent = message_handle(user_id="alice", channel="web", content="a question worth a second")
    final = "echo: a question worth a second"

    with deltas_listener() as listener:
        Turn(Thread.objects.get(pk=sent.thread_id), model=EchoModel(latency_ms=1000)).run()
        received = listener.wait_for(lambda got: len(got) >= 2)
        received = listener.settle()

    checkpoint = Document.objects.get(path=thread_checkpoint_path(sent.thread_id))
    (step,) = json.loads(checkpoint.content)["steps"]
    call_started = datetime.datetime.fromisoformat(step["started_at"]).timestamp()
    assert 2 <= len(received) <= 7, [d.body for d in received]
    assert received[0].received_at - call_started < 0.15
    assert {(d.conversation_id, d.thread_id) for d in received} == {
        (str(sent.conversation_id), str(sent.thread_id))
    }
    assert {d.body["step"] for d in received} == {1}
    assert [d.body["offset"] for d in received] == [0] * len(received)
    texts = [d.text for d in received]
    assert all(final.startswith(text) for text in texts)
    assert len(set(texts)) == len(texts), "a delta identical to the last one was sent"
    # Coalesced, the close included (the turn paces its steps' deltas): at least the interval
    # between two; the text after the last delta comes in the agent's entry.
    sent_at = [d.received_at for d in received]
    assert all(b - a >= 0.15 for a, b in itertools.pairwise(sent_at))
    assert Thread.objects.get(pk=sent.thread_id).state == "completed"


@pytest.mark.django_db(transaction=True)
def test_a_turn_of_short_steps_publishes_at_most_one_delta_per_interval() -> None:
    """Eight 125 ms steps: paced across the turn, about five deltas, not two per step."""
    sent = message_handle(user_id="alice", channel="web", content="many short steps")
    with deltas_listener() as listener:
        Turn(Thread.objects.get(pk=sent.thread_id), model=EchoModel(latency_ms=125, steps=8)).run()
        received = listener.wait_for(lambda got: len(got) >= 3)
        received = listener.settle()
    assert 3 <= len(received) <= 7, [d.body for d in received]
    assert len({d.body["step"] for d in received}) >= 3
    arrived = [d.received_at for d in received]
    assert all(b - a >= 0.15 for a, b in itertools.pairwise(arrived))


@pytest.mark.django_db(transaction=True)
def test_a_large_growing_text_is_split_into_payloads_that_reassemble_exactly() -> None:
    text = (MIXED * 700)[:20_000]
    publisher = DeltaPublisher(
        thread_id=THREAD, conversation_id=CONVERSATION, step=3, interval_ms=1
    )

    with deltas_listener() as listener:
        # Fed from a thread of its own, as the runner's model call does.
        def model() -> None:
            for end in (10, 3_000, 7_000, 12_345, 19_999):
                publisher.feed(text[:end])
                time.sleep(0.01)
            publisher.feed(text)

        feeder = threading.Thread(target=model)
        feeder.start()
        feeder.join()
        publisher.close()
        received = listener.wait_for(lambda got: bool(got) and _text_of(got) == text)

    assert all(len(d.payload.encode()) <= MAX_PAYLOAD_BYTES for d in received)
    assert any(d.body["offset"] > 0 for d in received)
    assert received[0].body["offset"] == 0
    assert all(d.body["step"] == 3 for d in received)
    assert _text_of(received) == text
    assert publisher.published == len(received)


@pytest.mark.django_db(transaction=True)
def test_a_burst_is_coalesced_and_the_last_text_goes_at_close() -> None:
    publisher = DeltaPublisher(thread_id=THREAD, conversation_id=None, step=1, interval_ms=10_000)

    with deltas_listener() as listener:
        for end in range(1, 101):
            publisher.feed("x" * end)
        publisher.feed("x" * 100)
        publisher.close()
        publisher.feed("too late")
        received = listener.wait_for(lambda got: len(got) == 2)
        received = listener.settle()

    assert [(d.conversation_id, d.body["offset"], d.text) for d in received] == [
        ("-", 0, "x"),
        ("-", 0, "x" * 100),
    ]


@pytest.mark.django_db(transaction=True)
def test_nothing_is_published_with_deltas_off_or_after_an_abandoned_step() -> None:
    off = DeltaPublisher(thread_id=THREAD, conversation_id=None, step=1, interval_ms=0)
    abandoned = DeltaPublisher(thread_id=THREAD, conversation_id=None, step=2, interval_ms=1)

    with deltas_listener() as listener:
        off.feed("never")
        off.close()
        abandoned.feed("first")
        abandoned.abandon()
        abandoned.feed("first and more")
        abandoned.close()
        received = listener.wait_for(lambda got: len(got) == 1)
        received = listener.settle()

    assert [(d.body["step"], d.text) for d in received] == [(2, "first")]


@pytest.mark.django_db(transaction=True)
def test_a_failed_send_is_logged_never_raised_and_the_next_deltas_go_out(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The model's thread only queues; the sender drops what the server refuses (logged at most
    once a minute), connects again, and sends the next ones."""
    sender = delta_sender()
    monkeypatch.setattr(delta_sender_module, "FAILURE_LOG_INTERVAL_S", 60.0)
    monkeypatch.setattr(sender, "_failure_logged_at", -60.0)
    # Past PostgreSQL's own limit: the server refuses these notifications.
    monkeypatch.setattr(deltas, "MAX_PAYLOAD_BYTES", 20_000)
    refused = DeltaPublisher(thread_id=THREAD, conversation_id=None, step=1, interval_ms=1)
    with caplog.at_level(logging.WARNING, logger="engine.delta_sender"):
        refused.feed("y" * 9_000)
        assert sender.idle()
        refused.feed("y" * 9_500)
        refused.close()
        assert sender.idle()
    assert len([r for r in caplog.records if "not published" in r.getMessage()]) == 1
    monkeypatch.undo()

    with deltas_listener() as listener:
        later = DeltaPublisher(thread_id=THREAD, conversation_id=None, step=2, interval_ms=1)
        later.feed("after the failure")
        received = listener.wait_for(lambda got: len(got) == 1)
    assert received[0].text == "after the failure"
    assert connection.connection is None  # the model's thread took no connection


@given(
    text=st.text(
        alphabet=st.sampled_from([*'ab"\\\n\x00\x1f', "é", "中", "😀", "\u2028"]), max_size=9_000
    ),
    offset=st.integers(min_value=0, max_value=10**9),
)
def test_payloads_stay_under_the_limit_and_carry_the_text_from_its_offset(
    text: str, offset: int
) -> None:
    payloads = delta_payloads(
        conversation_id=CONVERSATION, thread_id=THREAD, step=7, offset=offset, text=text, at=1.5
    )

    bodies = [json.loads(payload.split(" ", 2)[2]) for payload in payloads]
    assert all(len(payload.encode()) <= MAX_PAYLOAD_BYTES for payload in payloads)
    assert all(p.startswith(f"{CONVERSATION} {THREAD} ") for p in payloads)
    assert "".join(body["text"] for body in bodies) == text
    starts = [
        offset + len("".join(body["text"] for body in bodies[:n])) for n in range(len(bodies))
    ]
    assert [body["offset"] for body in bodies] == starts
    assert all(
        (body["thread_id"], body["step"], body["at"]) == (str(THREAD), 7, 1.5) for body in bodies
    )
    assert all(body["text"] for body in bodies) or len(bodies) == 1


def test_a_lone_surrogate_is_sent_as_one_replacement_character() -> None:
    (payload,) = delta_payloads(
        conversation_id=None, thread_id=THREAD, step=1, offset=0, text="a\ud800b", at=0.0
    )

    assert json.loads(payload.split(" ", 2)[2])["text"] == "a?b"


@pytest.mark.django_db(transaction=True)
def test_a_deltas_commit_skips_the_disk_and_the_setting_ends_with_its_transaction() -> None:
    def synchronous_commit() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('synchronous_commit')")
            return str(cursor.fetchone()[0])

    with deltas_listener() as received:
        with transaction.atomic(), connection.cursor() as cursor:
            # The delta sender's statement.
            cursor.execute(
                notify.NOTIFY_MANY_ASYNC_SQL,
                [notify.DELTAS_CHANNEL, ['- t {"n": 1}', '- t {"n": 2}']],
            )
            # Asynchronous for the deltas' own transaction...
            assert synchronous_commit() == "off"
        # ...and never for the next one on the same (pooled) connection, which may write.
        assert synchronous_commit() == "on"
        deltas.deltas_notify(['- t {"n": 3}'])
        assert synchronous_commit() == "on"
        # Sent inside a caller's transaction, they leave its commit as it was.
        with transaction.atomic():
            deltas.deltas_notify(['- t {"n": 4}', '- t {"n": 5}'])
            assert synchronous_commit() == "on"
        # Delivered all the same, in order.
        got = received.wait_for(lambda delivered: len(delivered) >= 5)
    assert [delta.body["n"] for delta in got] == [1, 2, 3, 4, 5]
