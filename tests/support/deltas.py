"""A real listener on ``ironclaw_deltas``: its own autocommit psycopg connection, LISTENing from a
thread of its own, which records every notification with the time it arrived."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from core.notify import DELTAS_CHANNEL
from tests.support.locks import psycopg_params


@dataclass(frozen=True)
class Delta:
    conversation_id: str
    thread_id: str
    body: dict[str, Any]
    payload: str
    received_at: float  # time.time()

    @property
    def text(self) -> str:
        return str(self.body["text"])


@dataclass
class DeltaListener:
    received: list[Delta] = field(default_factory=list)
    _changed: threading.Condition = field(default_factory=threading.Condition)

    def _add(self, payload: str) -> None:
        conversation_id, thread_id, body = payload.split(" ", 2)
        delta = Delta(conversation_id, thread_id, json.loads(body), payload, time.time())
        with self._changed:
            self.received.append(delta)
            self._changed.notify_all()

    def wait_for(self, done: Callable[[list[Delta]], bool], timeout: float = 10.0) -> list[Delta]:
        """The deltas so far, once ``done`` says they are complete (or fail after ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done(self.received):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"deltas incomplete: {self.received!r}")
                self._changed.wait(remaining)
            return list(self.received)

    def settle(self, quiet: float = 0.3) -> list[Delta]:
        """The deltas once none has come for ``quiet`` seconds."""
        with self._changed:
            while True:
                count = len(self.received)
                self._changed.wait(quiet)
                if len(self.received) == count:
                    return list(self.received)


def applied(deltas: list[Delta]) -> dict[tuple[str, int], str]:
    """Each step's text as a listener rebuilds it: ``buf = buf[:offset] + text``."""
    buffers: dict[tuple[str, int], str] = {}
    for delta in deltas:
        key = (delta.thread_id, delta.body["step"])
        buffers[key] = buffers.get(key, "")[: delta.body["offset"]] + delta.text
    return buffers


@contextmanager
def deltas_listener() -> Iterator[DeltaListener]:
    listener = DeltaListener()
    stop = threading.Event()
    with psycopg.connect(**psycopg_params(), autocommit=True) as connection:
        connection.execute(f"LISTEN {DELTAS_CHANNEL}")

        def listen() -> None:
            while not stop.is_set():
                for notice in connection.notifies(timeout=0.1):
                    listener._add(notice.payload)

        thread = threading.Thread(target=listen, name="deltas-listener", daemon=True)
        thread.start()
        try:
            yield listener
        finally:
            stop.set()
            thread.join(timeout=5)
