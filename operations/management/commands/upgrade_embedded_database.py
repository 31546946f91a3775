from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from core.embedded import (
    POSTGRES_VERSION,
    EmbeddedUpgradeRefused,
    embedded_database_upgrade,
    embedded_database_upgrade_check,
)


class Command(BaseCommand):
    help = (
        f"Upgrade the embedded database folder (EMBEDDED_DATABASE_DIR) made by an older "
        f"PostgreSQL to PostgreSQL {POSTGRES_VERSION} with pg_upgrade, keeping the original "
        "folder as <folder>.old. Stop every process of the checkout first."
    )
    # The checks would start nothing, but this command must run before any connection can.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--dry-run", action="store_true", help="say what would be upgraded; change nothing"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.USING_EMBEDDED_DATABASE:
            raise CommandError("DATABASE_URL is set: there is no embedded database to upgrade.")
        folder = Path(settings.EMBEDDED_DATABASE_DIR).expanduser().resolve()
        try:
            version = embedded_database_upgrade_check(folder)
        except EmbeddedUpgradeRefused as error:
            raise CommandError(str(error)) from None
        if options["verbosity"] >= 1:
            self.stdout.write(f"Found a PostgreSQL {version} data folder in {folder}.")
        if options["dry_run"]:
            self.stdout.write(
                f"Dry run: would upgrade it to PostgreSQL {POSTGRES_VERSION} and keep the "
                f"original as {folder}.old."
            )
            return
        try:
            original = embedded_database_upgrade(folder)
        except EmbeddedUpgradeRefused as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            self.style.SUCCESS(
                f"Upgraded {folder} to PostgreSQL {POSTGRES_VERSION}; the original is in "
                f"{original} (delete it once you are happy with the upgrade)."
            )
        )
