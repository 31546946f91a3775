from __future__ import annotations

import signal
import subprocess
import sys
import time
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from conversations.tasks import RUN_THREAD_QUEUE

# Every queue but the turns': indexing, and "default" where periodic maintenance (the lease
# sweeper) runs. A new queue must be added here or no worker serves it.
BACKGROUND_QUEUES = ("indexing", "default")


class Command(BaseCommand):
    help = (
        "Serve the app (WEB_CONCURRENCY waitress processes) and run its workers, in the "
        "foreground: the turn worker (queue threads, ENGINE_CONCURRENCY turns at once) and the "
        "background worker (indexing and maintenance), so indexing never delays a turn. Ctrl-C "
        "(or SIGTERM) stops all; if one exits, the others are stopped too."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.HOST, help="address to bind (HOST)")
        parser.add_argument("--port", type=int, default=settings.PORT, help="port to bind (PORT)")
        parser.add_argument("--no-worker", action="store_true", help="serve HTTP only")
        parser.add_argument(
            "--no-engine",
            action="store_true",
            help="run no turn worker: threads wait for external engines (threads/next)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        port: int = options["port"]
        if not 0 < port < 65536:
            raise CommandError(f"--port must be between 1 and 65535, got {port}.")
        # WEB_CONCURRENCY waitress processes share the port (SO_REUSEPORT): see serve_web.
        commands = {
            f"web{index}": [
                sys.executable,
                "manage.py",
                "serve_web",
                "--host",
                options["host"],
                "--port",
                str(port),
            ]
            for index in range(1, settings.WEB_CONCURRENCY + 1)
        }
        if not options["no_worker"]:
            worker = [sys.executable, "manage.py", "run_worker"]
            if not options["no_engine"]:
                commands["turns"] = [
                    *worker,
                    "--queues",
                    RUN_THREAD_QUEUE,
                    "--concurrency",
                    str(settings.ENGINE_CONCURRENCY),
                    "--name",
                    "turns",
                ]
            commands["background"] = [
                *worker,
                "--queues",
                ",".join(BACKGROUND_QUEUES),
                "--concurrency",
                str(settings.BACKGROUND_CONCURRENCY),
                "--name",
                "background",
            ]

        children = {
            name: subprocess.Popen(argv, cwd=settings.BASE_DIR) for name, argv in commands.items()
        }
        self.stdout.write(
            f"Serving on http://{options['host']}:{port}/ with {', '.join(children)}; Ctrl-C stops."
        )

        stopping = False

        def stop(signum: int, frame: FrameType | None) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)

        exit_code = 0
        while not stopping:
            exited = {name: child.poll() for name, child in children.items()}
            failed = {name: code for name, code in exited.items() if code is not None}
            if failed:
                for name, code in failed.items():
                    self.stderr.write(f"{name} exited with status {code}; stopping the rest.")
                exit_code = 1
                break
            time.sleep(0.2)

        for child in children.values():
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for name, child in children.items():
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.stderr.write(f"{name} did not stop in time; killing it.")
                child.kill()
                child.wait()
        if exit_code:
            raise CommandError("A child process exited unexpectedly.", returncode=exit_code)
        self.stdout.write("Stopped.")
