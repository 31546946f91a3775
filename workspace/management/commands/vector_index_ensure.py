from __future__ import annotations

from typing import Any

from django.conf import settings
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
        "Give every tenant with more than SEARCH_HNSW_MIN_CHUNKS chunks of the configured "
        "embedding model and size an HNSW index of its own, and measure its recall (CREATE INDEX "
        "CONCURRENTLY: writes go on during a build); drop the indexes no longer used. Idempotent; "
        "a periodic job runs it every 10 minutes."
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
            f"{len(result.present)} tenant indexes present and valid, "
            f"{len(result.built)} to build or measure, {len(result.dropped)} to drop "
            f"(tenants over SEARCH_HNSW_MIN_CHUNKS={settings.SEARCH_HNSW_MIN_CHUNKS} chunks)."
        )
        for name in result.dropped:
            verb = "Dry run: would drop" if options["dry_run"] else "Dropped"
            self.stdout.write(self.style.WARNING(f"{verb} index {name}."))
        for built in result.built:
            if built.action.startswith("would"):
                self.stdout.write(
                    self.style.WARNING(
                        f"Dry run: {built.action} the index of {built.user_id!r} "
                        f"({built.chunks} chunks)."
                    )
                )
                continue
            measured = built.measured
            assert measured is not None
            if measured.recall < settings.SEARCH_RECALL_FLOOR:
                verdict = ", below SEARCH_RECALL_FLOOR: search scans this tenant exactly"
            elif measured.index_ms >= measured.exact_ms:
                verdict = ", no faster than the exact scan (raise SEARCH_HNSW_MIN_CHUNKS?)"
            else:
                verdict = ""
            self.stdout.write(
                self.style.SUCCESS(
                    f"Index of {built.user_id!r} {built.action} ({built.chunks} chunks) in "
                    f"{built.seconds:.1f}s: recall@10 {measured.recall:.3f} at ef_search "
                    f"{measured.ef_search}, {measured.index_ms:.1f} ms a query against "
                    f"{measured.exact_ms:.1f} ms exact{verdict}."
                )
            )
        if not result.built and not result.dropped:
            self.stdout.write(self.style.SUCCESS("Nothing to do."))
