from __future__ import annotations

import asyncio
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from procrastinate import PsycopgConnector
from procrastinate.contrib.django import app
from procrastinate.contrib.django.utils import connector_params

# Connections the worker itself uses to fetch, finish and listen for jobs; task code uses Django's
# pool. Fetching is one short statement, so a few serve any concurrency.
WORKER_POOL_SIZE = 4


class Command(BaseCommand):
    help = (
        "Run a Procrastinate worker on the given queues with N jobs at once. Unlike "
        "`procrastinate worker`, jobs deferred by task code stay in the task's own transaction, "
        "and N sync jobs really run at once (one thread each)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--queues",
            required=True,
            help="comma-separated queues to serve, e.g. threads or indexing,default",
        )
        parser.add_argument("--concurrency", type=int, default=1, help="jobs run at once")
        parser.add_argument("--name", default=None, help="worker name shown in the job table")

    def handle(self, *args: Any, **options: Any) -> None:
        queues = [queue.strip() for queue in options["queues"].split(",") if queue.strip()]
        if not queues:
            raise CommandError("--queues must name at least one queue.")
        concurrency: int = options["concurrency"]
        if not 1 <= concurrency <= 1024:
            raise CommandError(f"--concurrency must be between 1 and 1024, got {concurrency}.")

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

        async def work() -> None:
            # Sync tasks run on the loop's default executor, which Python sizes from the CPU
            # count (6 threads on 2 cores); size it to the concurrency asked for.
            asyncio.get_running_loop().set_default_executor(
                ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="job")
            )
            async with worker_app.open_async():
                await worker_app.run_worker_async(
                    queues=queues, concurrency=concurrency, name=options["name"]
                )

        self.stdout.write(f"Worker on {', '.join(queues)} with {concurrency} jobs at once.")
        asyncio.run(work())
