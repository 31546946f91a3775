from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.tasks import RUN_THREAD_QUEUE
from ironclaw_site.management.commands.serve import BACKGROUND_QUEUES

KINDS = ("turns", "background")


@dataclass(frozen=True)
class WorkerPlan:
    kind: str
    queues: tuple[str, ...]
    concurrency: int


def worker_plan(*, kind: str | None, queues: str | None, concurrency: int | None) -> WorkerPlan:
    """What one production worker serves: a kind's queues and concurrency, or the queues asked
    for (whose kind follows from them). Raises CommandError naming the option at fault."""
    if kind is None and queues is None:
        raise CommandError("Name what to serve: --kind turns|background or --queue QUEUES.")
    if queues is not None:
        asked = tuple(dict.fromkeys(name.strip() for name in queues.split(",") if name.strip()))
        known = (RUN_THREAD_QUEUE, *BACKGROUND_QUEUES)
        unknown = [name for name in asked if name not in known]
        if not asked or unknown:
            raise CommandError(
                f"--queue must be a comma-separated list of {', '.join(known)}; got {queues!r}."
            )
        # Turns never share a worker with indexing: a burst of indexing would delay them.
        if RUN_THREAD_QUEUE in asked and len(asked) > 1:
            raise CommandError(
                f"--queue {queues!r} mixes {RUN_THREAD_QUEUE} with other queues; run one worker "
                f"for {RUN_THREAD_QUEUE} and another for the rest, so indexing never delays a "
                "turn."
            )
        implied = "turns" if asked == (RUN_THREAD_QUEUE,) else "background"
        if kind is not None and kind != implied:
            raise CommandError(f"--kind {kind} does not serve --queue {queues!r}.")
        kind = implied
    else:
        asked = (RUN_THREAD_QUEUE,) if kind == "turns" else BACKGROUND_QUEUES
    if concurrency is None:
        concurrency = (
            settings.ENGINE_CONCURRENCY if kind == "turns" else settings.BACKGROUND_CONCURRENCY
        )
    if not 1 <= concurrency <= 1024:
        raise CommandError(f"--concurrency must be between 1 and 1024, got {concurrency}.")
    assert kind is not None
    return WorkerPlan(kind=kind, queues=asked, concurrency=concurrency)


class Command(BaseCommand):
    help = (
        "Run one production worker in the foreground, for a container or a process manager: "
        "--kind turns (queue threads, ENGINE_CONCURRENCY turns at once) or --kind background "
        "(queues indexing and default: indexing and the periodic maintenance, "
        "BACKGROUND_CONCURRENCY jobs at once). Run at least one of each; the web runs "
        "separately (`serve --no-worker`). A database outage does not end it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--kind", choices=KINDS, default=None, help="turns or background")
        parser.add_argument(
            "--queue",
            default=None,
            help="comma-separated queues instead of a kind: threads, or some of indexing,default",
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
