from __future__ import annotations

import asyncio
import logging
import signal
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections
from procrastinate import PsycopgConnector
from procrastinate.contrib.django import app
from procrastinate.contrib.django.utils import connector_params
from procrastinate.worker import Worker

from conversations.services import THREADS_QUEUE
from core.parent_death import stop_with_supervisor
from operations.jobs import stalled_jobs_retry
from operations.routine_scheduler import SCHEDULER_QUEUE, routines_fired_until
from operations.turn_worker import TurnWorker
from operations.workers import (
    WORKER_NAME_INSERT_SQL,
    WORKER_NAME_PRUNE_SQL,
    job_pools,
    worker_name_params,
)

logger = logging.getLogger(__name__)

# Connections the worker itself uses to fetch, finish and listen for jobs; task code uses Django's
# pool. Fetching is one short statement, so a few serve any concurrency.
WORKER_POOL_SIZE = 4
# Procrastinate's worker stops when its database connection fails (its listener, heartbeat or
# fetch raises). This command then starts a fresh worker in the same process, waiting 0.5 s,
# 1 s, 2 s ... up to RESTART_BACKOFF_MAX_S between attempts; a worker that ran RESTART_HEALTHY_S
# resets the wait, so a later outage again recovers within a second of the database's return.
RESTART_BACKOFF_INITIAL_S = 0.5
RESTART_BACKOFF_MAX_S = 10.0
RESTART_HEALTHY_S = 30.0
DEFAULT_WORKER_NAME = "worker"


class Command(BaseCommand):
    help = (
        "Run a worker on the given queues with N jobs at once: the turn worker for the threads "
        "queue, a Procrastinate worker for the others. Unlike "
        "`procrastinate worker`, jobs deferred by task code stay in the task's own transaction, "
        "N sync jobs really run at once (one thread each), and a database outage does not end "
        "it: the worker is started again (with backoff) until the database answers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queues",
            required=True,
            help="comma-separated queues to serve, e.g. threads or indexing,default",
        )
        parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once")
        parser.add_argument(
            "--name",
            default=DEFAULT_WORKER_NAME,
            help="worker kind, shown in logs and checked by /readyz (turns, background)",
        )
        parser.add_argument(
            "--replaces",
            type=int,
            action="append",
            default=[],
            metavar="PID",
            help="a turn worker of this host that died, whose turns go back to the queue before "
            "the first claim (serve passes the one it saw exit); threads queue only",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        queues = [queue.strip() for queue in options["queues"].split(",") if queue.strip()]
        if not queues:
            raise CommandError("--queues must name at least one queue.")
        concurrency: int = options["concurrency"]
        if not 1 <= concurrency <= 1024:
            raise CommandError(f"--concurrency must be between 1 and 1024, got {concurrency}.")
        name: str = options["name"] or DEFAULT_WORKER_NAME
        # Under serve: SIGTERMed (a graceful stop) if serve dies without stopping it.
        stop_with_supervisor()

        if THREADS_QUEUE in queues:
            if len(queues) > 1:
                raise CommandError(
                    f"--queues {options['queues']!r}: the {THREADS_QUEUE} queue is served by a "
                    "worker of its own (the thread rows are its queue); run another for the rest."
                )
            self.stdout.write(f"Turn worker {name} with {concurrency} turns at once.")
            _turns_until_stopped(name=name, concurrency=concurrency, replaces=options["replaces"])
            return
        if options["replaces"]:
            raise CommandError(
                f"--replaces names a dead turn worker; this worker serves {options['queues']!r}, "
                f"not the {THREADS_QUEUE} queue."
            )
        pools = ", and ".join(
            f"{', '.join(pool_queues)} with {pool_concurrency} jobs at once"
            for pool_queues, pool_concurrency in job_pools(queues, concurrency)
        )
        self.stdout.write(f"Worker {name} on {pools}.")
        asyncio.run(_work_until_stopped(queues=queues, concurrency=concurrency, name=name))


def _turns_until_stopped(*, name: str, concurrency: int, replaces: list[int]) -> None:
    worker = TurnWorker(name=name, concurrency=concurrency, replaces=replaces)
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: worker.stop())
    worker.run()


async def _work_until_stopped(*, queues: list[str], concurrency: int, name: str) -> None:
    loop = asyncio.get_running_loop()
    # Sync tasks run on the loop's default executor, which Python sizes from the CPU count (6
    # threads on 2 cores); size it to the concurrency asked for.
    threads = sum(pool_concurrency for _queues, pool_concurrency in job_pools(queues, concurrency))
    loop.set_default_executor(ThreadPoolExecutor(max_workers=threads, thread_name_prefix="job"))
    stop_requested = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop_requested.set)

    backoff = RESTART_BACKOFF_INITIAL_S
    while not stop_requested.is_set():
        started = time.monotonic()
        try:
            await _run_one_worker(
                queues=queues, concurrency=concurrency, name=name, stop_requested=stop_requested
            )
            reason = "it stopped"
        except Exception as error:
            reason = f"{type(error).__name__}: {error}".strip()
        if stop_requested.is_set():
            return
        if time.monotonic() - started >= RESTART_HEALTHY_S:
            backoff = RESTART_BACKOFF_INITIAL_S
        logger.warning("worker %s ended (%s); starting a new one in %.1f s", name, reason, backoff)
        with suppress(TimeoutError):
            await asyncio.wait_for(stop_requested.wait(), timeout=backoff)
        backoff = min(backoff * 2, RESTART_BACKOFF_MAX_S)


