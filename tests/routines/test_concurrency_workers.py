"""Real background workers run the scheduler: a routine every minute fires once per slot with two
workers, one of them SIGKILLed around a slot and replaced. Their clock is a file the test moves
minute by minute (ROUTINE_CLOCK_FILE), so no test waits for a real minute."""

from __future__ import annotations

import datetime
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from django.db import connection

from conversations.models import Thread
from routines.models import FiringState, Routine, RoutineFiring
from tests.routines.helpers import T0, clock_set, minutes, routine_make
from tests.support.servers import database_url, worker_process

pytestmark = pytest.mark.django_db(transaction=True)

SLOTS = 5
KILLED_AT_SLOT = 3


@pytest.fixture(autouse=True)
def _no_jobs_left() -> Iterator[None]:
    """The workers' periodic jobs outlive transactional tests: start and end without them."""

    def purge() -> None:
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM procrastinate_jobs")

    purge()
    yield
    purge()


def _wait_until_fired(routine: Routine, slot: datetime.datetime, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if RoutineFiring.objects.filter(routine=routine, slot=slot).exists():
            return
        time.sleep(0.05)
    raise AssertionError(f"slot {slot.isoformat()} did not fire within {timeout} s")


def test_a_routine_every_minute_fires_once_per_slot_through_a_killed_worker(clock: Path) -> None:
    routine = routine_make(cron="* * * * *", message="tick")
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "ROUTINE_CLOCK_FILE": str(clock),
        "ROUTINE_TICK_SECONDS": "0.1",
        "WORKER_HEARTBEAT_SECONDS": "0.2",
        "WORKER_STALLED_SECONDS": "1",
    }
    slots = [T0 + minutes(n) for n in range(1, SLOTS + 1)]

    with ExitStack() as stack:
        doomed = stack.enter_context(worker_process(env, queues="default", concurrency=1))
        stack.enter_context(worker_process(env, queues="default", concurrency=1))
        for number, slot in enumerate(slots, start=1):
            clock_set(clock, slot + datetime.timedelta(seconds=1))
            if number == KILLED_AT_SLOT:
                # Around the slot: the doomed worker may be before, inside or after its pass.
                doomed.send_signal(signal.SIGKILL)
                doomed.wait()
                stack.enter_context(worker_process(env, queues="default", concurrency=1))
            _wait_until_fired(routine, slot)
        # Both live workers tick a few more times at the last slot: nothing fires twice.
        time.sleep(0.5)

    firings = list(RoutineFiring.objects.filter(routine=routine).order_by("slot"))
    assert [firing.slot for firing in firings] == slots
    assert {firing.state for firing in firings} == {FiringState.FIRED}
    threads = Thread.objects.in_bulk([firing.thread_id for firing in firings])
    assert len(threads) == SLOTS
    assert {thread.metadata["routine_id"] for thread in threads.values()} == {str(routine.pk)}
    routine.refresh_from_db()
    assert routine.next_fire_at == slots[-1] + minutes(1)
    assert routine.last_fire_at == slots[-1]
