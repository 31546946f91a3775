from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workspace.services import VERSIONS_KEPT, versions_prune


class Command(BaseCommand):
    help = "Keep only the newest --keep versions of every document (batched)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--keep", type=int, default=VERSIONS_KEPT, help="versions kept per document"
        )
        parser.add_argument("--user-id", default=None, help="only this tenant")
        parser.add_argument("--batch-size", type=int, default=500, help="documents per batch")
        parser.add_argument("--dry-run", action="store_true", help="report, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["keep"] < 1:
            raise CommandError(f"--keep must be at least 1, got {options['keep']}.")
        if options["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1, got {options['batch_size']}.")
        result = versions_prune(
            keep=options["keep"],
            user_id=options["user_id"],
            batch_size=options["batch_size"],
            dry_run=options["dry_run"],
        )
        self.stdout.write(
            f"Found {result.documents} document(s) with more than {options['keep']} versions."
        )
        if options["dry_run"]:
            self.stdout.write(
                self.style.WARNING(f"Dry run: would delete {result.versions_deleted} version(s).")
            )
        else:
            self.stdout.write(self.style.SUCCESS(f"Deleted {result.versions_deleted} version(s)."))
