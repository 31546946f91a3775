"""A thread's page while it runs (the model call in flight, the steps so far, from the thread's
step events) and after it ended (what went wrong, in a box on top of its outcome)."""

from __future__ import annotations

import datetime
import re
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from conversations.models import Thread, ThreadEvent
from conversations.services import (
    MessageResult,
    ThreadOutcome,
    message_handle,
    thread_claim,
    thread_outcome_record,
    thread_stop,
)
from engine.checkpoint import TurnState, checkpoint_save, now_iso

pytestmark = pytest.mark.django_db


def _page(client: Client, thread_id: Any) -> str:
    response = client.get(f"/admin/conversations/thread/{thread_id}/change/")
    assert response.status_code == 200
    return response.content.decode()


def _running_with_steps(steps: int, *, final: bool = False) -> MessageResult:
    """A running thread whose engine checkpointed ``steps`` model steps, as the runner does (each
    its thread's ``step`` event); the last one ``final`` or not."""
    sent = message_handle(user_id="alice", channel="web", content="hello")
    claimed = thread_claim(user_id="alice", thread_id=sent.thread_id, worker_id="w1")
    state = TurnState(
        thread_id=str(sent.thread_id),
        conversation_id=str(sent.conversation_id),
        user_id="alice",
        started_at=now_iso(),
    )
    for n in range(1, steps + 1):
        step = {
            "n": n,
            "started_at": now_iso(),
            "ended_at": now_iso(),
            "model_ms": 1500.0,
            "input_tokens": 10,
            "output_tokens": 5,
            "cost_usd": 0.001,
            "final": final and n == steps,
        }
        state.steps.append(step)
        checkpoint_save(
            state, user_id="alice", changed_by="w1", lease_epoch=claimed.claim_count, step=step
        )
    return sent


def _latest_step_moved_back(sent: MessageResult, minutes: int) -> datetime.datetime:
    """The latest step event (and the claim before it) ``minutes`` earlier: its moment."""
    earlier = timezone.now() - datetime.timedelta(minutes=minutes)
    Thread.objects.filter(pk=sent.thread_id).update(
        claimed_at=earlier - datetime.timedelta(minutes=1)
    )
    ThreadEvent.objects.filter(thread_id=sent.thread_id).update(created_at=earlier)
    return earlier


def test_a_running_threads_page_shows_the_model_call_in_flight_and_the_steps_so_far(
    admin_client: Client,
) -> None:
    sent = _running_with_steps(2)
    since = _latest_step_moved_back(sent, 2)

    html = _page(admin_client, sent.thread_id)

    clock = timezone.localtime(since).strftime("%H:%M:%S")
    assert re.search(f"model call in flight since {clock} \\(for 2 min [0-9]+ s\\)", html)
    assert "after its latest step; 2 steps recorded in this run (model time 3.0 s)" in html
    assert "claim 1 by w1" in html
    assert "<td>1</td>" in html
    assert "<td>2</td>" in html
    assert "2 step(s) of this run, from its step events" in html
    assert 'model calls:</label><div class="readonly">none' not in html


def test_a_running_thread_without_steps_is_in_its_first_call_since_its_claim(
    admin_client: Client,
) -> None:
    sent = _running_with_steps(0)
    claimed_at = Thread.objects.get(pk=sent.thread_id).claimed_at
    assert claimed_at is not None

    html = _page(admin_client, sent.thread_id)

    clock = timezone.localtime(claimed_at).strftime("%H:%M:%S")
    assert f"model call in flight since {clock}" in html
    assert "after its claim; 0 steps recorded in this run" in html


def test_after_a_final_step_the_thread_is_between_steps(admin_client: Client) -> None:
    sent = _running_with_steps(1, final=True)

    html = _page(admin_client, sent.thread_id)

    assert "between steps since" in html
    assert "1 step recorded in this run" in html


def test_a_stopped_threads_unreported_steps_come_from_its_events(admin_client: Client) -> None:
    sent = _running_with_steps(3)
    thread_stop(user_id="alice", thread_id=sent.thread_id, operator="alice-ops")

    html = _page(admin_client, sent.thread_id)

    assert "not running" in html
    assert "3 step(s), from the thread&#x27;s step events (its runs reported no model calls)" in (
        html
    )
    assert '<div class="errornote outcome-alert"' in html
    assert "reason: stopped by an operator (alice-ops)</div>" in html


def test_a_failed_threads_error_is_on_top_of_its_outcome_escaped(admin_client: Client) -> None:
    sent = _running_with_steps(0)
    thread_outcome_record(
        user_id="alice",
        thread_id=sent.thread_id,
        worker_id="w1",
        outcome=ThreadOutcome(kind="failed", error="model error: <b>503</b> & retry"),
    )

    html = _page(admin_client, sent.thread_id)

    alert = html.index('class="errornote outcome-alert"')
    assert alert < html.index('<dl class="outcome">')
    assert "error: model error: &lt;b&gt;503&lt;/b&gt; &amp; retry</div>" in html
    assert "<b>503</b>" not in html
    assert "var(--message-error-bg)" in html
