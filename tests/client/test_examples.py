"""The example engine and bridge as real processes beside a live server whose threads wait for an
external engine: they speak only HTTP, through the client."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime
from types import ModuleType

import pytest
from ironclaw_client import Client

from accounts.services import CreatedApiKey
from conversations.models import Thread
from tests.client.conftest import TEST_RETRY
from tests.support.chat_server import chat_server
from tests.support.deltas import applied, deltas_listener
from tests.support.servers import BASE_DIR
from workspace.models import Document

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = BASE_DIR / "examples"
CLIENT_SOURCE = str(BASE_DIR / "clients" / "python" / "src")


def _env(**values: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": CLIENT_SOURCE, **values}


@contextmanager
def external_engine(live_url: str, service_key: str, **env: str) -> Iterator[subprocess.Popen]:
    log = tempfile.TemporaryFile("w+")  # noqa: SIM115 (closed in the finally below)
    process = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "external_engine.py"), "--poll-seconds", "1"],
        env=_env(IRONCLAW_URL=live_url, IRONCLAW_API_KEY=service_key, **env),
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        # SIGTERM, never a bare kill: a killed engine's threads/next long-poll goes on in the
        # server and may claim the next test's thread for a worker that is gone.
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.seek(0)
        output = log.read()
        log.close()
        # Shown by pytest when the test fails.
        print(output)


def test_the_external_engine_answers_ten_tenants_in_parallel(
    live_url: str, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    service_key = make_api_key(service=True).raw_key
    users = [f"tenant-{n}" for n in range(10)]
    clients = {
        user: Client(live_url, make_api_key(user).raw_key, retry=TEST_RETRY) for user in users
    }

    def converse(user: str) -> tuple[dict, dict]:
        sent = clients[user].send_message("web", f"hello from {user}")
        reply = clients[user].wait_for_reply(
            sent["conversation_id"], after_seq=sent["seq"], timeout=60
        )
        return dict(sent), dict(reply)

    with (
        deltas_listener() as listener,
        external_engine(
            live_url,
            service_key,
            ENGINE_MODEL="echo",
            ENGINE_ECHO_LATENCY_MS="1000",
            ENGINE_CONCURRENCY="10",
        ) as engine,
    ):
        with ThreadPoolExecutor(len(users)) as pool:
            results = dict(zip(users, pool.map(converse, users), strict=True))
        engine.send_signal(signal.SIGTERM)
        exit_code = engine.wait(timeout=30)
        deltas = listener.settle()

    assert exit_code == 0
    # Each turn's text went out while the model thought, the last delta being the whole reply.
    assert applied(deltas) == {
        (sent["thread_id"], 1): reply["content"] for sent, reply in results.values()
    }
    assert 2 * len(users) <= len(deltas) <= 7 * len(users)
    threads = {
        user: Thread.objects.get(pk=sent["thread_id"]) for user, (sent, _) in results.items()
    }
    for user, (sent, reply) in results.items():
        thread = threads[user]
        assert reply["content"] == f"echo: hello from {user}"
        assert reply["thread_id"] == sent["thread_id"]
        assert thread.user_id == user
        assert thread.state == "completed"
        assert (thread.step_count, thread.model_time_ms >= 1000) == (1, True)
        assert thread.input_tokens > 0
        assert thread.output_tokens > 0
        checkpoint = Document.objects.get(
            user_id=user, path=f"engine/.runtime/threads/{sent['thread_id']}.json"
        )
        assert f'"thread_id": "{sent["thread_id"]}"' in checkpoint.content
    # Ten one-second turns, one after another, would take ten seconds.
    started = min(_aware(thread.claimed_at) for thread in threads.values())
    finished = max(_aware(thread.finished_at) for thread in threads.values())
    assert (finished - started).total_seconds() < 5
    for client in clients.values():
        client.close()


def _aware(moment: datetime | None) -> datetime:
    assert moment is not None
    return moment


def test_the_bridge_prints_the_agents_replies_to_two_piped_lines(
    live_url: str, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    service_key = make_api_key(service=True).raw_key
    user_key = make_api_key("alice").raw_key

    with external_engine(live_url, service_key, ENGINE_MODEL="echo"):
        started = time.monotonic()
        bridge = subprocess.run(
            [sys.executable, str(EXAMPLES / "bridge.py"), "--reply-timeout", "30"],
            input="hello\nworld\n",
            env=_env(IRONCLAW_URL=live_url, IRONCLAW_API_KEY=user_key),
            capture_output=True,
            text=True,
            timeout=90,
        )

    assert bridge.returncode == 0, bridge.stderr
    assert bridge.stdout.splitlines() == ["echo: hello", "echo: world"]
    assert time.monotonic() - started < 60


def test_the_bridge_prints_a_reply_as_it_streams_or_whole_with_no_stream(
    live_url: str, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    service_key = make_api_key(service=True).raw_key
    user_key = make_api_key("alice").raw_key
    env = _env(IRONCLAW_URL=live_url, IRONCLAW_API_KEY=user_key)

    with external_engine(live_url, service_key, ENGINE_MODEL="echo", ENGINE_ECHO_LATENCY_MS="1000"):
        bridge = subprocess.Popen(
            [sys.executable, "-u", str(EXAMPLES / "bridge.py"), "--reply-timeout", "30"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        assert bridge.stdin is not None
        assert bridge.stdout is not None
        bridge.stdin.write(b"hello streams\n")
        bridge.stdin.close()
        # What the bridge wrote, in the pieces it wrote them (it flushes after each delta).
        pieces = []
        while piece := os.read(bridge.stdout.fileno(), 1024):
            pieces.append(piece.decode())
        streamed_exit = bridge.wait(timeout=30)
        whole = subprocess.run(
            [sys.executable, str(EXAMPLES / "bridge.py"), "--no-stream"],
            input="hello polls\n",
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert streamed_exit == 0
    assert "".join(pieces) == "echo: hello streams\n"
    # The reply came in pieces, its beginning before its end.
    assert len(pieces) >= 3
    assert "\n" not in pieces[0]
    assert whole.returncode == 0, whole.stderr
    assert whole.stdout == "echo: hello polls\n"


def test_the_external_engine_takes_a_message_sent_mid_turn_as_a_further_step_of_an_openai_model(
    live_url: str, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    service_key = make_api_key(service=True).raw_key
    alice = Client(live_url, make_api_key("alice").raw_key, retry=TEST_RETRY)

    with (
        chat_server() as model,
        external_engine(
            live_url,
            service_key,
            ENGINE_MODEL="openai",
            ENGINE_BASE_URL=model.url,
            ENGINE_MODEL_NAME="test-model",
        ),
    ):
        model.gate.clear()
        first = alice.send_message("web", "m1")
        model.wait_for_requests(1)
        second = alice.send_message("web", "m2")
        model.gate.set()
        reply = alice.wait_for_reply(first["conversation_id"], after_seq=second["seq"], timeout=30)
    thread = Thread.objects.get(pk=first["thread_id"])
    alice.close()

    assert (second["action"], second["thread_id"]) == ("injected", first["thread_id"])
    assert reply["content"] == "reply to: m1\n\nreply to: m2"
    assert model.last_user_messages() == ["m1", "m2"]
    assert (thread.step_count, thread.input_tokens, thread.output_tokens) == (2, 22, 14)
    assert {request["model"] for request in model.requests} == {"test-model"}


@pytest.mark.parametrize("script", ["external_engine.py", "bridge.py"])
def test_the_examples_explain_their_configuration(script: str) -> None:
    shown = subprocess.run(
        [sys.executable, str(EXAMPLES / script), "--help"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert shown.returncode == 0
    assert "IRONCLAW_URL" in shown.stdout
    assert "IRONCLAW_API_KEY" in shown.stdout


def _example_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_the_engine_s_history_leaves_out_messages_still_in_the_inbox(
    live_url: str, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    engine_module = _example_module("external_engine")
    engine_client = Client(live_url, make_api_key(service=True).raw_key, retry=TEST_RETRY)
    alice = Client(live_url, make_api_key("alice").raw_key, retry=TEST_RETRY)
    first = alice.send_message("web", "m1")
    claimed = engine_client.next_thread("engine-1", wait_seconds=5)
    assert claimed is not None
    # Sent after the claim, before the engine reads the history: it waits in the inbox, and the
    # engine takes it as a step of its own after the first model call.
    second = alice.send_message("web", "m2")
    engine = engine_module.Engine(
        engine_client,
        engine_module.EchoModel(latency_ms=0),
        concurrency=1,
        max_iterations=4,
        poll_seconds=1,
        heartbeat_seconds=1,
        lease_seconds=30,
    )

    history = engine._history(
        engine_client.for_user("alice"), first["conversation_id"], claimed["thread"]["goal"]
    )
    alice.close()
    engine_client.close()

    assert second["action"] == "injected"
    assert [message["content"] for message in history if message["role"] == "user"] == ["m1"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ENGINE_MODEL": "nope"}, "ENGINE_MODEL must be echo or openai"),
        ({"ENGINE_CONCURRENCY": "0"}, "ENGINE_CONCURRENCY must be at least 1"),
        ({"ENGINE_ECHO_LATENCY_MS": "abc"}, "ENGINE_ECHO_LATENCY_MS must be a whole number"),
        ({"IRONCLAW_API_KEY": "ick_not_a_key"}, "cannot use"),
    ],
)
def test_the_engine_refuses_a_bad_configuration_in_one_line(
    live_url: str,
    make_api_key: Callable[..., CreatedApiKey],
    env: dict[str, str],
    message: str,
) -> None:
    settings = {"IRONCLAW_URL": live_url, "IRONCLAW_API_KEY": make_api_key(service=True).raw_key}
    refused = subprocess.run(
        [sys.executable, str(EXAMPLES / "external_engine.py")],
        env=_env(**{**settings, **env}),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert refused.returncode == 2
    assert message in refused.stderr
    assert "Traceback" not in refused.stderr
