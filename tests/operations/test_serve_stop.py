"""Stopping `manage.py serve`: real processes, a real turn in flight, and the embedded PostgreSQL
under a private data folder. A stop leaves nothing of the service running, and no turn behind."""

from __future__ import annotations

import datetime
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from django.db import connection
from django.utils import timezone

from accounts.services import CreatedApiKey
from conversations.models import ConversationEntry, Thread
from engine.checkpoint import thread_checkpoint_path
from tests.support.serve import (
    Page,
    ServeProcess,
    await_reply,
    call,
    embedded_serve_env,
    manage,
    post_message,
    postgres_processes,
    postgres_stop,
    postmaster_pid,
    processes_alive,
    processes_kill,
    serve_process,
    wait_until_ready,
)
from tests.support.servers import database_url
from workspace.models import Document

pytestmark = pytest.mark.django_db(transaction=True)

ECHO = {"ENGINE_MODEL": "echo", "ENGINE_ECHO_LATENCY_MS": "50"}
# A turn of two model calls of four seconds each: stopped early in the second.
SLOW_ECHO = {"ENGINE_MODEL": "echo", "ENGINE_ECHO_LATENCY_MS": "4000", "ENGINE_ECHO_STEPS": "2"}
# How long a stop may take here: the web process, the workers, then the database. Less than what
# is left of the model call in flight: the stop does not wait for it.
STOP_BOUND_SECONDS = 3.5
# Well under serve's grace of 15 s per group of children: a forced stop does not wait it out, nor
# does one whose database serve restarted (its children take a second or two longer to exit).
UNDER_GRACE_SECONDS = 10

embedded_only = pytest.mark.skipif(
    bool(os.environ.get("DATABASE_URL")), reason="DATABASE_URL is set: no embedded database"
)


def run_past_the_stop(*, thread: Thread, worker_id: str) -> None:
    """A THREAD_RUNNER that ignores its worker's stop: only a forced stop ends it early."""
    time.sleep(60)