async def _run_one_worker(
    *, queues: list[str], concurrency: int, name: str, stop_requested: asyncio.Event
) -> None:
    """Run the Procrastinate workers of the process's pools until one stops (a database error) or
    a stop is requested."""
    connector = PsycopgConnector(
        kwargs=connector_params("default"), min_size=1, max_size=WORKER_POOL_SIZE
    )
    # A second app sharing the task registry: the worker fetches jobs through its own pool,
    # while `app` (used by tasks and services to defer) keeps the Django connector, so a job
    # deferred inside a task's transaction commits or rolls back with it. Replacing the
    # connector of `app` itself, as `procrastinate worker` does, would defer on another
    # connection: a follow-up thread's run could be fetched before its thread row commits.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        worker_app = app.with_connector(connector)
    worker_app.perform_import_paths()

    stopping = asyncio.ensure_future(stop_requested.wait())
    try:
        opening = asyncio.ensure_future(worker_app.open_async())
        await asyncio.wait({opening, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not opening.done():
            # Stopped while the pool was still waiting for an unreachable database.
            opening.cancel()
            return
        opening.result()
        # The periodic deferrer defers through `app`, on Django's connection of asgiref's
        # thread-sensitive thread; one broken by the outage would fail it at once.
        await sync_to_async(close_old_connections)()
        worker_options: dict[str, Any] = {
            # The Django app's defaults hold its middleware that closes each job thread's
            # connection around every job, so a connection broken by an outage is not reused.
            **worker_app.worker_defaults,
            "name": name,
            # Signals stop this command's loop, which then stops the worker gracefully.
            "install_signal_handlers": False,
            "update_heartbeat_interval": settings.WORKER_HEARTBEAT_SECONDS,
            "stalled_worker_timeout": settings.WORKER_STALLED_SECONDS,
        }
        # One Procrastinate worker per pool (webhook deliveries apart), all registered under
        # this kind's name; when any of them ends (a database error), all are started again.
        workers = [
            Worker(
                app=worker_app, queues=pool_queues, concurrency=pool_concurrency, **worker_options
            )
            for pool_queues, pool_concurrency in job_pools(queues, concurrency)
        ]
        runs = [asyncio.ensure_future(worker.run()) for worker in workers]
        running = asyncio.ensure_future(asyncio.wait(runs, return_when=asyncio.FIRST_COMPLETED))
        sweeping = asyncio.ensure_future(_stalled_jobs_retried_until(running))
        # The routines scheduler runs beside the worker of the queue where maintenance runs.
        scheduling = asyncio.ensure_future(
            routines_fired_until(running) if SCHEDULER_QUEUE in queues else asyncio.sleep(0)
        )
        try:
            for worker in workers:
                await _record_worker_name(connector, worker, running, name)
        except Exception:
            # Unnamed, /readyz would call this kind missing: start over instead.
            for worker in workers:
                worker.stop()
            await asyncio.gather(*runs, return_exceptions=True)
            raise
        await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
        for worker in workers:
            worker.stop()
        # The first failure of any (the database went away) is this run's.
        await asyncio.gather(*runs)
        await running
        await sweeping
        await scheduling
    finally:
        stopping.cancel()
        with suppress(Exception):
            await worker_app.close_async()


async def _stalled_jobs_retried_until(running: asyncio.Future[Any]) -> None:
    """While the worker runs, put the jobs of dead workers back to ``todo`` every
    ``STALLED_JOBS_SWEEP_SECONDS``: a killed worker's job runs again within seconds of its
    worker being known dead, not at the next minute's maintenance job."""
    while True:
        await asyncio.wait({running}, timeout=settings.STALLED_JOBS_SWEEP_SECONDS)
        if running.done():
            return
        try:
            await sync_to_async(_stalled_jobs_retry, thread_sensitive=False)()
        except Exception as error:  # the database may be away; the worker's own loop says so
            logger.warning("stalled jobs not swept: %s", error)


def _stalled_jobs_retry() -> None:
    try:
        stalled_jobs_retry()
    finally:
        close_old_connections()


async def _record_worker_name(
    connector: PsycopgConnector, worker: Worker, running: asyncio.Future[Any], name: str
) -> None:
    while worker.worker_id is None and not running.done():
        await asyncio.sleep(0.01)
    if worker.worker_id is None:
        return
    await connector.execute_query_async(WORKER_NAME_PRUNE_SQL)
    await connector.execute_query_async(
        WORKER_NAME_INSERT_SQL, **worker_name_params(worker_id=worker.worker_id, name=name)
    )
