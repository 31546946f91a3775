"""core.notify's payloads and subscribers, on real NOTIFYs through this process's listener."""

from __future__ import annotations

import queue
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection

from core import notify
from core.notify import (
    ANY,
    ENTRIES_CHANNEL,
    EVENTS_CHANNEL,
    THREADS_CHANNEL,
    payload_data,
    payload_keys,
)

pytestmark = pytest.mark.django_db(transaction=True)

Heard = tuple[str, str, dict[str, Any] | None]


@pytest.fixture(autouse=True, scope="module")
def _listener_stopped() -> Iterator[None]:
    """The listener's connection would keep the test database from being dropped."""
    yield
    notify.listener_stop()


def send(channel: str, payload: str) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_notify(%s, %s)", [channel, payload])


@pytest.fixture
def heard(listener_up: None) -> queue.Queue[Heard]:
    """Where a test's subscribers put what they hear, once the listener is up."""
    return queue.Queue()


def test_a_payload_is_its_keys_then_an_optional_json_object() -> None:
    assert payload_keys("abc") == ["abc"]
    assert payload_data("abc") is None
    assert payload_keys('a b a {"x": {"y": 1}}')[:2] == ["a", "b"]
    assert payload_data('a b a {"x": {"y": 1}}') == {"x": {"y": 1}}
    assert payload_data('{"only": "data"}') == {"only": "data"}
    # The whole payload is a key too: a user id with a space or a brace still wakes its waiters.
    assert payload_keys("john doe") == ["john", "doe", "john doe"]
    assert payload_keys("bob{x") == ["bob", "bob{x"]
    assert payload_data("bob{x") is None
    assert payload_data('x {"a": 1} more') is None
    assert payload_data("x {}") == {}


def test_a_subscriber_hears_its_key_with_the_data_and_a_bare_key_without(
    heard: queue.Queue[Heard],
) -> None:
    conversation = str(uuid.uuid4())
    unsubscribe = notify.subscribe(ENTRIES_CHANNEL, conversation, lambda *args: heard.put(args))

    send(ENTRIES_CHANNEL, str(uuid.uuid4()))
    send(ENTRIES_CHANNEL, f'{conversation} {{"seq": 7}}')
    send(ENTRIES_CHANNEL, conversation)

    assert heard.get(timeout=5) == (ENTRIES_CHANNEL, conversation, {"seq": 7})
    assert heard.get(timeout=5) == (ENTRIES_CHANNEL, conversation, None)
    unsubscribe()
    send(ENTRIES_CHANNEL, conversation)
    with pytest.raises(queue.Empty):
        heard.get(timeout=0.5)


def test_waiters_wake_for_every_key_of_a_payload_with_data(heard: queue.Queue[Heard]) -> None:
    conversation, other = str(uuid.uuid4()), str(uuid.uuid4())
    with (
        notify.listening(ENTRIES_CHANNEL, conversation) as first,
        notify.listening(ENTRIES_CHANNEL, other) as second,
        notify.listening(THREADS_CHANNEL, "john doe") as spaced,
    ):
        for event in (first, second, spaced):
            event.clear()
        send(ENTRIES_CHANNEL, f'{conversation} {other} {{"seq": 1}}')
        send(THREADS_CHANNEL, "john doe")

        assert first.wait(5)
        assert second.wait(5)
        assert spaced.wait(5)


def test_a_subscriber_to_any_key_hears_each_notification_once_and_a_failing_one_harms_none(
    heard: queue.Queue[Heard],
) -> None:
    def fail(*args: Any) -> None:
        raise RuntimeError("a subscriber's bug")

    unsubscribes = [
        notify.subscribe(EVENTS_CHANNEL, ANY, fail),
        notify.subscribe(EVENTS_CHANNEL, ANY, lambda *args: heard.put(args)),
    ]

    send(EVENTS_CHANNEL, 'k1 k2 {"n": 1}')
    send(EVENTS_CHANNEL, "k3")

    assert heard.get(timeout=5) == (EVENTS_CHANNEL, "k1", {"n": 1})
    assert heard.get(timeout=5) == (EVENTS_CHANNEL, "k3", None)
    for unsubscribe in unsubscribes:
        unsubscribe()


def test_reconnect_callbacks_run_once_the_listener_listens_again(
    heard: queue.Queue[Heard],
) -> None:
    reconnected = threading.Event()
    forget = notify.on_reconnect(reconnected.set)
    key = str(uuid.uuid4())
    unsubscribe = notify.subscribe(EVENTS_CHANNEL, key, lambda *args: heard.put(args))

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN %%' "
            "AND pid <> pg_backend_pid()"
        )

    assert reconnected.wait(10)
    # Listening again when told so: a notification sent now is heard.
    send(EVENTS_CHANNEL, key)
    assert heard.get(timeout=5) == (EVENTS_CHANNEL, key, None)
    forget()
    unsubscribe()
