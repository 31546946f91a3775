from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from engine.retention import (
    CHECKPOINTS_PRUNE_BATCH_SIZE,
    MAX_RETENTION_DAYS,
    CheckpointsPruneResult,
    checkpoints_prune,
)


class Command(BaseCommand):
    help = (
        "Delete the engine checkpoints of threads finished more than --days ago (default "
        "RUNTIME_RETENTION_DAYS) and of threads or conversations that no longer exist, in "
        "batches: what the background worker does every hour. Live threads (waiting and "
        "suspended ones included) keep theirs."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="days since the thread finished and the checkpoint was last written "
            "(default RUNTIME_RETENTION_DAYS)",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=CHECKPOINTS_PRUNE_BATCH_SIZE,
            help="checkpoints deleted per transaction",
        )
        parser.add_argument("--dry-run", action="store_true", help="report, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        days: int | None = options["days"]
        if days is None:
            days = settings.RUNTIME_RETENTION_DAYS
            if days == 0:
                raise CommandError(
                    "RUNTIME_RETENTION_DAYS is 0 (keep checkpoints for ever); pass --days N to "
                    "prune anyway."
                )
        if not 1 <= days <= MAX_RETENTION_DAYS:
            raise CommandError(f"--days must be between 1 and {MAX_RETENTION_DAYS}, got {days}.")
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1, got {options['batch_size']}.")

        def progress(result: CheckpointsPruneResult) -> None:
            if options["verbosity"] >= 2:
                self.stdout.write(
                    f"  batch {result.batches}: {result.checkpoints} checkpoint(s) so far"
                )

        result = checkpoints_prune(
            older_than_days=days,
            batch_size=options["batch_size"],
            dry_run=options["dry_run"],
            progress=progress,
        )
        self.stdout.write(
            f"Found {result.thread_checkpoints} thread and {result.conversation_checkpoints} "
            f"conversation checkpoint(s) past {days} days ({_size(result.stored_bytes)})."
        )
        if options["dry_run"]:
            self.stdout.write(self.style.WARNING("Dry run: nothing deleted."))
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Deleted {result.checkpoints} checkpoint(s) in {result.batches} batch(es)."
            )
        )


def _size(stored_bytes: int) -> str:
    if stored_bytes < 1024 * 1024:
        return f"{stored_bytes / 1024:.1f} KiB stored"
    return f"{stored_bytes / 1024 / 1024:.1f} MiB stored"
