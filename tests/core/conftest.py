"""The event streams' fixtures (tests.support.event_streams): the web server in a thread, the
hubs its view hands streams to, and a listener known to be listening."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.wsgi import get_wsgi_application
from django.test import override_settings

from core import notify
from core.notify import EVENTS_CHANNEL
from core.streams import Hub
from tests.support.event_streams import (
    GATES,
    HUBS,
    SUBSCRIPTIONS,
    URLCONF,
    eventually,
    notify_events,
    web_server_thread,
)


@pytest.fixture(scope="module")
def stream_port(django_db_setup: None, django_db_blocker: Any) -> Iterator[int]:
    """The port of a web server whose /events view hands its streams to the last hub made."""
    with override_settings(ROOT_URLCONF=URLCONF), web_server_thread(get_wsgi_application()) as port:
        yield port
    # The listener's connection would keep the test database from being dropped.
    notify.listener_stop()


@pytest.fixture
def make_hub() -> Iterator[Callable[..., Hub]]:
    made: list[Hub] = []

    def make(**options: Any) -> Hub:
        defaults = {
            "per_key": 100,
            "read_threads": 2,
            "keepalive": 15.0,
            "lifetime": 300.0,
            "buffer_bytes": 1 << 20,
        }
        hub = Hub(**{**defaults, **options})
        made.append(hub)
        HUBS.append(hub)
        return hub

    yield make
    for hub in made:
        hub.close()
        HUBS.remove(hub)
    GATES.clear()
    SUBSCRIPTIONS.clear()


@pytest.fixture
def listener_up(transactional_db: None) -> None:
    """This process's listener is listening: a notification sent now is heard."""
    heard = threading.Event()
    unsubscribe = notify.subscribe(EVENTS_CHANNEL, "probe", lambda *args: heard.set())

    def probe() -> bool:
        notify_events("probe")
        return heard.wait(0.2)

    try:
        eventually(probe)
    finally:
        unsubscribe()
