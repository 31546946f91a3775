"""One model call of a turn, on a thread of its own, its text published as it is produced."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from engine.deltas import DeltaPublisher
from engine.model_clients import ChatMessage, ModelClient, ModelError, ModelReply


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

    threading.Thread(target=call, name=name, daemon=True).start()
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
