from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from operations.jobs import JOBS_PRUNE_BATCH_SIZE, finished_jobs_prune

# A hundred years: beyond it the cut-off date is out of range.
MAX_DAYS = 36_500


class Command(BaseCommand):
    help = (
        "Delete finished jobs (succeeded, failed, cancelled, aborted) whose last event is older "
        "than --days (default JOBS_RETENTION_DAYS), with their events, in batches: what the "
        "background worker does every hour."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days",
            type=int,
            default=None,
            help="age in days of the last event (default JOBS_RETENTION_DAYS)",
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=JOBS_PRUNE_BATCH_SIZE,
            help="jobs deleted per transaction",
        )
        parser.add_argument("--dry-run", action="store_true", help="report, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        days: int | None = options["days"]
        if days is None:
            days = settings.JOBS_RETENTION_DAYS
            if days == 0:
                raise CommandError(
                    "JOBS_RETENTION_DAYS is 0 (keep finished jobs for ever); pass --days N to "
                    "prune anyway."
                )
        if not 1 <= days <= MAX_DAYS:
            raise CommandError(f"--days must be between 1 and {MAX_DAYS}, got {days}.")
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1, got {options['batch_size']}.")
        result = finished_jobs_prune(
            older_than_days=days, batch_size=options["batch_size"], dry_run=options["dry_run"]
        )
        self.stdout.write(f"Found {result.jobs_deleted} finished job(s) older than {days} days.")
        if options["dry_run"]:
            self.stdout.write(self.style.WARNING("Dry run: nothing deleted."))
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"Deleted {result.jobs_deleted} job(s), {result.events_deleted} event(s) and "
                f"{result.periodic_defers_deleted} periodic-defer row(s) in {result.batches} "
                "batch(es)."
            )
        )
