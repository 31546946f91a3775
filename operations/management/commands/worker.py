from __future__ import annotations

from typing import Any

from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandParser

from operations.workers import WORKER_KINDS, worker_plan


class Command(BaseCommand):
    help = (
        "Run one production worker in the foreground, for a container or a process manager: "
        "--kind turns (queue threads, ENGINE_CONCURRENCY turns at once) or --kind background "
        "(queues indexing and default: indexing and the periodic maintenance, "
        "BACKGROUND_CONCURRENCY jobs at once). Run at least one of each; the web runs "
        "separately (`serve --no-worker`). A database outage does not end it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--kind", choices=tuple(WORKER_KINDS), default=None, help="turns or background"
        )
        parser.add_argument(
            "--queue",
            default=None,
            help="comma-separated queues instead of a kind: threads, or some of "
            "indexing,webhooks,default",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help="jobs at once (default ENGINE_CONCURRENCY for turns, BACKGROUND_CONCURRENCY "
            "for background)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        plan = worker_plan(
            kind=options["kind"], queues=options["queue"], concurrency=options["concurrency"]
        )
        # The kind is the worker's name: /readyz checks it (READYZ_WORKERS=turns,background).
        call_command(
            "run_worker",
            queues=",".join(plan.queues),
            concurrency=plan.concurrency,
            name=plan.kind,
            verbosity=options["verbosity"],
        )
