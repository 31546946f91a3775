"""`manage.py serve` heals itself: real processes killed with SIGKILL, a real database outage
through a TCP proxy, and the embedded PostgreSQL's postmaster killed under a private data folder.
Each test ends by checking that the echo agent still answers a new message."""

from __future__ import annotations

import datetime
import json
import os
import signal
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
    postgres_stop,
    postmaster_pid,
    send_and_await_reply,
    serve_process,
    wait_until_ready,
)
from tests.support.servers import TcpProxy, database_url, http_request
from workspace.models import Document

pytestmark = pytest.mark.django_db(transaction=True)

ECHO = {"ENGINE_MODEL": "echo", "ENGINE_ECHO_LATENCY_MS": "50"}
# A turn of three model calls of a second each: long enough to kill its worker in the middle.
SLOW_ECHO = {"ENGINE_MODEL": "echo", "ENGINE_ECHO_LATENCY_MS": "1000", "ENGINE_ECHO_STEPS": "3"}


def _upstream() -> str | tuple[str, int]:
    settings_dict = connection.settings_dict
    host, port = settings_dict["HOST"] or "localhost", int(settings_dict["PORT"] or 5432)
    return f"{host}/.s.PGSQL.{port}" if host.startswith("/") else (host, port)


def _wait_for_new_child(
    serve: ServeProcess, marker: str, old_pid: int, timeout: float = 30
) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            child = serve.child(marker)
        except LookupError:
            child = None
        if child is not None and child.pid != old_pid:
            return child
        time.sleep(0.1)
    raise AssertionError(f"{marker} was not started again within {timeout} s:\n{serve.output()}")


