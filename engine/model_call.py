"""One model call of a turn, on a thread of its own (kept for later calls), its text published
as it is produced."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from django.db import connection

from engine.deltas import DeltaPublisher
from engine.model_clients import ChatMessage, ModelClient, ModelError, ModelReply

# Idle call threads kept for the next calls; more than this many idle at once end.
IDLE_CALL_THREADS = 64


class _CallThreads:
    """Daemon threads for model calls, kept between calls: handing a call to an idle one costs
    half what starting a thread does (a turn makes one call a step). A call that is abandoned
    keeps its thread until it returns; the next call starts a new one if none is idle. Daemon,
    as a thread of its own was: a hung call never holds up the process's exit."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue[tuple[str, Callable[[], None]]]] = []

    def run(self, name: str, call: Callable[[], None]) -> None:
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._serve, args=(inbox,), name=name, daemon=True).start()
        inbox.put((name, call))

    def _serve(self, inbox: queue.SimpleQueue[tuple[str, Callable[[], None]]]) -> None:
        while True:
            name, call = inbox.get()
            threading.current_thread().name = name
            call()  # never raises: model_call's call catches everything
            # A connection the call took goes back to the pool, as when its thread ended.
            connection.close()
            # Idle, the thread keeps nothing of the call (its messages, its reply) alive.
            del name, call
            with self._lock:
                if len(self._idle) >= IDLE_CALL_THREADS:
                    return
                self._idle.append(inbox)


_call_threads = _CallThreads()


def model_call(
    model: ModelClient,
    messages: list[ChatMessage],
    *,
    step: int,
    deltas: DeltaPublisher,
    wake: threading.Event,
    check_interrupts: Callable[[], None],
    deadline: float,
    name: str,
) -> ModelReply:
    """Run the call in its own thread, so an interrupt, the turn timeout or the worker's stop
    (``check_interrupts`` raises; whatever should end the wait sets ``wake``) ends the turn at
    once instead of after the call. The call's own timeout bounds the thread, which writes
    nothing: its answer, if it comes, is dropped, and so is its text.

    ``deltas`` gets the text as the model produces it, on the call's thread, which also sends the
    last text once the call has answered, before the turn checkpoints the step; a call that
    fails or is abandoned publishes nothing more."""
    result: dict[str, Any] = {}
    wake.clear()
    on_text = deltas.feed if deltas.enabled else None

    def call() -> None:
        try:
            result["reply"] = model.complete(messages, step=step, on_text=on_text)
            # From this thread too: the turn's own publishes nothing (a step stays one statement
            # there), and it goes on to checkpoint the step only once the last text is out.
            deltas.close()
        except BaseException as error:
            deltas.abandon()
            result["error"] = error
        finally:
            result["done"] = True
            wake.set()

    _call_threads.run(name, call)
    try:
        while not result.get("done"):
            check_interrupts()
            wake.wait(timeout=max(0.0, deadline - time.time()))
            wake.clear()
    except BaseException:
        deltas.abandon()
        raise
    if "error" in result:
        error = result["error"]
        if isinstance(error, ModelError):
            raise error
        raise ModelError(f"{type(error).__name__}: {error}") from error
    reply: ModelReply = result["reply"]
    return reply
