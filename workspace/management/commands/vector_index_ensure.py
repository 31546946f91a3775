from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from workspace.embeddings import embedding_provider
from workspace.hnsw import pgvector_version, vector_index_supported
from workspace.services import (
    VectorIndexUnavailable,
    stored_dimensions,
    vector_index_ensure,
)


class Command(BaseCommand):
    help = (
        "Create the HNSW index of the configured embedding model and size if it is missing "
        "(CREATE INDEX CONCURRENTLY: writes go on during the build). Idempotent: run it after "
        "migrate and after changing EMBEDDING_PROVIDER, EMBEDDING_MODEL or EMBEDDING_DIMENSIONS."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dry-run", action="store_true", help="report, change nothing")

    def handle(self, *args: Any, **options: Any) -> None:
        provider = embedding_provider()
        if not provider.name:
            self.stdout.write("Found no embedding model (EMBEDDING_PROVIDER=none): nothing to do.")
            return
        dimensions = provider.dimensions or stored_dimensions(model=provider.name)
        if dimensions is None:
            self.stdout.write(
                f"Found no stored vector of {provider.name!r} and no EMBEDDING_DIMENSIONS: "
                "nothing to index yet (rerun after indexing, or set EMBEDDING_DIMENSIONS)."
            )
            return
        version = ".".join(map(str, pgvector_version())) or "none"
        if not vector_index_supported():
            self.stdout.write(
                self.style.WARNING(
                    f"Found pgvector {version}, without iterative index scans (0.8+): search "
                    "scans exactly, so no index is built."
                )
            )
            return
        try:
            result = vector_index_ensure(
                model=provider.name, dimensions=dimensions, dry_run=options["dry_run"]
            )
        except VectorIndexUnavailable as error:
            raise CommandError(str(error)) from None
        self.stdout.write(
            f"Found pgvector {version}; model {result.model!r} at {result.dimensions} dimensions: "
            f"index {result.name}."
        )
        if result.action == "present":
            self.stdout.write(self.style.SUCCESS("Index present and valid: nothing to do."))
        elif result.action.startswith("would"):
            self.stdout.write(self.style.WARNING(f"Dry run: {result.action} the index."))
        else:
            self.stdout.write(self.style.SUCCESS(f"Index {result.action}."))