def test_serve_restarts_a_sigkilled_turn_worker_and_the_api_stays_up(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key("alice").raw_key
    env = {"DATABASE_URL": database_url(connection.settings_dict), **ECHO}

    with serve_process(env) as serve:
        turns = serve.child("--name turns")
        web = serve.child("serve_web")
        killed_at = time.monotonic()
        turns.send_signal(signal.SIGKILL)
        health_after_kill = http_request(f"{serve.base_url}/healthz")
        new_turns = _wait_for_new_child(serve, "--name turns", turns.pid)
        restarted_after = time.monotonic() - killed_at
        _, reply = send_and_await_reply(serve.base_url, key, "after the kill")
        web_after = serve.child("serve_web")
        still_serving = serve.process.poll() is None
        output = serve.output()

    print(f"turn worker SIGKILL: running again after {restarted_after:.1f} s")
    assert health_after_kill.status == 200
    assert new_turns.pid != turns.pid
    assert restarted_after < 5
    assert reply["content"] == "echo: after the kill"
    assert web_after.pid == web.pid
    assert still_serving
    assert "turns killed by SIGKILL" in output


def _checkpoint_steps(user_id: str, thread_id: str) -> list[dict[str, Any]]:
    content = (
        Document.objects.filter(user_id=user_id, path=thread_checkpoint_path(thread_id))
        .values_list("content", flat=True)
        .first()
    )
    return list(json.loads(content)["steps"]) if content else []


def _wait_for(condition: Callable[[], bool], *, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def test_a_turn_whose_worker_serve_saw_die_is_answered_once_within_ten_seconds(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key("alice").raw_key
    # Nothing but the replacement worker can give the turn back this soon: the lease lasts 30 s
    # and the background worker sweeps expired leases once a minute.
    env = {"DATABASE_URL": database_url(connection.settings_dict), **SLOW_ECHO}

    with serve_process(env) as serve:
        status, sent = post_message(serve.base_url, key, "are you still there?")
        assert status == 202, sent
        thread_id = sent["thread_id"]
        # Step 1 is checkpointed and step 2 is with the model when the worker dies.
        _wait_for(lambda: len(_checkpoint_steps("alice", thread_id)) == 1)
        serve.child("--name turns").send_signal(signal.SIGKILL)
        killed_at, killed_wall = time.monotonic(), timezone.now()

        def fetch(path: str, wait: int) -> Page:
            status, page = call(serve.base_url, key, "GET", path)
            assert status == 200, page
            return dict(page)

        reply = await_reply(fetch, sent, timeout=30)
        answered_after = time.monotonic() - killed_at
        # Longer than a step: a second run of the turn would have answered again by now.
        time.sleep(1.5)
        output = serve.output()

    print(f"turn worker SIGKILL mid-turn: answered {answered_after:.1f} s after the kill")
    assert reply is not None
    assert reply["content"] == "echo: are you still there?"
    assert answered_after <= 10
    assert "turns killed by SIGKILL" in output
    assert ConversationEntry.objects.filter(thread_id=thread_id, sender="agent").count() == 1
    thread = Thread.objects.get(pk=thread_id)
    assert (thread.state, thread.claim_count) == ("completed", 2)
    # Step 1 ran once, before the kill; the replacement resumed at step 2 (the call in flight).
    steps = _checkpoint_steps("alice", thread_id)
    assert [step["n"] for step in steps] == [1, 2, 3]
    assert datetime.datetime.fromisoformat(steps[0]["ended_at"]) < killed_wall
    assert all(datetime.datetime.fromisoformat(s["started_at"]) > killed_wall for s in steps[1:])
    assert [call["step"] for call in thread.model_calls] == [1, 2, 3]


def test_serve_kills_and_restarts_a_web_process_that_is_alive_but_not_serving(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key("alice").raw_key
    env = {"DATABASE_URL": database_url(connection.settings_dict), "WEB_HANG_SECONDS": "3", **ECHO}

    with serve_process(env) as serve:
        web = serve.child("serve_web")
        # A healthy web process keeps showing it serves: nothing is killed past the limit.
        time.sleep(5)
        kept = serve.child("serve_web")
        # Frozen: its socket still takes its share of connections, none of them answered.
        web.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        new_web = _wait_for_new_child(serve, "serve_web", web.pid, timeout=30)
        replaced_after = time.monotonic() - frozen_at
        wait_until_ready(serve.base_url, timeout=30)
        _, reply = send_and_await_reply(serve.base_url, key, "after the freeze")
        output = serve.output()

    print(f"frozen web process replaced after {replaced_after:.1f} s")
    assert kept.pid == web.pid
    assert new_web.pid != web.pid
    assert reply["content"] == "echo: after the freeze"
    assert "web1 has not served for" in output
    assert "web1 killed by SIGKILL" in output


def test_serve_rides_out_a_two_second_database_outage(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    key = make_api_key("alice").raw_key
    proxy = TcpProxy(_upstream())
    proxy.start()
    env = {
        "DATABASE_URL": database_url(connection.settings_dict, host="127.0.0.1", port=proxy.port),
        "DATABASE_POOL_TIMEOUT": "2",
        "DATABASE_CONNECT_TIMEOUT": "2",
        **ECHO,
    }
    try:
        with serve_process(env) as serve:
            _, before = send_and_await_reply(serve.base_url, key, "before")
            pids = {name: serve.child(name).pid for name in ("serve_web", "turns", "background")}

            proxy.stop()
            time.sleep(2)
            proxy.start()
            restored_at = time.monotonic()
            ready_after = wait_until_ready(serve.base_url, timeout=30)
            _, after = send_and_await_reply(serve.base_url, key, "after the outage")
            answered_after = time.monotonic() - restored_at
            pids_after = {
                name: serve.child(name).pid for name in ("serve_web", "turns", "background")
            }
            still_serving = serve.process.poll() is None
    finally:
        proxy.stop()

    print(f"2 s outage: ready {ready_after:.1f} s, answered {answered_after:.1f} s after it")
    assert before["content"] == "echo: before"
    assert after["content"] == "echo: after the outage"
    assert ready_after < 15
    assert answered_after < 20
    # The workers reconnected in place: nothing had to exit.
    assert pids_after == pids
    assert still_serving


@pytest.mark.skipif(
    bool(os.environ.get("DATABASE_URL")), reason="DATABASE_URL is set: no embedded database"
)
def test_serve_restarts_a_sigkilled_embedded_postgres_without_losing_commits(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Short: Unix socket paths are limited to about 100 bytes.
    var_dir = Path(tmp_path_factory.mktemp("sv"))
    env = embedded_serve_env(var_dir, ECHO)
    manage(env, "migrate", "--noinput", "-v", "0")
    key = manage(env, "create_api_key", "alice").strip().splitlines()[-1]
    try:
        with serve_process(env) as serve:
            first, _ = send_and_await_reply(serve.base_url, key, "before the crash")
            postmaster = psutil.Process(
                int((var_dir / "pgdata" / "postmaster.pid").read_text().split("\n", 1)[0])
            )
            killed_at = time.monotonic()
            postmaster.send_signal(signal.SIGKILL)
            # Ready may still be answered before serve notices the death (a pooled connection's
            # backend outlives its postmaster for a moment), and postmaster.pid names the dead
            # postmaster until a new one writes it: wait for the new one.
            _wait_for(
                lambda: postmaster_pid(var_dir / "pgdata") not in (None, postmaster.pid),
                seconds=60,
            )
            ready_after = wait_until_ready(serve.base_url, timeout=60)
            recovered_in = time.monotonic() - killed_at
            status, entries = call(
                serve.base_url,
                key,
                "GET",
                f"/api/v1/conversations/{first['conversation_id']}/entries?after_seq=0",
            )
            _, reply = send_and_await_reply(serve.base_url, key, "after the crash")
            new_postmaster = int(
                (var_dir / "pgdata" / "postmaster.pid").read_text().split("\n", 1)[0]
            )
            output = serve.output()
    finally:
        postgres_stop(var_dir / "pgdata")

    assert new_postmaster != postmaster.pid
    assert "embedded PostgreSQL had died" in output
    print(f"embedded postgres SIGKILL: ready again after {recovered_in:.1f} s")
    assert ready_after < 30
    assert recovered_in < 30
    assert status == 200
    conversation = [
        (entry["sender"], entry["content"])
        for entry in entries["results"]
        if entry["sender"] in ("user", "agent")
    ]
    assert conversation == [
        ("user", "before the crash"),
        ("agent", "echo: before the crash"),
    ]
    assert reply["content"] == "echo: after the crash"
