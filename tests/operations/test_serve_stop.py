"""Stopping `manage.py serve`: real processes, a real turn in flight, and the embedded PostgreSQL
under a private data folder. A stop leaves nothing of the service running, and no turn behind."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.support.serve import (
    embedded_serve_env,
    manage,
    postgres_processes,
    postgres_stop,
    postmaster_pid,
    processes_kill,
    serve_process,
    wait_until_ready,
)

pytestmark = pytest.mark.django_db(transaction=True)

ECHO = {"ENGINE_MODEL": "echo", "ENGINE_ECHO_LATENCY_MS": "50"}
# How long a stop may take here: the web process, the workers, then the database.
STOP_BOUND_SECONDS = 10

embedded_only = pytest.mark.skipif(
    bool(os.environ.get("DATABASE_URL")), reason="DATABASE_URL is set: no embedded database"
)


def _wait_for(condition: Callable[[], bool], *, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


@embedded_only
def test_a_postmaster_serve_started_again_is_stopped_with_serve(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    var_dir = Path(tmp_path_factory.mktemp("ps"))
    folder = var_dir / "pgdata"
    env = embedded_serve_env(var_dir, ECHO)
    manage(env, "migrate", "--noinput", "-v", "0")
    started: list[psutil.Process] = []
    try:
        with serve_process(env) as serve:
            killed = postmaster_pid(folder)
            assert killed is not None
            os.kill(killed, signal.SIGKILL)
            wait_until_ready(serve.base_url, timeout=60)
            restarted = postmaster_pid(folder)
            # Reaped, not a zombie any more (init may take its time here), as on most hosts.
            _wait_for(lambda: not psutil.pid_exists(killed))
            started = serve.descendants()

            serve.process.send_signal(signal.SIGTERM)
            serve.process.wait(timeout=STOP_BOUND_SECONDS + 20)
            left = postgres_processes(folder)
            output = serve.output()
    finally:
        processes_kill(started)
        postgres_stop(folder)

    assert restarted is not None
    assert restarted != killed
    assert "embedded PostgreSQL had died" in output
    assert left == [], output
