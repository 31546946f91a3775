from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.servers.basehttp import get_internal_wsgi_application

from core.parent_death import stop_with_supervisor
from operations import web_server

# The file this process touches while it serves, named by `serve` (one per web process).
LIVENESS_ENV = "IRONCLAW_WEB_LIVENESS_FILE"


class Command(BaseCommand):
    help = (
        "Serve the app over HTTP with waitress in this process (WEB_THREADS request threads). "
        "Several may serve one port at once: `serve` starts WEB_CONCURRENCY of them."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.HOST, help="address to bind (HOST)")
        parser.add_argument("--port", type=int, default=settings.PORT, help="port to bind (PORT)")
        parser.add_argument(
            "--threads", type=int, default=settings.WEB_THREADS, help="request threads"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        port: int = options["port"]
        if not 0 < port < 65536:
            raise CommandError(f"--port must be between 1 and 65535, got {port}.")
        if options["threads"] < 1:
            raise CommandError(f"--threads must be at least 1, got {options['threads']}.")
        # Under serve: SIGTERMed (a graceful stop) if serve dies without stopping it.
        stop_with_supervisor()
        # The project's WSGI_APPLICATION, as runserver finds it (the wiring imports this app).
        application = get_internal_wsgi_application()

        try:
            web_server.serve(
                application,
                host=options["host"],
                port=port,
                threads=options["threads"],
                request_timeout=settings.WEB_REQUEST_TIMEOUT,
                max_header_bytes=settings.WEB_MAX_HEADER_BYTES,
                max_body_bytes=settings.DATA_UPLOAD_MAX_MEMORY_SIZE,
                trusted_proxy=settings.WEB_TRUSTED_PROXY,
                trusted_proxy_headers=settings.WEB_TRUSTED_PROXY_HEADERS,
                trusted_proxy_count=settings.WEB_TRUSTED_PROXY_COUNT,
                # Set by `serve` for each web process it supervises (see LivenessProbe).
                liveness_file=Path(liveness)
                if (liveness := os.environ.get(LIVENESS_ENV))
                else None,
            )
        except OSError as error:
            raise CommandError(f"Cannot serve on {options['host']}:{port}: {error}") from None
