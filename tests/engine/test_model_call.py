"""A turn's model call runs on a thread of its own, kept for the next calls."""

from __future__ import annotations

import gc
import threading
import time
import uuid
import weakref
from collections.abc import Callable

import pytest

from engine.deltas import DeltaPublisher
from engine.model_call import model_call
from engine.model_clients import ChatMessage, ModelReply, OnText


class _ThreadModel:
    """Answers at once, or when the call's text is "hold", says it has started (``started``)
    and answers only once ``release`` is set; notes the thread (and its name then) of every call."""

    name = "thread-model"

    def __init__(self) -> None:
        self.calls: list[tuple[threading.Thread, str]] = []
        self.started = threading.Event()
        self.release = threading.Event()

    def complete(
        self, messages: list[ChatMessage], *, step: int, on_text: OnText | None = None
    ) -> ModelReply:
        current = threading.current_thread()
        self.calls.append((current, current.name))
        if messages[-1]["content"] == "hold":
            self.started.set()
            self.release.wait(10)
        return ModelReply(text=f"step {step}")


def _call(
    model: _ThreadModel,
    text: str,
    *,
    name: str,
    wake: threading.Event | None = None,
    check: Callable[[], None] = lambda: None,
) -> ModelReply:
    return model_call(
        model,
        [{"role": "user", "content": text}],
        step=1,
        deltas=DeltaPublisher(thread_id=uuid.uuid4(), conversation_id=None, step=1, interval_ms=0),
        wake=wake or threading.Event(),
        check_interrupts=check,
        deadline=time.time() + 10,
        name=name,
    )


def test_calls_one_after_another_share_a_thread_named_for_each_call() -> None:
    model = _ThreadModel()

    first = _call(model, "hi", name="model-first")
    second = _call(model, "hi", name="model-second")

    assert (first.text, second.text) == ("step 1", "step 1")
    (thread_1, name_1), (thread_2, name_2) = model.calls
    assert thread_1 is thread_2 is not threading.current_thread()
    assert (name_1, name_2) == ("model-first", "model-second")


class _Interrupted(Exception):
    pass


def test_an_abandoned_call_keeps_its_thread_and_the_next_call_gets_another() -> None:
    model = _ThreadModel()
    wake = threading.Event()

    def interrupt_once_started() -> None:
        if model.started.is_set():
            raise _Interrupted

        # What an interrupt does: wake the turn, which looks again and ends the call.
        def wake_once_started() -> None:
            model.started.wait(5)
            wake.set()

        threading.Thread(target=wake_once_started, daemon=True).start()

    try:
        with pytest.raises(_Interrupted):
            _call(model, "hold", name="model-held", wake=wake, check=interrupt_once_started)
        started = time.monotonic()
        reply = _call(model, "hi", name="model-next")
        took = time.monotonic() - started
    finally:
        model.release.set()

    assert reply.text == "step 1"
    assert took < 5  # not queued behind the held call
    (held_thread, held_name), (next_thread, next_name) = model.calls
    assert next_thread is not held_thread
    assert (held_name, next_name) == ("model-held", "model-next")


def test_an_idle_call_thread_keeps_nothing_of_its_last_call() -> None:
    model = _ThreadModel()
    _call(model, "hi", name="model-once")
    held = weakref.ref(model)
    del model
    # The call's thread puts itself back in the idle list just after the call has answered.
    deadline = time.monotonic() + 5
    while held() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)

    assert held() is None
