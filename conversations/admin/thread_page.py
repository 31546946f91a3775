"""The sections of a thread's admin page that are more than a field: its outcome (its error or
stop reason in a box on top), the run in progress (the model call in flight, the steps so far:
``thread_run``), the phases of its run, its model calls and its latest entries. Each is a
template under ``admin/conversations/thread/``; a row's cells are built here, its markup there."""

from __future__ import annotations

import datetime

from django.contrib import admin
from django.template.loader import render_to_string
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.safestring import SafeString, mark_safe

from conversations.admin.common import when
from conversations.admin.thread_run import run_steps
from conversations.models import ConversationEntry, Thread, ThreadState
from core.admin_display import changelist_url, duration_text, truncated

# A thread page shows this many of its latest entries.
THREAD_PAGE_ENTRIES = 20


class ThreadPageSections:
    """The thread admin's read-only sections (named in its ``readonly_fields``)."""

    @admin.display(description="outcome")
    def outcome_rendered(self, thread: Thread) -> SafeString:
        outcome = thread.outcome or {}
        if not outcome:
            return mark_safe("none yet")
        kind = str(outcome.get("kind", ""))
        # What went wrong, in a box on top: a failure's error, a stop's reason.
        alert_key = "error" if outcome.get("error") else "reason" if kind == "stopped" else ""
        alert = str(outcome.get(alert_key) or "") if alert_key else ""
        rows: list[tuple[str, str]] = [("kind", kind)]
        if outcome.get("reported_kind"):
            rows.append(("reported by the engine", str(outcome["reported_kind"])))
        gate = outcome.get("gate")
        if isinstance(gate, dict):
            rows.append(("gate", str(gate.get("name") or "")))
            rows.append(("gated action", str(gate.get("action") or "")))
        for key in ("error", "reason", "worker_id"):
            if outcome.get(key) and not (alert and key == alert_key):
                rows.append((key.replace("_", " "), str(outcome[key])))
        recorded = parse_datetime(str(outcome.get("recorded_at") or ""))
        if recorded is not None:
            rows.append(("recorded", when(recorded)))
        return render_to_string(
            "admin/conversations/thread/outcome.html",
            {
                "rows": rows,
                "response": outcome.get("response"),
                "alert": alert,
                "alert_label": alert_key,
            },
        )

    @admin.display(description="now")
    def run_now(self, thread: Thread) -> SafeString:
        if thread.state != ThreadState.RUNNING:
            return mark_safe("not running")
        steps = run_steps(thread)
        since = thread.claimed_at
        if steps is not None and steps.latest_at is not None:
            since = max(since, steps.latest_at) if since else steps.latest_at
        return render_to_string(
            "admin/conversations/thread/run_now.html",
            {
                # The latest step was the answer: the engine is recording the outcome.
                "doing": "between steps"
                if steps and steps.latest_final
                else "model call in flight",
                "since": timezone.localtime(since).strftime("%H:%M:%S") if since else "-",
                "for": duration_text(timezone.now() - since) if since else "-",
                "after": "its latest step" if steps and steps.count else "its claim",
                "steps": steps.count if steps else 0,
                "model_time": duration_text(
                    datetime.timedelta(milliseconds=steps.model_ms if steps else 0)
                ),
                "claim": thread.claim_count,
                "worker": thread.lease_owner,
            },
        )

    @admin.display(description="phases")
    def timings(self, thread: Thread) -> SafeString:
        phases = [
            ("created", thread.created_at),
            ("enqueued", thread.enqueued_at),
            ("claimed (latest)", thread.claimed_at),
            ("started (first claim)", thread.started_at),
            ("finished", thread.finished_at),
        ]
        start = thread.enqueued_at or thread.created_at
        rows = [
            (name, when(moment), duration_text(moment - start) if moment else "-")
            for name, moment in phases
        ]
        model = datetime.timedelta(milliseconds=thread.model_time_ms)
        total = (thread.finished_at - start) if thread.finished_at else None
        overhead = max(total - model, datetime.timedelta(0)) if total is not None else None
        return render_to_string(
            "admin/conversations/thread/timings.html",
            {
                "rows": rows,
                "model_time": duration_text(model),
                "running": thread.state == ThreadState.RUNNING,
                "overhead": duration_text(overhead),
                "queue_wait": duration_text(thread.claimed_at - start)
                if thread.claimed_at and thread.claimed_at >= start
                else "-",
            },
        )

    @admin.display(description="model calls")
    def model_calls_table(self, thread: Thread) -> SafeString:
        calls = list(thread.model_calls or [])
        # This run's steps (not reported until its outcome), or an unreported run's.
        steps = run_steps(thread)
        note = ""
        if steps is not None and steps.calls:
            calls.extend(steps.calls)
            latest = f"the latest {len(steps.calls)} of " if steps.count > len(steps.calls) else ""
            note = (
                f"{latest}{steps.count} step(s) of this run, from its step events "
                "(model calls are reported with the outcome)"
                if thread.state == ThreadState.RUNNING
                else f"{latest}{steps.count} step(s), from the thread's step events "
                "(its runs reported no model calls)"
            )
        if not calls:
            return mark_safe("none")
        rows = []
        previous_end: datetime.datetime | None = None
        for call in calls:
            started = parse_datetime(str(call.get("started_at") or ""))
            ended = parse_datetime(str(call.get("ended_at") or ""))
            took = ended - started if started and ended else None
            gap = started - previous_end if started and previous_end else None
            rows.append(
                (call.get("step", ""), when(started), duration_text(took), duration_text(gap))
            )
            previous_end = ended
        return render_to_string(
            "admin/conversations/thread/model_calls.html", {"rows": rows, "note": note}
        )

    @admin.display(description=f"latest {THREAD_PAGE_ENTRIES} entries")
    def thread_entries(self, thread: Thread) -> SafeString:
        entries = list(
            ConversationEntry.objects.filter(thread=thread)
            .order_by("-seq")
            .only("pk", "seq", "sender", "content", "created_at")[:THREAD_PAGE_ENTRIES]
        )
        url = changelist_url("admin:conversations_conversationentry_changelist", thread=thread.pk)
        if not entries:
            return mark_safe("none")
        rows = [
            (entry.seq, entry.sender, truncated(entry.content, 200), when(entry.created_at))
            for entry in reversed(entries)
        ]
        return render_to_string(
            "admin/conversations/thread/entries.html", {"rows": rows, "all_url": url}
        )