def _wait_for(condition: Callable[[], bool], *, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def _checkpoint(user_id: str, thread_id: str) -> dict[str, Any]:
    content = (
        Document.objects.filter(user_id=user_id, path=thread_checkpoint_path(thread_id))
        .values_list("content", flat=True)
        .first()
    )
    return dict(json.loads(content)) if content else {"steps": [], "events": []}


def _stop(serve: ServeProcess, *, timeout: float) -> float:
    """SIGTERM serve and wait for it to exit; the seconds it took."""
    stopping_at = time.monotonic()
    serve.process.send_signal(signal.SIGTERM)
    try:
        serve.process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve did not stop within {timeout} s:\n{serve.output()}") from None
    return time.monotonic() - stopping_at


def test_a_stop_hands_the_turn_in_flight_back_and_the_next_start_answers_it_once(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key("alice").raw_key
    # Nothing but the stopping worker can give the turn back this soon: the lease lasts 30 s and
    # the background worker sweeps expired leases once a minute.
    env = {"DATABASE_URL": database_url(connection.settings_dict), **SLOW_ECHO}

    started: list[psutil.Process] = []
    try:
        with serve_process(env) as serve:
            status, sent = post_message(serve.base_url, key, "are you still there?")
            assert status == 202, sent
            thread_id = sent["thread_id"]
            # Step 1 is checkpointed and step 2 is with the model when serve is stopped.
            _wait_for(lambda: len(_checkpoint("alice", thread_id)["steps"]) == 1)
            time.sleep(0.3)
            started = serve.descendants()
            stopped_wall = timezone.now()
            stopped_in = _stop(serve, timeout=30)
            left = processes_alive(started)
            returncode, output = serve.process.returncode, serve.output()
        handed_back = Thread.objects.get(pk=thread_id)
        checkpoint = _checkpoint("alice", thread_id)

        restarting_at = time.monotonic()
        with serve_process(env) as again:
            ready_after = time.monotonic() - restarting_at

            def fetch(path: str, wait: int) -> Page:
                status, page = call(again.base_url, key, "GET", path)
                assert status == 200, page
                return dict(page)

            reply = await_reply(fetch, sent, timeout=30)
            answered_after = time.monotonic() - restarting_at
            # Longer than a step: a second run of the turn would have answered again by now.
            time.sleep(4.5)
    finally:
        processes_kill(started)

    print(
        f"serve stopped mid model call in {stopped_in:.1f} s; after the next start, ready in "
        f"{ready_after:.1f} s and the interrupted turn answered in {answered_after:.1f} s"
    )
    assert returncode == 0, output
    assert stopped_in < STOP_BOUND_SECONDS, output
    assert left == []
    assert "Stopping: the web processes, then the workers" in output
    # Given back, not left running under a lease nobody renews.
    assert (handed_back.state, handed_back.lease_owner, handed_back.claim_count) == (
        "created",
        "",
        1,
    )
    assert handed_back.lease_expires_at is None
    assert [step["n"] for step in checkpoint["steps"]] == [1]
    assert checkpoint["events"][-1]["kind"] == "handed_back"
    assert reply is not None
    assert reply["content"] == "echo: are you still there?"
    assert ConversationEntry.objects.filter(thread_id=thread_id, sender="agent").count() == 1
    thread = Thread.objects.get(pk=thread_id)
    assert (thread.state, thread.claim_count) == ("completed", 2)
    # Step 1 ran once, before the stop; the next start resumed at step 2 (the abandoned call).
    steps = _checkpoint("alice", thread_id)["steps"]
    assert [step["n"] for step in steps] == [1, 2]
    assert datetime.datetime.fromisoformat(steps[0]["ended_at"]) < stopped_wall
    assert datetime.datetime.fromisoformat(steps[1]["started_at"]) > stopped_wall
    assert [call["step"] for call in thread.model_calls] == [1, 2]


@embedded_only
def test_a_second_signal_kills_the_children_and_still_stops_the_embedded_database(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    var_dir = Path(tmp_path_factory.mktemp("fs"))
    folder = var_dir / "pgdata"
    env = embedded_serve_env(
        var_dir, {"THREAD_RUNNER": "tests.operations.test_serve_stop.run_past_the_stop"}
    )
    manage(env, "migrate", "--noinput", "-v", "0")
    key = manage(env, "create_api_key", "alice").strip().splitlines()[-1]
    started: list[psutil.Process] = []
    try:
        with serve_process(env) as serve:
            status, sent = post_message(serve.base_url, key, "take your time")
            assert status == 202, sent
            path = f"/api/v1/threads/{sent['thread_id']}"
            # Claimed: its runner sleeps past the stop.
            _wait_for(lambda: call(serve.base_url, key, "GET", path)[1]["state"] == "running")
            started = serve.descendants()
            serve.process.send_signal(signal.SIGTERM)
            # The turn worker waits for a runner that ignores the stop, and serve for it.
            time.sleep(1.5)
            still_stopping = serve.process.poll() is None
            forced_in = _stop(serve, timeout=10)
            left = processes_alive(started)
            postgres_left = postgres_processes(folder)
            output = serve.output()
        # The killed turn worker's turn was given back by serve before the database stopped.
        seen = manage(
            env,
            "shell",
            "-c",
            "from conversations.models import Thread; "
            f"t = Thread.objects.get(pk='{sent['thread_id']}'); "
            "print(t.state, repr(t.lease_owner), t.claim_count)",
        )
        postgres_after_the_shell = postgres_processes(folder)
    finally:
        processes_kill(started)
        postgres_stop(folder)

    print(f"second SIGTERM: serve stopped {forced_in:.1f} s after it")
    assert still_stopping
    assert forced_in < UNDER_GRACE_SECONDS, output
    assert "Forced: killing turns" in output
    assert left == []
    assert postgres_left == [], output
    assert seen.strip().splitlines()[-1] == "created '' 1"
    assert postgres_after_the_shell == []


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
            # Ready may still be answered before serve notices the death, and postmaster.pid
            # names the dead postmaster until a new one writes it: wait for the new one.
            _wait_for(lambda: postmaster_pid(folder) not in (None, killed), seconds=60)
            restarted = postmaster_pid(folder)
            wait_until_ready(serve.base_url, timeout=60)
            # Reaped, not a zombie any more (init may take its time here), as on most hosts.
            _wait_for(lambda: not psutil.pid_exists(killed))
            started = serve.descendants()

            stopped_in = _stop(serve, timeout=30)
            left = processes_alive(started)
            postgres_left = postgres_processes(folder)
            output = serve.output()
    finally:
        processes_kill(started)
        postgres_stop(folder)

    print(f"serve stopped in {stopped_in:.1f} s after restarting its postmaster")
    assert restarted is not None
    assert restarted != killed
    assert "embedded PostgreSQL had died" in output
    assert "Embedded PostgreSQL stopped." in output
    assert stopped_in < UNDER_GRACE_SECONDS
    assert left == []
    assert postgres_left == [], output


@embedded_only
def test_a_sigkilled_serve_takes_its_children_and_the_embedded_database_with_it(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """serve cannot stop anything once SIGKILLed: its children notice (the parent-death signal)
    and stop as on a SIGTERM, the last of them stopping the embedded PostgreSQL, so the next
    `make run` finds no web process still on its port and no orphan postmaster."""
    var_dir = Path(tmp_path_factory.mktemp("sk"))
    folder = var_dir / "pgdata"
    env = embedded_serve_env(var_dir, ECHO)
    manage(env, "migrate", "--noinput", "-v", "0")
    started: list[psutil.Process] = []
    try:
        with serve_process(env) as serve:
            started = serve.descendants()
            assert started
            serve.process.send_signal(signal.SIGKILL)
            serve.process.wait(timeout=10)
            killed_at = time.monotonic()
            _wait_for(
                lambda: not processes_alive(started) and not postgres_processes(folder),
                seconds=UNDER_GRACE_SECONDS,
            )
            gone_in = time.monotonic() - killed_at
    finally:
        processes_kill(started)
        postgres_stop(folder)

    print(f"serve SIGKILLed: its children and the database gone {gone_in:.1f} s later")
    assert gone_in < UNDER_GRACE_SECONDS
