"""`manage.py worker`: one production worker per kind, with the kind's queues and concurrency."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from django.core.management import CommandError
from django.db import connection
from pytest_django.fixtures import Settings as SettingsWrapper

from operations.health import ALIVE, worker_kinds_alive
from operations.models import WorkerName
from operations.workers import WorkerPlan, job_pools, worker_plan
from tests.support.servers import BASE_DIR, database_url


@pytest.fixture(autouse=True)
def _concurrency(settings: SettingsWrapper) -> None:
    settings.ENGINE_CONCURRENCY = 24
    settings.BACKGROUND_CONCURRENCY = 3


@pytest.mark.parametrize(
    ("options", "plan"),
    [
        ({"kind": "turns"}, WorkerPlan("turns", ("threads",), 24)),
        ({"kind": "background"}, WorkerPlan("background", ("indexing", "webhooks", "default"), 3)),
        ({"queues": "threads"}, WorkerPlan("turns", ("threads",), 24)),
        ({"queues": " indexing, default "}, WorkerPlan("background", ("indexing", "default"), 3)),
        ({"queues": "default"}, WorkerPlan("background", ("default",), 3)),
        ({"kind": "turns", "concurrency": 8}, WorkerPlan("turns", ("threads",), 8)),
        ({"kind": "background", "queues": "indexing"}, WorkerPlan("background", ("indexing",), 3)),
    ],
)
def test_a_worker_takes_its_kinds_queues_and_concurrency(
    options: dict[str, object], plan: WorkerPlan
) -> None:
    arguments = {"kind": None, "queues": None, "concurrency": None, **options}

    assert worker_plan(**arguments) == plan  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "--kind turns|background or --queue"),
        ({"queues": "indexng"}, "--queue must be a comma-separated list"),
        ({"queues": ","}, "--queue must be a comma-separated list"),
        ({"queues": "threads,indexing"}, "mixes threads with other queues"),
        ({"kind": "turns", "queues": "default"}, "--kind turns does not serve --queue"),
        ({"kind": "turns", "concurrency": 0}, "--concurrency must be between 1 and 1024"),
    ],
)
def test_a_worker_refuses_options_that_serve_nothing_or_mix_turns_with_indexing(
    options: dict[str, object], message: str
) -> None:
    arguments = {"kind": None, "queues": None, "concurrency": None, **options}

    with pytest.raises(CommandError, match=message):
        worker_plan(**arguments)  # type: ignore[arg-type]


@pytest.mark.django_db(transaction=True)
def test_the_background_worker_runs_under_its_kind_name_until_stopped() -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url(connection.settings_dict),
        "LOG_LEVEL": "WARNING",
        "BACKGROUND_CONCURRENCY": "2",
        "WORKER_HEARTBEAT_SECONDS": "0.2",
        "WORKER_STALLED_SECONDS": "1",
    }
    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM ironclaw_site_workername")
    process = subprocess.Popen(
        [sys.executable, "manage.py", "worker", "--kind", "background"],
        cwd=BASE_DIR,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        named = WorkerName.objects.filter(name="background")
        while worker_kinds_alive().get("background") != ALIVE or named.count() < 2:
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the worker never registered"
            time.sleep(0.1)
        # Two Procrastinate workers, both of this kind: the jobs' and the webhook deliveries'.
        where = list(named.values_list("host", "pid"))
    finally:
        process.terminate()
        output = process.communicate(timeout=20)[0]

    assert process.returncode == 0, output
    # The admin's workers table says where it runs.
    assert where == [(socket.gethostname(), process.pid)] * 2
    assert (
        "Worker background on indexing, default with 2 jobs at once, "
        "and webhooks with 8 jobs at once." in output
    )


@pytest.mark.parametrize(
    ("queues", "pools"),
    [
        (["indexing", "webhooks", "default"], [(["indexing", "default"], 2), (["webhooks"], 8)]),
        (["webhooks"], [(["webhooks"], 2)]),
        (["indexing", "default"], [(["indexing", "default"], 2)]),
        (["threads"], [(["threads"], 2)]),
    ],
)
def test_webhook_deliveries_get_a_pool_of_their_own_beside_other_queues(
    queues: list[str], pools: list[tuple[list[str], int]], settings: SettingsWrapper
) -> None:
    settings.WEBHOOK_CONCURRENCY = 8

    assert job_pools(queues, 2) == pools


def test_a_worker_of_webhooks_alone_runs_webhook_concurrency_deliveries(
    settings: SettingsWrapper,
) -> None:
    settings.WEBHOOK_CONCURRENCY = 16
    settings.BACKGROUND_CONCURRENCY = 3

    plan = worker_plan(kind=None, queues="webhooks", concurrency=None)

    assert plan == WorkerPlan("background", ("webhooks",), 16)
