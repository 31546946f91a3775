from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.services import api_key_create
from core.errors import InvalidInput


class Command(BaseCommand):
    help = (
        "Create an API key and print it once on stdout (only its hash is stored). "
        "A tenant key acts as USER_ID; a --service key acts for the tenant named in each "
        "request's X-User-Id header."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("user_id", nargs="?", help="the tenant this key acts as")
        parser.add_argument(
            "--service",
            action="store_true",
            help="create a service key (engines, bridges) that may act for any tenant",
        )
        parser.add_argument(
            "--name",
            default=None,
            help="a label for the key (default: 'default', or 'service' with --service)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        user_id: str | None = options["user_id"]
        is_service: bool = options["service"]
        if is_service and user_id:
            raise CommandError(
                "user_id: a --service key acts for the tenant named in each request's "
                "X-User-Id header; omit user_id."
            )
        if not is_service and not user_id:
            raise CommandError("user_id is required for a tenant key (or pass --service).")
        name = (
            options["name"]
            if options["name"] is not None
            else ("service" if is_service else "default")
        )
        try:
            created = api_key_create(name=name, user_id=user_id, is_service=is_service)
        except InvalidInput as error:
            option = "--name" if "name" in error.details else "user_id"
            raise CommandError(f"{option}: {error.message}") from None

        owner = "service key" if is_service else f"key for {user_id}"
        if options["verbosity"] >= 1:
            self.stderr.write(
                self.style.SUCCESS(
                    f"Created {owner} {created.api_key.name!r} (id {created.api_key.pk}). "
                    "It is shown once; store it now."
                )
            )
        self.stdout.write(created.raw_key)
