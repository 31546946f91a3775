"""Token deltas only for the tenants someone follows (core.delta_watch): announcements go through
the real database to this process's real notification listener."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg
import pytest
from django.db import DatabaseError, connection, transaction
from django.test import Client

from accounts.services import CreatedApiKey
from conversations.event_sql import UNFOLLOWED_SETTING
from conversations.models import Thread, ThreadEvent
from conversations.services import message_handle, thread_claim
from conversations.stream_requests import conversation_source
from core import delta_watch, notify, streams
from engine import checkpoint as engine_checkpoint
from engine.checkpoint import TurnState, checkpoint_save
from engine.deltas import DeltaPublisher
from engine.model_clients import EchoModel
from engine.runner import Turn
from tests.support.deltas import deltas_listener
from tests.support.locks import psycopg_params

pytestmark = pytest.mark.django_db(transaction=True)

THREAD = uuid.UUID("00000000-0000-4000-8000-0000000000a1")


def _eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture
def watch(monkeypatch: pytest.MonkeyPatch) -> Iterator[delta_watch._Watch]:
    """This process's watch, fresh and started, settled after 1 s, a tenant followed for 3 s
    after its announcement, pinged every 0.1 s from another connection (as the turn worker's
    heartbeat does) and trusted while a ping was heard in the last 2 s."""
    monkeypatch.setattr(delta_watch, "SETTLED_S", 1.0)
    monkeypatch.setattr(delta_watch, "EXPIRES_S", 3.0)
    monkeypatch.setattr(delta_watch, "_ping_fresh_s", lambda: 2.0)
    fresh = delta_watch._Watch()
    monkeypatch.setattr(delta_watch, "_watch", fresh)
    fresh.start()
    stop = threading.Event()

    def pings() -> None:
        while not stop.wait(0.1):
            with suppress(DatabaseError):
                delta_watch.watch_ping()
            connection.close()

    pinger = threading.Thread(target=pings, daemon=True)
    pinger.start()
    yield fresh
    stop.set()
    pinger.join(timeout=5)
    fresh.stop()
    notify.listener_stop()


@contextmanager
def _announcements() -> Iterator[list[dict[str, list[str]]]]:
    """What arrives on ironclaw_watch, heard on a LISTEN connection of the test's own."""
    heard: list[dict[str, list[str]]] = []
    stop = threading.Event()
    with psycopg.connect(**psycopg_params(), autocommit=True) as listen:
        listen.execute(f"LISTEN {notify.WATCH_CHANNEL}")

        def run() -> None:
            while not stop.is_set():
                for notice in listen.notifies(timeout=0.05):
                    if notice.payload.startswith("watch {"):  # not the workers' pings
                        heard.append(json.loads(notice.payload.removeprefix("watch ")))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield heard
        finally:
            stop.set()
            thread.join(timeout=5)


def _count(heard: list[dict[str, list[str]]], user_id: str) -> int:
    """How many of the announcements heard name ``user_id``."""
    return sum(user_id in announced["user_ids"] for announced in heard)


def test_tenants_are_announced_in_as_few_notifications_as_fit() -> None:
    tenants = [f"tenant-{n:04d}-" + "é" * 200 for n in range(300)]  # 200 two-byte characters

    payloads = delta_watch.announcements([*tenants, *tenants])

    announced = [json.loads(payload.removeprefix("watch "))["user_ids"] for payload in payloads]
    assert sorted(u for batch in announced for u in batch) == sorted(tenants)
    sizes = [len(payload.encode()) for payload in payloads]
    assert all(size < 8000 for size in sizes)
    # As few as fit: none but the last could have taken the next one's first tenant.
    for size, following in zip(sizes, announced[1:], strict=False):
        assert size + len(json.dumps(following[0], ensure_ascii=False).encode()) + 2 > 7800
    assert len(payloads) == 17  # about 420 bytes a tenant, 18 to a notification
    assert delta_watch.announcements([]) == []


