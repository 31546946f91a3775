from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from workspace.services import workspace_hygiene


class Command(BaseCommand):
    help = (
        "Delete documents older than their folder's retention: every .config whose metadata has "
        "hygiene.enabled removes its folder's immediate documents not updated for "
        "hygiene.retention_days (default 30); a document's own hygiene metadata overrides its "
        "folder's."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--user-id", default=None, help="only this tenant")
        parser.add_argument("--dry-run", action="store_true", help="report, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        result = workspace_hygiene(user_id=options["user_id"], dry_run=options["dry_run"])
        self.stdout.write(
            f"Found {result.folders} folder(s) with hygiene enabled and "
            f"{result.documents_deleted} expired document(s)."
        )
        if options["verbosity"] >= 2:
            for path in result.deleted_paths or []:
                self.stdout.write(f"  {path}")
        if options["dry_run"]:
            self.stdout.write(self.style.WARNING("Dry run: nothing deleted."))
        else:
            self.stdout.write(
                self.style.SUCCESS(f"Deleted {result.documents_deleted} document(s).")
            )
