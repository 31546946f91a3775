"""Chaos: the service under load while its processes are killed and its database restarted.

``manage.py serve`` (2 web processes, the turn worker, the background worker, and the embedded
PostgreSQL it supervises, in a fresh folder of its own) serves T tenants who each post messages,
wait for the echo agent's reply and write a workspace note, while a driver SIGKILLs web and
worker processes and kills PostgreSQL's postmaster. After the faults it lets the service drain,
then checks from the database:

- every accepted message (a 202) is stored exactly once, and no message is stored twice;
- every conversation's seqs are gap-free (1..last_seq);
- every thread ended with exactly one outcome (terminal, outcome recorded, at most one agent entry);
- no job is left todo or doing (beyond the periodic ones waiting for their minute);
- every non-runtime document is indexed;

and reports, for each fault, how long until /readyz answered 200 again and a new message was
answered, and for each kill of the turn worker how long the turns it was running took to be
answered (p50, p95, max: they resume from their checkpoints on the restarted worker). Exit status
0 when every check holds. The suite runs a short version (tests/test_chaos.py); the long one is:

    .venv/bin/python bench/chaos.py --seconds 300 --tenants 30
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Run as a script, this folder comes first on the path: the checkout must come before it, or
# bench/conversations.py would stand in for the conversations app.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chaos_turns import TurnsKill, interrupted_replies, interrupted_turns
from tests.support.serve import (
    Page,
    ServeNotReady,
    ServeProcess,
    await_reply,
    call,
    post_message,
    ready_within,
    serve_running,
)

# Faults in the order they are dealt, cycled over the run.
FAULTS = ("web", "turns", "database", "background", "web", "turns", "database")
# Jobs not finished, beyond periodic ones (each waits for its minute by design).
UNFINISHED_JOBS_SQL = (
    "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing') "
    "AND task_name NOT IN (SELECT DISTINCT task_name FROM procrastinate_periodic_defers)"
)


@dataclass
class Report:
    accepted: int = 0
    replies: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    transport_errors: int = 0
    faults: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    checks: dict[str, Any] = field(default_factory=dict)
    turns_kills: list[TurnsKill] = field(default_factory=list)


def _call(
    base: str, key: str, method: str, path: str, body: dict[str, Any] | None = None
) -> tuple[int, Any]:
    return call(base, key, method, path, body, timeout=30)


class Tenant(threading.Thread):
    """Posts a message, waits for the reply (long-poll), writes a note; until told to stop."""

    def __init__(self, n: int, base: str, key: str, stop: threading.Event, report: Report):
        super().__init__(name=f"tenant-{n}", daemon=True)
        self.n, self.base, self.key, self.stop_event, self.report = n, base, key, stop, report
        self.accepted: list[dict[str, Any]] = []
        self.unknown: list[str] = []
        self.lock = threading.Lock()

    def _retrying(self, attempt: Callable[[], tuple[int, Any]]) -> tuple[int, Any] | None:
        """One call, retried while the service heals (503, 409 busy, 429, connection errors)."""
        while not self.stop_event.is_set():
            try:
                status, body = attempt()
            except OSError:
                with self.lock:
                    self.report.transport_errors += 1
                time.sleep(0.3)
                continue
            if status in (409, 429, 502, 503, 504):
                with self.lock:
                    self.report.refused[status] = self.report.refused.get(status, 0) + 1
                time.sleep(0.3)
                continue
            return status, body
        return None

    def run(self) -> None:
        count = 0
        while not self.stop_event.is_set():
            count += 1
            content = f"tenant {self.n} message {count}"
            try:
                status, sent = post_message(self.base, self.key, content, timeout=30)
            except OSError:
                # The request may or may not have committed: it must then be stored at most once.
                self.unknown.append(content)
                with self.lock:
                    self.report.transport_errors += 1
                time.sleep(0.3)
                continue
            if status != 202:
                with self.lock:
                    self.report.refused[status] = self.report.refused.get(status, 0) + 1
                if status >= 500 and status != 503:
                    self.unknown.append(content)
                time.sleep(0.3)
                continue
            self.accepted.append({**sent, "content": content})
            with self.lock:
                self.report.accepted += 1
            self._await_reply(sent)
            note = {"content": f"note {count} of tenant {self.n}: " + "word " * 50}
            path = f"/api/v1/workspace/documents/notes/{self.n}.md"
            self._retrying(lambda: _call(self.base, self.key, "PUT", path, note))  # noqa: B023

    def _await_reply(self, sent: dict[str, Any]) -> None:
        if _await_reply(self.base, self.key, sent, self._retrying, timeout=60):
            with self.lock:
                self.report.replies += 1


def _await_reply(
    base: str,
    key: str,
    sent: dict[str, Any],
    retrying: Callable[[Callable[[], tuple[int, Any]]], tuple[int, Any] | None],
    *,
    timeout: float,
) -> bool:
    """Long-poll the conversation until the agent's entry after ``sent`` appears."""

    def fetch(path: str, wait: int) -> Page | None:
        result = retrying(lambda: _call(base, key, "GET", path))
        return result[1] if result is not None and result[0] == 200 else None

    return await_reply(fetch, sent, timeout=timeout) is not None