def test_a_tenant_is_followed_from_its_announcement_until_it_expires(
    watch: delta_watch._Watch,
) -> None:
    # Just started: announcements of streams opened earlier may not have come round yet.
    assert watch.followed("alice")
    assert _eventually(lambda: not watch.followed("alice"))

    many = [f"tenant {n} with spaces {{and braces}}" for n in range(500)]
    delta_watch.announce(["alice", *many])

    assert _eventually(lambda: watch.followed("alice"))
    assert _eventually(lambda: all(watch.followed(tenant) for tenant in many))
    assert not watch.followed("bob")
    assert _eventually(lambda: not watch.followed("alice"), timeout=6)


def test_a_watch_that_cannot_tell_says_followed(
    watch: delta_watch._Watch, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _eventually(lambda: not watch.followed("alice"))

    notify.listener_stop()  # as when its connection is lost: announcements may be missed
    assert watch.followed("alice")

    # Listening again: unsettled at first, then trusted once more.
    notify.subscribe(notify.WATCH_CHANNEL, "nobody", lambda *args: None)()
    assert watch.followed("alice")
    assert _eventually(lambda: not watch.followed("alice"))

    # Its own pings no longer heard (a half-open connection hears nothing): it cannot tell.
    monkeypatch.setattr(watch, "ping", lambda: None)
    assert _eventually(lambda: watch.followed("alice"))

    assert delta_watch._Watch().followed("alice")  # never started (a test, a one-off drain)
    watch.stop()
    assert watch.followed("alice")  # stopped with its worker


def test_a_turns_deltas_go_out_only_while_its_tenant_is_followed(
    watch: delta_watch._Watch,
) -> None:
    assert _eventually(lambda: not watch.followed("carol"))

    def publish(step: int) -> int:
        publisher = DeltaPublisher(
            thread_id=THREAD, conversation_id=None, step=step, interval_ms=1, user_id="carol"
        )
        publisher.feed(f"text of step {step}")
        publisher.close()
        return publisher.published

    with deltas_listener() as listener:
        # Nobody follows carol: nothing queued, nothing notified.
        assert publish(1) == 0
        delta_watch.announce(["carol"])
        assert _eventually(lambda: watch.followed("carol"))
        assert publish(2) == 1
        received = listener.wait_for(lambda got: len(got) >= 1)
        time.sleep(0.2)

    assert [(d.body["step"], d.text) for d in listener.received] == [(2, "text of step 2")]
    assert received[0].thread_id == str(THREAD)


def test_a_step_followed_again_sends_its_whole_text(watch: delta_watch._Watch) -> None:
    delta_watch.announce(["ivan"])
    assert _eventually(lambda: watch.followed("ivan"))
    publisher = DeltaPublisher(
        thread_id=THREAD, conversation_id=None, step=1, interval_ms=1, user_id="ivan"
    )
    with deltas_listener() as listener:
        publisher.feed("first part")
        assert _eventually(lambda: not watch.followed("ivan"))
        publisher.feed("first part, second")  # nobody follows: not sent
        delta_watch.announce(["ivan"])
        assert _eventually(lambda: watch.followed("ivan"))
        publisher.feed("first part, second, third")
        listener.wait_for(lambda got: len(got) >= 2)

    # A stream that opened meanwhile has no earlier text: the delta starts at offset 0.
    assert [(d.body["offset"], d.text) for d in listener.received] == [
        (0, "first part"),
        (0, "first part, second, third"),
    ]


def test_opening_a_stream_announces_its_tenant_then_its_process_repeats_it(
    make_api_key: Callable[..., CreatedApiKey],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setattr(delta_watch, "ANNOUNCE_S", 0.2)
    monkeypatch.setattr(delta_watch, "_announcer", delta_watch._Announcer())
    request.addfinalizer(delta_watch.announcer_stop)
    key = make_api_key("dave").raw_key
    sent = message_handle(user_id="dave", channel="web", content="hello")
    api = Client(HTTP_AUTHORIZATION=f"Bearer {key}")

    with _announcements() as heard:
        response = api.get(f"/api/v1/conversations/{sent.conversation_id}/events")
        assert response.status_code == 200
        assert _eventually(lambda: _count(heard, "dave") == 1)
        # The test client has no hand-off: the stream ended with its replay, so the process has
        # none of dave's streams open and its announcer names nobody.
        time.sleep(0.5)
        assert _count(heard, "dave") == 1

        # A stream held open (as the hub holds a handed-off one) is announced every round.
        source = conversation_source(sent.conversation_id, None, user_id="dave")
        subscription = streams.hub().subscribe(source, "test-key")
        try:
            assert _eventually(lambda: _count(heard, "dave") >= 3)
        finally:
            subscription.cancel()
        time.sleep(0.3)  # a round in flight
        count = _count(heard, "dave")
        time.sleep(0.5)
        assert _count(heard, "dave") == count  # closed: no more


@contextmanager
def _events_heard() -> Iterator[list[dict[str, Any]]]:
    """The thread events notified on ironclaw_events, heard on a connection of the test's own."""
    heard: list[dict[str, Any]] = []
    stop = threading.Event()
    with psycopg.connect(**psycopg_params(), autocommit=True) as listen:
        listen.execute(f"LISTEN {notify.EVENTS_CHANNEL}")

        def run() -> None:
            while not stop.is_set():
                for notice in listen.notifies(timeout=0.05):
                    heard.append(json.loads(notice.payload.split(" ", 2)[2]))

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        try:
            yield heard
        finally:
            time.sleep(0.2)
            stop.set()
            thread.join(timeout=5)


def _turn(user_id: str, steps: int) -> Thread:
    sent = message_handle(user_id=user_id, channel="web", content="hello")
    thread = Thread.objects.get(pk=sent.thread_id)
    Turn(thread, model=EchoModel(latency_ms=1, steps=steps)).run()
    thread.refresh_from_db()
    return thread


def test_a_turns_step_events_are_recorded_and_notified_only_while_followed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_checkpoint, "tenant_followed", lambda user_id: False)
    with _events_heard() as quiet:
        unfollowed = _turn("gina", steps=3)
    with connection.cursor() as cursor:
        # The turn ran on this thread's connection: the setting ended with each statement.
        cursor.execute("SELECT current_setting(%s, true)", [UNFOLLOWED_SETTING])
        assert cursor.fetchone() in {("",), (None,)}
    monkeypatch.setattr(engine_checkpoint, "tenant_followed", lambda user_id: True)
    with _events_heard() as loud:
        followed = _turn("gina", steps=3)

    def kinds(thread: Thread) -> list[str]:
        return list(thread.events.order_by("seq").values_list("kind", flat=True))

    # Recorded either way: a stream that opens later replays them.
    assert kinds(unfollowed).count("step") == kinds(followed).count("step") == 3
    # Notified only while followed; the claim's and the outcome's events always are.
    assert [e["type"] for e in quiet if e["thread_id"] == str(unfollowed.id)] == [
        kind for kind in kinds(unfollowed) if kind != "step"
    ]
    assert [e["type"] for e in loud if e["thread_id"] == str(followed.id)] == kinds(followed)


def test_a_step_checkpoint_inside_a_callers_transaction_still_notifies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_checkpoint, "tenant_followed", lambda user_id: False)
    sent = message_handle(user_id="hank", channel="web", content="hello")
    claimed = thread_claim(user_id="hank", thread_id=sent.thread_id, worker_id="w")
    state = TurnState(
        thread_id=str(sent.thread_id), conversation_id=None, user_id="hank", started_at=""
    )

    with _events_heard() as heard, transaction.atomic():
        checkpoint_save(
            state, user_id="hank", changed_by="w", lease_epoch=claimed.claim_count, step={}
        )
        # The setting would outlive the statement in here, and silence this one too.
        ThreadEvent.objects.create(
            user_id="hank", thread_id=sent.thread_id, seq=999, kind="step", data={}
        )

    step_seq = Thread.objects.get(pk=sent.thread_id).event_seq
    assert sorted(e["seq"] for e in heard if e["thread_id"] == str(sent.thread_id)) == [
        step_seq,
        999,
    ]
