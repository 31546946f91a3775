"""Routines and webhooks end to end, as a tenant meets them: two API calls create a routine and a
webhook, and the tenant's receiver gets one signed ``thread.completed`` per firing, through a
background worker killed at a slot and a turn worker killed mid-turn.

Every part is real and in its own process: the web server, the turn worker and the background
workers (the scheduler and the webhook sender), a receiver on loopback, the test database. The
scheduler's clock is a file the test moves minute by minute (``ROUTINE_CLOCK_FILE``).
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from ironclaw_client import verify_webhook
from standardwebhooks.webhooks import Webhook as ReferenceVerifier

from accounts.services import CreatedApiKey
from routines.models import RoutineFiring
from tests.support.serve import call
from tests.support.servers import app_server, database_url, worker_process
from tests.webhooks.receiver import Answer, Received, Receiver, receiver_running

pytestmark = pytest.mark.django_db(transaction=True)

START = datetime(2026, 12, 7, 8, 59, 30, tzinfo=UTC)
BACKGROUND_QUEUES = "indexing,webhooks,default"
# The receiver's answers to its first two requests; every later one is a 200.
FAILING_FIRST = [Answer(500), Answer(503)]


def _env(clock: Path) -> dict[str, str]:
    return {
        "DATABASE_URL": database_url(connection.settings_dict),
        "ENGINE_MODEL": "echo",
        "ENGINE_ECHO_LATENCY_MS": "1500",
        "ENGINE_HEARTBEAT_SECONDS": "0.2",
        "ROUTINE_CLOCK_FILE": str(clock),
        "ROUTINE_TICK_SECONDS": "0.1",
        "WEBHOOK_ALLOW_PRIVATE": "true",
        "WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        # A killed worker's turn and jobs come back within a couple of seconds.
        "WORKER_HEARTBEAT_SECONDS": "0.2",
        "WORKER_STALLED_SECONDS": "1",
        "STALLED_JOBS_SWEEP_SECONDS": "0.3",
        "TURN_WORKER_DEAD_SECONDS": "1",
        "TURN_WORKER_SWEEP_SECONDS": "0.3",
    }


@contextmanager
def _restartable(env: dict[str, str], **options: Any) -> Iterator[Callable[[], None]]:
    """A worker process that ``restart()`` SIGKILLs and starts again."""
    with ExitStack() as stack:
        current = [stack.enter_context(worker_process(env, **options))]

        def restart() -> None:
            current[0].send_signal(signal.SIGKILL)
            current[0].wait(timeout=10)
            current[0] = stack.enter_context(worker_process(env, **options))

        yield restart


def _completed(accepted: list[Received]) -> dict[str, set[str]]:
    """For each thread a thread.completed was accepted for, the webhook-ids it came with. A
    delivery accepted again (the worker killed between the receiver's 2xx and its record of it)
    comes with the same id, which is how a receiver tells it from a new event."""
    threads: dict[str, set[str]] = {}
    for item in accepted:
        body = json.loads(item.body)
        if body["type"] == "thread.completed":
            threads.setdefault(body["data"]["thread_id"], set()).add(item.headers["webhook-id"])
    return threads


def _accepted(receiver: Receiver) -> list[Received]:
    """What the receiver answered 200: all but the first two requests (FAILING_FIRST)."""
    return receiver.requests[len(FAILING_FIRST) :]


def _wait_for_completions(
    receiver: Receiver, count: int, *, timeout: float = 60
) -> dict[str, set[str]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        threads = _completed(_accepted(receiver))
        if len(threads) >= count:
            return threads
        time.sleep(0.1)
    raise AssertionError(f"{count} completed threads expected, got {receiver.requests}")


def test_each_firing_of_a_routine_reaches_the_tenant_once_signed_through_worker_kills(
    make_api_key: Callable[..., CreatedApiKey], tmp_path: Path
) -> None:
    key = make_api_key("alice").raw_key
    clock = tmp_path / "clock"
    clock.write_text(START.isoformat())
    env = _env(clock)
    # The first two attempts of the first delivery fail: it is retried, and accepted once.
    with (
        receiver_running(FAILING_FIRST) as receiver,
        app_server(env) as base,
        _restartable(env, queues="threads", name="turns") as restart_turns,
        _restartable(env, queues=BACKGROUND_QUEUES, name="background") as restart_background,
    ):
        status, webhook = call(
            base, key, "POST", "/api/v1/webhooks",
            {"url": receiver.url(), "events": ["thread.completed"]},
        )  # fmt: skip
        assert status == 201, webhook
        status, routine = call(
            base, key, "POST", "/api/v1/routines",
            {"name": "digest", "cron": "* * * * *", "message": "summarise the day"},
        )  # fmt: skip
        assert status == 201, routine
        assert routine["next_fire_at"].startswith("2026-12-07T09:00:00")

        # Slot 1: retried past two failures.
        clock.write_text((START + timedelta(seconds=30)).isoformat())
        _wait_for_completions(receiver, 1)
        # Slot 2: the background worker (scheduler and sender) is killed as the slot comes.
        clock.write_text((START + timedelta(seconds=90)).isoformat())
        restart_background()
        _wait_for_completions(receiver, 2)
        # Slot 3: the turn worker is killed mid-turn (the echo model takes 1.5 s).
        clock.write_text((START + timedelta(seconds=150)).isoformat())
        deadline = time.monotonic() + 30
        while RoutineFiring.objects.filter(user_id="alice").count() != 3:
            assert time.monotonic() < deadline, "the third slot never fired"
            time.sleep(0.05)
        time.sleep(0.5)
        restart_turns()
        threads = _wait_for_completions(receiver, 3)
        # Whatever is still in flight has time to arrive twice, if it ever would.
        time.sleep(2)
        accepted = _accepted(receiver)

        status, firings = call(base, key, "GET", f"/api/v1/routines/{routine['id']}/firings")

    assert status == 200, firings
    slots = sorted(firing["slot"] for firing in firings["results"])
    assert [slot[:19] for slot in slots] == [
        "2026-12-07T09:00:00",
        "2026-12-07T09:01:00",
        "2026-12-07T09:02:00",
    ]
    assert {firing["state"] for firing in firings["results"]} == {"fired"}
    assert {firing["thread_state"] for firing in firings["results"]} == {"completed"}
    # One event per firing's thread, each under one webhook-id however often it was accepted.
    assert sorted(threads) == sorted(firing["thread_id"] for firing in firings["results"])
    assert _completed(accepted) == threads
    assert all(len(ids) == 1 for ids in threads.values())
    assert len({item.headers["webhook-id"] for item in accepted}) == 3
    # The first delivery was tried three times, under one webhook-id.
    first_ids = {item.headers["webhook-id"] for item in receiver.requests[:3]}
    assert len(first_ids) == 1
    for item in accepted:
        event = verify_webhook(webhook["secret"], item.headers, item.body)
        assert ReferenceVerifier(webhook["secret"]).verify(item.body, item.headers) == event
        assert event["data"]["routine_id"] == routine["id"]