def _probe_reply(base: str, key: str, timeout: float) -> float | None:
    """Seconds until a probe message posted now gets the agent's reply (None: not in time)."""
    started = time.monotonic()

    def retrying(attempt: Callable[[], tuple[int, Any]]) -> tuple[int, Any] | None:
        while time.monotonic() - started < timeout:
            try:
                status, body = attempt()
            except OSError:
                time.sleep(0.1)
                continue
            if status in (409, 429, 502, 503, 504):
                time.sleep(0.1)
                continue
            return status, body
        return None

    posted = retrying(
        lambda: post_message(base, key, f"probe {started}", channel="probe", timeout=30)
    )
    if posted is None or posted[0] != 202:
        return None
    if not _await_reply(base, key, posted[1], retrying, timeout=timeout):
        return None
    return time.monotonic() - started


def _victim(serve: ServeProcess, kind: str, data_dir: Path) -> int | None:
    """The pid to SIGKILL for a fault of ``kind``."""
    if kind == "database":
        pid_file = data_dir / "postmaster.pid"
        try:
            return int(pid_file.read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
    # For web, one of the web processes (the others keep the port).
    marker = "serve_web" if kind == "web" else f"--name {kind}"
    try:
        return int(serve.child(marker).pid)
    except LookupError:
        return None


def _deal_faults(
    serve: ServeProcess,
    base: str,
    data_dir: Path,
    *,
    count: int,
    seconds: float,
    report: Report,
    probe_key: str,
) -> None:
    interval = seconds / (count + 1)
    for number in range(count):
        time.sleep(interval)
        kind = FAULTS[number % len(FAULTS)]
        pid = _victim(serve, kind, data_dir)
        if pid is None:
            report.problems.append(f"fault {number + 1} ({kind}): no process to kill")
            continue
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            report.problems.append(f"fault {number + 1} ({kind}): pid {pid} already gone")
            continue
        # Recovery, two ways: /readyz says the service is whole, and a message posted right
        # after the fault gets the agent's reply (the whole path: web, database, turn worker).
        killed = time.monotonic()
        interrupted = interrupted_turns(pid) if kind == "turns" else None
        time.sleep(0.2)
        ready = ready_within(base, timeout=60)
        ready_s = None if ready is None else 0.2 + ready
        answered = _probe_reply(base, probe_key, timeout=60)
        reply_s = None if answered is None else time.monotonic() - killed
        fault = {
            "fault": kind,
            "pid": pid,
            "ready_s": None if ready_s is None else round(ready_s, 2),
            "reply_s": None if answered is None else round(reply_s or 0, 2),
        }
        report.faults.append(fault)
        if kind == "turns" and interrupted is None:
            report.problems.append(f"fault {number + 1} ({kind}): its turns could not be read")
        elif interrupted is not None:
            report.turns_kills.append(TurnsKill(fault, *interrupted))
        print(
            f"  fault {number + 1}: SIGKILL {kind} (pid {pid}); /readyz 200 after "
            f"{'never' if ready_s is None else f'{ready_s:.1f} s'}, a new message answered "
            f"{'never' if answered is None else f'{reply_s:.1f} s'} after the kill",
            flush=True,
        )
        if ready_s is None or answered is None:
            report.problems.append(f"fault {number + 1} ({kind}): not recovered within 60 s")


def _drain(timeout: float) -> bool:
    """Wait for the service to finish on its own (its workers sweep leases and stalled jobs;
    nothing here does it for them) until no turn, job or indexing is left."""
    from django.db import connection

    from conversations.models import Thread
    from workspace.models import Document

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            live = Thread.objects.exclude(state__in=["completed", "failed", "stopped"]).count()
            pending = Document.objects.filter(is_runtime=False).exclude(index_state="indexed")
            with connection.cursor() as cursor:
                cursor.execute(UNFINISHED_JOBS_SQL)
                jobs = cursor.fetchone()[0]
            if live == 0 and jobs == 0 and not pending.exists():
                return True
        except Exception as error:  # the database may still be coming back
            print(f"  drain: {error}", flush=True)
            connection.close()
        time.sleep(1)
    return False


def _stale_checkpoints() -> list[str]:
    from conversations.models import Thread
    from engine.checkpoint import thread_checkpoint_path
    from workspace.models import Document

    finished = Thread.objects.filter(state="completed").values_list("id", "user_id", "outcome")
    stale = []
    for thread_id, user_id, outcome in finished.iterator():
        content = (
            Document.objects.filter(user_id=user_id, path=thread_checkpoint_path(thread_id))
            .values_list("content", flat=True)
            .first()
        )
        if not content or not outcome or not outcome.get("worker_id"):
            continue
        runs = [
            event["worker_id"]
            for event in json.loads(content).get("events", [])
            if event.get("kind") in ("claimed", "resumed", "continued")
        ]
        if runs and runs[-1] != outcome["worker_id"]:
            stale.append(str(thread_id))
    return stale


def _check(tenants: list[Tenant], report: Report) -> None:
    from django.db import connection
    from django.db.models import Count, Max

    from conversations.models import Conversation, ConversationEntry, Thread
    from workspace.models import Document

    problems = report.problems
    users = ConversationEntry.objects.filter(sender="user")
    stored = dict(users.values("content").annotate(n=Count("id")).values_list("content", "n"))
    accepted = [message for tenant in tenants for message in tenant.accepted]
    lost = [m["content"] for m in accepted if stored.get(m["content"], 0) == 0]
    duplicated = [content for content, n in stored.items() if n > 1]
    problems += [f"accepted message lost: {content}" for content in lost]
    problems += [f"message stored {stored[c]} times: {c}" for c in duplicated]

    # Gap-free: as many entries as the last seq allocated, and the highest seq is that one.
    rows = Conversation.objects.annotate(top=Max("entries__seq"), n=Count("entries")).values_list(
        "id", "last_seq", "top", "n"
    )
    gaps = [str(pk) for pk, last, top, n in rows if n != last or (top or 0) != last]
    problems += [f"seqs not gap-free in conversation {c}" for c in gaps]

    unfinished = Thread.objects.exclude(state__in=["completed", "failed", "stopped"])
    no_outcome = Thread.objects.filter(outcome__isnull=True)
    doubled = (
        ConversationEntry.objects.filter(sender="agent")
        .values("thread_id")
        .annotate(n=Count("id"))
        .filter(n__gt=1)
    )
    problems += [f"thread {t.id} still {t.state}" for t in unfinished]
    problems += [f"thread {t.id} has no outcome" for t in no_outcome]
    problems += [f"thread {row['thread_id']} has {row['n']} agent replies" for row in doubled]

    # A stale write is one a worker made after its lease was taken over: its checkpoint would
    # carry its own run's history, so the last run recorded in a finished thread's checkpoint
    # must be the one whose worker recorded the outcome.
    stale = _stale_checkpoints()
    problems += [f"thread {t} checkpoint last written by a worker that lost it" for t in stale]

    with connection.cursor() as cursor:
        cursor.execute(UNFINISHED_JOBS_SQL)
        stuck_jobs = cursor.fetchone()[0]
    if stuck_jobs:
        problems.append(f"{stuck_jobs} jobs still todo or doing")
    unindexed = Document.objects.filter(is_runtime=False).exclude(index_state="indexed").count()
    if unindexed:
        problems.append(f"{unindexed} documents not indexed")

    errors = {status: n for status, n in report.refused.items() if status >= 500 and status != 503}
    problems += [
        f"{n} answers with status {status} (never a 5xx but 503)" for status, n in errors.items()
    ]
    report.checks = {
        "accepted": len(accepted),
        "lost": len(lost),
        "duplicated": len(duplicated),
        "unknown_outcome_posts": sum(len(t.unknown) for t in tenants),
        "conversations_with_gaps": len(gaps),
        "threads": Thread.objects.count(),
        "threads_unfinished": unfinished.count(),
        "threads_with_two_replies": doubled.count(),
        "stale_checkpoints": len(stale),
        "jobs_stuck": stuck_jobs,
        "documents_unindexed": unindexed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=300, help="how long faults are dealt")
    parser.add_argument("--faults", type=int, default=0, help="faults (default: one per 20 s)")
    parser.add_argument("--echo-ms", type=int, default=300, help="the echo model's latency")
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    random.seed(options.seed)
    faults = options.faults or max(3, int(options.seconds // 20))

    with tempfile.TemporaryDirectory(prefix="ironclaw-chaos-") as folder:
        var = Path(folder)
        data_dir = var / "pgdata"
        env = {
            "IRONCLAW_VAR_DIR": str(var),
            "EMBEDDED_DATABASE_DIR": str(data_dir),
            "LOG_LEVEL": "WARNING",
            "ENGINE_ECHO_LATENCY_MS": str(options.echo_ms),
            "ENGINE_LEASE_SECONDS": "5",
            "ENGINE_HEARTBEAT_SECONDS": "1",
            "WORKER_HEARTBEAT_SECONDS": "1",
            "WORKER_STALLED_SECONDS": "5",
            "STALLED_JOBS_SWEEP_SECONDS": "1",
            "WEB_CONCURRENCY": "2",
            "RATE_LIMIT_PER_MINUTE": "0",
        }
        os.environ.pop("DATABASE_URL", None)
        os.environ.update(env)
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ironclaw_site.settings")
        import django

        django.setup()
        from django.core.management import call_command

        from accounts.services import api_key_create

        call_command("migrate", verbosity=0)
        keys = [
            api_key_create(name="chaos", user_id=f"tenant-{n}", is_service=False).raw_key
            for n in range(options.tenants)
        ]
        probe_key = api_key_create(name="probe", user_id="probe", is_service=False).raw_key
        from django.db import connection

        connection.close()

        log = (var / "serve.log").open("w+")
        report = Report()
        try:
            with serve_running(dict(os.environ), log=log, ready_timeout=90) as serve:
                base = serve.base_url
                print(
                    f"chaos: {options.tenants} tenants, {faults} faults over "
                    f"{options.seconds:.0f} s, echo {options.echo_ms} ms",
                    flush=True,
                )
                stop = threading.Event()
                tenants = [Tenant(n, base, keys[n], stop, report) for n in range(options.tenants)]
                for tenant in tenants:
                    tenant.start()
                _deal_faults(
                    serve,
                    base,
                    data_dir,
                    count=faults,
                    seconds=options.seconds,
                    report=report,
                    probe_key=probe_key,
                )
                stop.set()
                for tenant in tenants:
                    tenant.join(timeout=90)
                drained = _drain(timeout=120)
                if not drained:
                    report.problems.append("the service did not drain within 120 s")
                _check(tenants, report)
                report.problems += interrupted_replies(report.turns_kills)
        except ServeNotReady as error:
            raise SystemExit(f"serve did not become ready: {error}") from None
        finally:
            if report.problems:
                log.seek(0)
                tail = log.read().splitlines()[-40:]
                print("--- serve log tail:\n" + "\n".join(tail), file=sys.stderr)
            log.close()

    recoveries = [f["reply_s"] for f in report.faults if f["reply_s"] is not None]
    interrupted = [
        f["interrupted_reply_max_s"]
        for f in report.faults
        if f.get("interrupted_reply_max_s") is not None
    ]
    summary = {
        "accepted": report.accepted,
        "replies": report.replies,
        "refused_by_status": report.refused,
        "transport_errors": report.transport_errors,
        "faults": report.faults,
        "max_reply_after_fault_s": max(recoveries) if recoveries else None,
        "max_interrupted_turn_reply_s": max(interrupted) if interrupted else None,
        **report.checks,
        "problems": report.problems[:20],
    }
    print("CHAOS " + json.dumps(summary), flush=True)
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
