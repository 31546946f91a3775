from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from django.conf import settings
from django.db import connection

from tests.conversations.concurrency import assert_exactly_one_thread_took_every_message
from tests.support.servers import database_url

pytestmark = pytest.mark.django_db(transaction=True)

CONCURRENT_PROCESSES = 20


def test_concurrent_first_messages_from_processes_spawn_exactly_one_thread() -> None:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "ironclaw_site.settings",
        "DATABASE_URL": database_url(connection.settings_dict),
        "DATABASE_POOL_SIZE": "2",
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "text",
        # The race is about exactly-once, not timeouts: give slow CI machines room.
        "CONVERSATION_LOCK_TIMEOUT_MS": "20000",
    }
    contents = [f"process message {n}" for n in range(CONCURRENT_PROCESSES)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.conversations.message_sender", "alice", "web", content],
            cwd=settings.BASE_DIR,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for content in contents
    ]
    try:
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            assert line == "ready", process.stderr.read() if process.stderr else line
        released = time.monotonic()
        for process in processes:  # the cross-process barrier: everyone is connected and waiting
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        outputs = [process.communicate(timeout=60) for process in processes]
        elapsed = time.monotonic() - released
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    assert [process.returncode for process in processes] == [0] * CONCURRENT_PROCESSES, outputs
    results = [json.loads(stdout.strip().splitlines()[-1]) for stdout, _ in outputs]
    slowest = max(result["elapsed_ms"] for result in results)
    print(
        f"{CONCURRENT_PROCESSES} processes: all done {elapsed * 1000:.0f} ms after release, "
        f"slowest message_handle {slowest:.0f} ms"
    )
    assert len({result["conversation_id"] for result in results}) == 1
    assert len({result["seq"] for result in results}) == CONCURRENT_PROCESSES
    assert_exactly_one_thread_took_every_message(
        user_id="alice",
        channel="web",
        contents=contents,
        actions=[result["action"] for result in results],
    )
