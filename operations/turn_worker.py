"""The turn worker: runs the built-in engine's turns, taking threads straight from their rows.

The threads queue is the thread table (``conversations.services.turn_queue``): a worker claims the
runnable thread that has waited longest with one ``UPDATE ... FOR UPDATE SKIP LOCKED`` statement
(``thread_claim_runnable``, the same rows external engines claim from), and hands it to
``THREAD_RUNNER`` in one of its ``concurrency`` threads. No job row is written, fetched or
finished: the claim is the only hand-off, and the thread's lease is the only record of who runs it.

It is woken by ``NOTIFY ironclaw_threads`` (through the process's one listening connection,
``core.notify``) when a thread becomes runnable and when one of its own turns ends; it also looks
once a second, so a notification lost while the listener reconnects delays a turn by at most
that. A database outage is waited out with backoff. Its heartbeat is a row of Procrastinate's
``procrastinate_workers`` named in ``ironclaw_site_workername``, like every worker's, so
``/readyz`` and the admin see it as they see the others.

Every ``TURN_WORKER_SWEEP_SECONDS`` it sweeps leases (``thread_leases_sweep``, one statement):
expired ones, and those of turn workers that are dead, so a turn whose worker was killed resumes
from its checkpoint within seconds. A turn worker is dead when serve saw its process exit (serve
passes the pid to the worker it starts in its place, ``replaces``), or when its heartbeat is
older than ``TURN_WORKER_DEAD_SECONDS``. Its turns' lease owners name its heartbeat row
(``lease_owner_id``). After a database error it judges no heartbeat for
``TURN_WORKER_DEAD_SECONDS``: an outage silences every worker, and the live ones need that long
to beat again.

A turn whose runner raises keeps its lease until it expires; the sweep then puts the thread back
in the queue and the next turn resumes from its checkpoint. One that crashed on its last three
claims in a row fails with the error instead (``operations.turn_crashes``).

A worker asked to stop (SIGTERM, Ctrl-C) claims nothing more and asks its turns to end now
(``TurnStop``): the reference runner abandons its model call, checkpoints and returns, and the
worker gives each such turn's lease back (``thread_lease_give_up``) once its runner has returned,
so nothing of that turn writes after the release. The next claim, here or on any worker, resumes
it from its checkpoint. It keeps beating until its turns in flight have ended (a runner that
ignores the request runs to its end).
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connection, transaction
from django.utils.module_loading import import_string

from conversations.models import Thread
from conversations.runners import TurnStop, runner_claims_threads, turn_stop_scope
from conversations.services import (
    lease_owner_id,
    thread_claim_runnable,
    thread_lease_give_up,
    thread_leases_sweep,
)
from core import delta_watch
from core.log_context import log_context
from core.notify import ANY, THREADS_CHANNEL, listening
from operations.turn_crashes import turn_crash_record
from operations.workers import (
    WORKER_NAME_INSERT_SQL,
    WORKER_NAME_PRUNE_SQL,
    worker_name_params,
)

logger = logging.getLogger(__name__)

# How often an idle worker looks for runnable threads without being notified.
POLL_INTERVAL_S = 1.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 10.0

Runner = Callable[..., Any]


def thread_runner() -> Runner:
    """The ``THREAD_RUNNER`` callable; ImproperlyConfigured naming the setting if it is none."""
    try:
        runner = import_string(settings.THREAD_RUNNER)
    except ImportError as error:
        raise ImproperlyConfigured(
            f"THREAD_RUNNER {settings.THREAD_RUNNER!r} cannot be imported: {error}"
        ) from error
    if not callable(runner):
        raise ImproperlyConfigured(f"THREAD_RUNNER {settings.THREAD_RUNNER!r} is not callable.")
    return runner


class TurnWorker:
    """``replaces``: pids of turn workers of this host that died, whose leases this one gives up
    before its first claim (serve passes the one it saw exit)."""

    def __init__(self, *, name: str, concurrency: int, replaces: Sequence[int] = ()):
        self.name = name
        self.concurrency = concurrency
        self.replaces = tuple(replaces)
        self.worker_id: int | None = None
        self._stopping = threading.Event()
        # Asks the turns in flight to end now, unfinished, when the worker stops.
        self._turn_stop = TurnStop()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self._next_heartbeat = 0.0
        self._next_sweep = 0.0
        # Heartbeats are judged only from then on (after start-up, and after a database error).
        self._judge_heartbeats_after = 0.0
        self._replaced_until = 0.0

    def stop(self) -> None:
        """Claim nothing more and ask the turns in flight to end now; ``run`` returns once they
        have, their leases given back."""
        self._stopping.set()
        self._turn_stop.request()
        self._wake.set()

    def run(self) -> None:
        runner = thread_runner()
        claims = runner_claims_threads(runner)
        if not claims:
            logger.info("THREAD_RUNNER leaves threads to external engines: claiming none")
        backoff = BACKOFF_INITIAL_S
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="turn")
        # The replaced workers' turns may still hold row locks for a moment after their death
        # (the sweep skips locked rows): their pids are swept for as long as their heartbeats
        # would take to go stale.
        self._replaced_until = time.monotonic() + settings.TURN_WORKER_DEAD_SECONDS
        # Token deltas go out only for the tenants whose streams are open somewhere.
        delta_watch.watch_start()
        try:
            with listening(THREADS_CHANNEL, ANY) as notified:
                self._wake = notified
                if self._stopping.is_set():
                    notified.set()
                # Stopping, it beats on until its turns end: a silent worker's turns are taken.
                while not self._stopping.is_set() or self._busy():
                    notified.clear()
                    try:
                        self._heartbeat()
                        if not self._stopping.is_set():
                            self._sweep()
                            if claims:
                                self._claim_into(pool, runner)
                        backoff = BACKOFF_INITIAL_S
                        timeout = self._next_wait()
                    except Exception as error:
                        logger.warning(
                            "turn worker %s: %s; trying again in %.1f s", self.name, error, backoff
                        )
                        self._database_failed()
                        timeout, backoff = backoff, min(backoff * 2, BACKOFF_MAX_S)
                    finally:
                        connection.close()
                    notified.wait(max(0.0, timeout))
        finally:
            # Turns in flight end, with their outcome or handed back (see _run_turn).
            pool.shutdown(wait=True)
            self._unregister()
            delta_watch.watch_stop()

    def drain(self) -> int:
        """Run runnable threads one after another in this thread until none is left; returns
        how many ran (for tests and one-off use)."""
        runner = thread_runner()
        ran = 0
        while (thread := self._claim()) is not None:
            self._run_turn(runner, *thread)
            ran += 1
        return ran

    def _busy(self) -> bool:
        with self._lock:
            return self._in_flight > 0

    def _next_wait(self) -> float:
        """Seconds until the loop has something to do unless it is woken: a look for threads,
        a heartbeat or a sweep (none once it is stopping)."""
        now = time.monotonic()
        wait = min(POLL_INTERVAL_S, self._next_heartbeat - now)
        if not self._stopping.is_set():
            wait = min(wait, self._next_sweep - now)
        return wait

    # --- Claims --------------------------------------------------------------------------------

    def _claim(self) -> tuple[Thread, str] | None:
        # Registered (run), the owner names the worker's heartbeat row, so a sweep can tell when
        # it is dead; draining, the lease only expires.
        worker_id = lease_owner_id(worker_row=self.worker_id)
        # The engine's lease, which its turns renew (ENGINE_HEARTBEAT_SECONDS).
        thread = thread_claim_runnable(
            worker_id=worker_id, lease_seconds=settings.ENGINE_LEASE_SECONDS
        )
        return None if thread is None else (thread, worker_id)

    def _claim_into(self, pool: ThreadPoolExecutor, runner: Runner) -> None:
        while not self._stopping.is_set():
            with self._lock:
                if self._in_flight >= self.concurrency:
                    return
            claimed = self._claim()
            if claimed is None:
                return
            with self._lock:
                self._in_flight += 1
            pool.submit(self._run_turn, runner, *claimed)

    def _run_turn(self, runner: Runner, thread: Thread, worker_id: str) -> None:
        metadata = thread.metadata if isinstance(thread.metadata, dict) else {}
        request_id = metadata.get("request_id")
        try:
            with log_context(request_id=request_id, tenant=thread.user_id):
                with turn_stop_scope(self._turn_stop):
                    runner(thread=thread, worker_id=worker_id)
                if self._turn_stop.requested:
                    self._give_back(thread, worker_id)
        except Exception as error:
            logger.exception(
                "turn of thread %s failed; its lease lapses and the sweeper requeues it",
                thread.pk,
                extra={"thread_id": str(thread.pk), "tenant": thread.user_id},
            )
            self._crashed(thread, worker_id, error)
        finally:
            connection.close()
            with self._lock:
                self._in_flight = max(0, self._in_flight - 1)
            self._wake.set()

    def _crashed(self, thread: Thread, worker_id: str, error: Exception) -> None:
        """Note the crash; a turn that crashed on its last claims in a row fails instead of
        being retried for ever (``operations.turn_crashes``)."""
        try:
            turn_crash_record(thread, worker_id, error)
        except Exception as noting:
            logger.warning("thread %s: could not note its crash: %s", thread.pk, noting)

    def _give_back(self, thread: Thread, worker_id: str) -> None:
        """Hand a turn back to the queue after its runner returned while this worker stops.

        Only now: the runner has returned, so nothing of the turn writes after the release (the
        release keeps the lease epoch, which only the next claim moves, so a fenced write would
        still pass). A turn that recorded its outcome first holds no lease: nothing changes."""
        try:
            thread_lease_give_up(
                user_id=thread.user_id,
                thread_id=thread.pk,
                worker_id=worker_id,
                lease_epoch=thread.claim_count,
            )
        except Exception as error:
            # The sweep takes it once this worker is known dead (serve's, or its heartbeat's).
            logger.warning(
                "thread %s: could not hand it back (%s); the lease sweep will",
                thread.pk,
                error,
                extra={"thread_id": str(thread.pk), "tenant": thread.user_id},
            )

    # --- Lease sweep ---------------------------------------------------------------------------

    def _sweep(self) -> None:
        """Give up expired leases and dead turn workers' leases, when a sweep is due."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + settings.TURN_WORKER_SWEEP_SECONDS
        dead_after = datetime.timedelta(seconds=settings.TURN_WORKER_DEAD_SECONDS)
        try:
            swept = thread_leases_sweep(
                dead_after=dead_after if now >= self._judge_heartbeats_after else None,
                dead_pids=self.replaces if now < self._replaced_until else (),
            )
        except Exception as error:
            # Claims go on: a sweep that fails must not stop the turns this worker can run.
            logger.warning("turn worker %s: lease sweep failed: %s", self.name, error)
            self._database_failed()
            connection.close()
            return
        if swept.requeued or swept.stopped:
            logger.info(
                "turn worker %s: lease sweep: %d threads back to created, %d stopped",
                self.name,
                len(swept.requeued),
                len(swept.stopped),
            )

    def _database_failed(self) -> None:
        # Other workers' heartbeats stopped with this one's connection: give them time to beat
        # again before taking their turns for dead.
        self._judge_heartbeats_after = time.monotonic() + settings.TURN_WORKER_DEAD_SECONDS

    # --- Heartbeat -----------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        now = time.monotonic()
        if now < self._next_heartbeat:
            return
        with connection.cursor() as cursor:
            beat = 0
            if self.worker_id is not None:
                cursor.execute(
                    "UPDATE procrastinate_workers SET last_heartbeat = now() WHERE id = %s",
                    [self.worker_id],
                )
                beat = cursor.rowcount
                self._ping()
            if not beat:
                # First beat, or the row was pruned as stalled (a long outage): register again,
                # with the name in the same transaction, so a failure of either registers
                # nothing and the next beat tries both again (a worker registered without its
                # name would beat for ever unseen by /readyz).
                with transaction.atomic():
                    cursor.execute("SELECT worker_id FROM procrastinate_register_worker_v1()")
                    (worker_id,) = cursor.fetchone()
                    cursor.execute(WORKER_NAME_PRUNE_SQL)
                    cursor.execute(
                        WORKER_NAME_INSERT_SQL,
                        worker_name_params(worker_id=worker_id, name=self.name),
                    )
                self.worker_id = worker_id
        self._next_heartbeat = now + settings.WORKER_HEARTBEAT_SECONDS

    def _ping(self) -> None:
        """Show that this process's listener hears other connections (core.delta_watch): a
        courtesy, so its failure is no database failure of the worker's."""
        try:
            delta_watch.watch_ping()
        except DatabaseError as error:
            logger.info("turn worker %s: the delta watch's ping failed: %s", self.name, error)

    def _unregister(self) -> None:
        if self.worker_id is None:
            return
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT procrastinate_unregister_worker_v1(%s)", [self.worker_id])
        except Exception as error:
            logger.warning("turn worker %s: could not unregister: %s", self.name, error)
        finally:
            connection.close()
