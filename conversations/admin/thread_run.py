"""What a thread's page knows of a run in progress, from the thread's events.

A thread's ``model_calls`` and usage are written with its outcome, so a running thread's own row
says nothing of the steps it has taken. Its events do: the engine's checkpoint of each model step
is a ``step`` event (its data: the step's ``n``, ``started_at``, ``ended_at``, ``model_ms`` and
tokens), and the claim that started the run is at ``claimed_at``. One query reads the latest step
events of the run (by the thread's ``(thread, seq)`` index) with their count and model time, and
the call in flight started when the latest of them (or the claim) was written. Nothing is added
to the engine's path.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, F, FloatField, Func, Sum, Window

from conversations.models import Thread, ThreadEvent, ThreadEventKind, ThreadState

# The latest step events a thread's page reads (their count and model time cover them all).
RUN_STEPS_SHOWN = 20


class _JsonNumber(Func):
    """``data -> key`` as a float when it is a JSON number, else NULL (never a cast error)."""

    output_field = FloatField()
    template = (
        "CASE WHEN jsonb_typeof(%(expressions)s -> %(key)s) = 'number'"
        " THEN (%(expressions)s ->> %(key)s)::float END"
    )

    def __init__(self, expression: Any, key: str) -> None:
        if not key.isidentifier():
            raise ValueError(key)
        super().__init__(expression, key=f"'{key}'")


@dataclass(frozen=True)
class RunSteps:
    """The step events of the run in progress (or, for an ended thread that reported no model
    calls, of all its runs): the latest ``RUN_STEPS_SHOWN``, oldest first, and their totals."""

    # As ``Thread.model_calls`` holds them: {"step", "started_at", "ended_at"}.
    calls: list[dict[str, Any]]
    count: int
    model_ms: float
    latest_at: datetime.datetime | None
    latest_final: bool


_NO_STEPS = RunSteps(calls=[], count=0, model_ms=0.0, latest_at=None, latest_final=False)


def run_steps(thread: Thread) -> RunSteps | None:
    """The steps a running thread took in this run, or an ended one's when it reported no model
    calls (an operator stopped it, its worker died); None when its row says it all (no query).
    Read once per thread object: the page's sections share it."""
    cached = vars(thread).get("_admin_run_steps")
    if isinstance(cached, RunSteps):
        return cached
    running = thread.state == ThreadState.RUNNING
    if not running and (thread.model_calls or not thread.claim_count):
        return None
    events = ThreadEvent.objects.filter(thread_id=thread.pk, kind=ThreadEventKind.STEP)
    if running and thread.claimed_at is not None:
        # The claim's event is written after claimed_at (the same clock, later in its statement).
        events = events.filter(created_at__gte=thread.claimed_at)
    rows = list(
        events.annotate(
            total=Window(Count("pk")),
            total_ms=Window(Sum(_JsonNumber(F("data"), "model_ms"))),
        )
        .order_by("-seq")
        .values_list("data", "created_at", "total", "total_ms")[:RUN_STEPS_SHOWN]
    )
    steps = _NO_STEPS
    if rows:
        latest_data = rows[0][0] if isinstance(rows[0][0], dict) else {}
        steps = RunSteps(
            calls=[_call(data) for data, *_ in reversed(rows)],
            count=rows[0][2],
            model_ms=rows[0][3] or 0.0,
            latest_at=rows[0][1],
            latest_final=bool(latest_data.get("final")),
        )
    vars(thread)["_admin_run_steps"] = steps
    return steps


def _call(data: Any) -> dict[str, Any]:
    data = data if isinstance(data, dict) else {}
    return {
        "step": data.get("n", ""),
        "started_at": data.get("started_at"),
        "ended_at": data.get("ended_at"),
    }
