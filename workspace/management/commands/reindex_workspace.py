from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from workspace.errors import InvalidPath
from workspace.paths import normalise_directory
from workspace.selectors import documents_for_reindex
from workspace.services import documents_reindex


class Command(BaseCommand):
    help = (
        "Re-index workspace documents (never runtime ones): enqueue a job each, or index them "
        "now when WORKSPACE_INDEXING=inline."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user-id", default=None, help="only this tenant")
        parser.add_argument("--path-prefix", default=None, help="only paths under this folder")
        parser.add_argument(
            "--stale-only",
            action="store_true",
            help="only documents pending, failed or indexed from older content",
        )
        parser.add_argument("--dry-run", action="store_true", help="report, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        prefix = options["path_prefix"]
        if prefix is not None:
            try:
                prefix = normalise_directory(prefix)
            except InvalidPath as error:
                raise CommandError(f"--path-prefix: {error.message}") from None
            prefix = f"{prefix}/" if prefix else None
        documents = documents_for_reindex(
            user_id=options["user_id"], path_prefix=prefix, stale_only=options["stale_only"]
        )
        ids = list(documents.values_list("pk", flat=True))
        self.stdout.write(f"Found {len(ids)} document(s) to reindex.")
        if options["dry_run"]:
            self.stdout.write(self.style.WARNING("Dry run: nothing reindexed."))
            return

        def progress(done: int) -> None:
            if options["verbosity"] >= 2 and (done % 100 == 0 or done == len(ids)):
                self.stdout.write(f"  {done}/{len(ids)}")

        outcomes = documents_reindex(document_ids=ids, progress=progress)
        summary = ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items()))
        self.stdout.write(
            self.style.SUCCESS(
                f"Reindexed ({settings.WORKSPACE_INDEXING}): {summary or 'nothing to do'}."
            )
        )
