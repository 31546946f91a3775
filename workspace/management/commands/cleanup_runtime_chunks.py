from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workspace.services import RuntimeCleanup, runtime_chunks_cleanup


class Command(BaseCommand):
    help = (
        "Recompute runtime flags from WORKSPACE_RUNTIME_PATHS and delete the chunks (and with "
        "--include-versions the versions) of runtime documents. Batched, one transaction per "
        "batch: safe while traffic flows, and a rerun resumes where an interrupted run stopped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="report, change nothing")
        parser.add_argument("--batch-size", type=int, default=500, help="documents per batch")
        parser.add_argument("--user-id", default=None, help="only this tenant")
        parser.add_argument(
            "--include-versions", action="store_true", help="also delete their version rows"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1, got {options['batch_size']}.")
        verbosity = options["verbosity"]

        def progress(summary: RuntimeCleanup) -> None:
            if verbosity >= 2:
                self.stdout.write(
                    f"  batch {summary.batches}: {summary.flagged_runtime} flagged, "
                    f"{summary.chunks_deleted} chunks deleted so far"
                )

        result = runtime_chunks_cleanup(
            user_id=options["user_id"],
            batch_size=options["batch_size"],
            include_versions=options["include_versions"],
            dry_run=options["dry_run"],
            progress=progress,
        )
        self.stdout.write(
            f"Found {result.documents_found} document(s) whose runtime flag is out of date "
            f"({result.flagged_runtime} now runtime, {result.unflagged} no longer runtime)."
        )
        versions = f", {result.versions_deleted} version(s)" if options["include_versions"] else ""
        if options["dry_run"]:
            self.stdout.write(
                self.style.WARNING(
                    f"Dry run: would delete {result.chunks_deleted} chunk(s){versions}."
                )
            )
        else:
            self.stdout.write(
                self.style.SUCCESS(f"Deleted {result.chunks_deleted} chunk(s){versions}.")
            )
