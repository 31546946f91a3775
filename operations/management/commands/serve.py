from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connection
from prometheus_client import multiprocess

from core.parent_death import SUPERVISOR_PID_ENV
from operations.management.commands.serve_web import LIVENESS_ENV
from operations.workers import BACKGROUND, TURNS, WORKER_KINDS

# A child that exits is started again after RESTART_BACKOFF_INITIAL_S, doubling after each exit
# up to RESTART_BACKOFF_MAX_S, so a child that cannot start (a port taken, a bad setting) is
# retried without spinning. One that ran RESTART_HEALTHY_S before exiting is restarted at once
# again: a crash after a day of service is not the same failure as the last one.
RESTART_BACKOFF_INITIAL_S = 0.5
RESTART_BACKOFF_MAX_S = 30.0
RESTART_HEALTHY_S = 60.0
POLL_INTERVAL_S = 0.2
# How long each group of children (web processes, then workers) may take to stop after SIGTERM
# before it is killed. A turn worker stops in well under a second: it hands its turns back
# instead of waiting for their model calls.
STOP_GRACE_S = 15.0
STOP_POLL_INTERVAL_S = 0.05
# Signals that stop serve: Ctrl-C, a supervisor's SIGTERM, and the terminal closing (its
# children run in sessions of their own, so none of these reaches them but through serve).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def child_commands(
    *, host: str, port: int, with_workers: bool, with_engine: bool
) -> dict[str, list[str]]:
    """The processes ``serve`` runs and keeps running, by name."""
    # WEB_CONCURRENCY waitress processes share the port (SO_REUSEPORT): see serve_web. Each is
    # supervised on its own, so one dying leaves the others answering.
    commands = {
        f"web{index}": [
            sys.executable,
            "manage.py",
            "serve_web",
            "--host",
            host,
            "--port",
            str(port),
        ]
        for index in range(1, settings.WEB_CONCURRENCY + 1)
    }
    if with_workers:
        # Each is a Procrastinate worker named after its kind: /readyz checks its heartbeats.
        for kind in (TURNS, BACKGROUND) if with_engine else (BACKGROUND,):
            commands[kind.name] = [
                *(sys.executable, "manage.py", "run_worker"),
                *("--queues", ",".join(kind.queues)),
                *("--concurrency", str(kind.concurrency)),
                *("--name", kind.name),
            ]
    return commands


def metrics_folder_reset(folder: Path) -> Path:
    """Create the metrics folder, or empty it of a previous run's files (counters must start from
    zero with the processes that write them). Only the metric files: the folder may be shared."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):
        stale.unlink(missing_ok=True)
    return folder


def exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


@dataclass
class Supervised:
    """One child and its restart schedule."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restart_at: float | None = None
    backoff: float = RESTART_BACKOFF_INITIAL_S
    restarts: int = 0

    # A web process touches this file while it serves (serve_web's LivenessProbe).
    liveness_file: Path | None = None
    # The turn worker's pid when it died: its replacement gives that one's turns back to the
    # queue at once (run_worker --replaces), instead of waiting for its heartbeat to go stale.
    replaces: int | None = None

    def start(self, env: dict[str, str]) -> None:
        if self.liveness_file is not None:
            self.liveness_file.unlink(missing_ok=True)
            env = {**env, LIVENESS_ENV: str(self.liveness_file)}
        # The child stops (SIGTERM) when serve dies, even SIGKILLed (core.parent_death).
        env = {**env, SUPERVISOR_PID_ENV: str(os.getpid())}
        argv = list(self.argv)
        if self.replaces is not None:
            argv += ["--replaces", str(self.replaces)]
        # A session of its own: a terminal's Ctrl-C reaches serve alone, which stops the
        # children in order (web, workers, database) rather than all at once.
        self.process = subprocess.Popen(
            argv, cwd=settings.BASE_DIR, env=env, start_new_session=True
        )
        self.started_at = time.monotonic()
        self.restart_at = None

    def silent_for(self, now: float) -> float:
        """Seconds since this web process last showed it serves (since its start, if never)."""
        assert self.liveness_file is not None
        try:
            touched_ago = time.time() - self.liveness_file.stat().st_mtime
        except FileNotFoundError:
            touched_ago = float("inf")
        return min(touched_ago, now - self.started_at)

    def process_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def dead_pid(self) -> int | None:
        """The pid of this child's last process if it ended without stopping by itself (killed,
        or a failure), whether serve saw it die earlier (its restart pending) or killed it."""
        if self.process is None or self.process.poll() in (None, 0):
            return None
        return self.process.pid

    def schedule_restart(self, now: float) -> float:
        """Plan the next start after an exit; return the wait."""
        if now - self.started_at >= RESTART_HEALTHY_S:
            self.backoff = RESTART_BACKOFF_INITIAL_S
        wait = self.backoff
        self.restart_at = now + wait
        self.backoff = min(self.backoff * 2, RESTART_BACKOFF_MAX_S)
        return wait


@dataclass
class EmbeddedServerWatch:
    """The embedded PostgreSQL, started again with backoff when its postmaster dies."""

    folder: Path
    socket_dir: str
    retry_at: float = 0.0
    backoff: float = RESTART_BACKOFF_INITIAL_S


class Command(BaseCommand):
    help = (
        "Serve the app (WEB_CONCURRENCY waitress processes) and run its workers, in the "
        "foreground: the turn worker (queue threads, ENGINE_CONCURRENCY turns at once) and the "
        "background worker (indexing and maintenance), so indexing never delays a turn. A child "
        "that exits or is killed is started again with backoff, without stopping the others; "
        "with no DATABASE_URL, so is the embedded PostgreSQL. Ctrl-C (or SIGTERM) stops all in "
        "order: web, workers (turns in flight are handed back), then the embedded PostgreSQL; "
        "a second Ctrl-C kills the children."
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
        commands = child_commands(
            host=options["host"],
            port=port,
            with_workers=not options["no_worker"],
            with_engine=not options["no_engine"],
        )
        children = [Supervised(name, argv) for name, argv in commands.items()]
        liveness_folder = Path(tempfile.mkdtemp(prefix="ironclaw-serve-"))
        for child in children:
            if child.name.startswith("web"):
                child.liveness_file = liveness_folder / f"{child.name}.alive"
        # /readyz in the web process then reports a missing worker of the ones serve runs.
        # An operator's own values in the environment win.
        self.child_env = {
            "READYZ_WORKERS": ",".join(name for name in commands if name in WORKER_KINDS),
            **({} if options["no_worker"] else {"READYZ_REQUIRE_WORKER": "true"}),
            **os.environ,
            # Every child records its metrics here, so a scrape of any web process sums them all.
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_folder_reset(Path(settings.METRICS_DIR))),
        }
        embedded = self._embedded_server_watch()

        # The first signal stops gracefully, the second forces.
        self.stop_signals = 0

        def stop(signum: int, frame: FrameType | None) -> None:
            self.stop_signals += 1

        for signum in STOP_SIGNALS:
            signal.signal(signum, stop)

        try:
            for child in children:
                child.start(self.child_env)
            self.stdout.write(
                f"Serving on http://{options['host']}:{port}/ with "
                f"{', '.join(child.name for child in children)}; Ctrl-C stops."
            )
            while not self.stop_signals:
                now = time.monotonic()
                if embedded is not None:
                    self._watch_embedded_server(embedded, now)
                for child in children:
                    self._watch_child(child, now)
                time.sleep(POLL_INTERVAL_S)
        finally:
            # Also after an error of serve's own: no child is left running without it.
            self._stop(children, embedded)
            shutil.rmtree(liveness_folder, ignore_errors=True)

    def _stop(self, children: list[Supervised], embedded: EmbeddedServerWatch | None) -> None:
        """Stop in order: the web processes (no new requests), the workers (the turn worker
        hands its turns back), then, last, the embedded PostgreSQL they all used."""
        stopping_at = time.monotonic()
        self._say(
            "Stopping: the web processes, then the workers (turns in flight are handed back)"
            + (", then the embedded PostgreSQL" if embedded is not None else "")
            + ". Ctrl-C again to force."
        )
        self._stop_children([child for child in children if child.liveness_file is not None])
        workers = [child for child in children if child.liveness_file is None]
        self._stop_children(workers)
        self._give_back_dead_turn_workers_turns(workers)
        if embedded is not None:
            self._stop_embedded_server(embedded)
        self._say(f"Stopped in {time.monotonic() - stopping_at:.1f} s.")

    def _say(self, message: str, *, error: bool = False) -> None:
        """Write a line while stopping; a terminal that closed (SIGHUP) must not end the stop."""
        with suppress(OSError):
            (self.stderr if error else self.stdout).write(message)

    def _embedded_server_watch(self) -> EmbeddedServerWatch | None:
        if not settings.USING_EMBEDDED_DATABASE:
            return None
        from core.embedded import embedded_database_settings_resolve

        # Started (or joined) here, before any child: serve holds it for as long as it runs, so
        # children that exit and start again never stop it, and the watch learns its socket.
        embedded_database_settings_resolve(connection.settings_dict)
        return EmbeddedServerWatch(
            folder=Path(settings.EMBEDDED_DATABASE_DIR),
            socket_dir=str(connection.settings_dict["HOST"]),
        )

    def _watch_embedded_server(self, watch: EmbeddedServerWatch, now: float) -> None:
        from core.embedded import (
            EmbeddedRestartFailed,
            embedded_database_restart_if_dead,
        )

        if now < watch.retry_at:
            return
        try:
            restarted = embedded_database_restart_if_dead(watch.folder, watch.socket_dir)
        except EmbeddedRestartFailed as error:
            self.stderr.write(
                f"embedded PostgreSQL is down and did not start ({error}); "
                f"retrying in {watch.backoff:.1f} s"
            )
            watch.retry_at = now + watch.backoff
            watch.backoff = min(watch.backoff * 2, RESTART_BACKOFF_MAX_S)
            return
        if restarted:
            self.stderr.write("embedded PostgreSQL had died; it runs again.")
        watch.backoff = RESTART_BACKOFF_INITIAL_S

    def _watch_child(self, child: Supervised, now: float) -> None:
        assert child.process is not None
        if child.restart_at is not None:
            if now >= child.restart_at:
                child.restarts += 1
                child.start(self.child_env)
                self.stderr.write(f"{child.name} started again (restart {child.restarts}).")
            return
        returncode = child.process.poll()
        if returncode is None:
            if child.liveness_file is not None:
                silent = child.silent_for(now)
                if silent > settings.WEB_HANG_SECONDS:
                    # Alive but not serving: its share of the port's connections would hang.
                    self.stderr.write(
                        f"{child.name} has not served for {silent:.0f} s "
                        f"(WEB_HANG_SECONDS={settings.WEB_HANG_SECONDS}); killing it."
                    )
                    child.process.kill()
            return
        # Its gauges ("in use now") no longer count; its counters and histograms still do.
        metrics_folder = self.child_env["PROMETHEUS_MULTIPROC_DIR"]
        multiprocess.mark_process_dead(child.process.pid, metrics_folder)
        if child.name == TURNS.name:
            child.replaces = child.process.pid
        wait = child.schedule_restart(now)
        self.stderr.write(
            f"{child.name} {exit_reason(returncode)} after {now - child.started_at:.1f} s; "
            f"starting it again in {wait:.1f} s."
        )

    def _stop_children(self, children: list[Supervised]) -> None:
        """SIGTERM the running ``children`` and wait for them; kill those still running after
        STOP_GRACE_S, or at once after a second stop signal."""
        running = [child for child in children if child.process and child.process.poll() is None]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while running := [child for child in running if child.process_running()]:
            if self.stop_signals > 1:
                self._say(f"Forced: killing {', '.join(child.name for child in running)}.")
            elif time.monotonic() >= deadline:
                names = ", ".join(child.name for child in running)
                self._say(f"{names} did not stop within {STOP_GRACE_S:.0f} s; killing.", error=True)
            else:
                time.sleep(STOP_POLL_INTERVAL_S)
                continue
            for child in running:
                assert child.process is not None
                child.process.kill()
                child.process.wait()

    def _give_back_dead_turn_workers_turns(self, workers: list[Supervised]) -> None:
        """Give back the turns of turn workers that did not stop by themselves (killed, crashed,
        or dead and not started again), as their replacement would have. One that stopped by
        itself handed its turns back already."""
        from conversations.services import thread_leases_sweep

        dead = [
            pid
            for child in workers
            if child.name == TURNS.name and (pid := child.dead_pid()) is not None
        ]
        if not dead:
            return
        try:
            swept = thread_leases_sweep(dead_pids=dead)
        except Exception as error:
            # Their heartbeats stopped: the next start's turn worker takes them once they count
            # as dead (TURN_WORKER_DEAD_SECONDS).
            self._say(f"could not give back the killed turn worker's turns: {error}", error=True)
            return
        finally:
            connection.close()
        if swept.requeued or swept.stopped:
            self._say(
                f"{len(swept.requeued)} turns of the killed turn worker are back in the queue"
                + (f", {len(swept.stopped)} stopped" if swept.stopped else "")
                + "."
            )

    def _stop_embedded_server(self, watch: EmbeddedServerWatch) -> None:
        """Last, once nothing of serve uses it: leave the embedded PostgreSQL, which stops it
        unless another process of the checkout still uses it (a shell, a test run)."""
        from core.embedded import embedded_database_leave, embedded_postmaster_alive

        try:
            stopped = embedded_database_leave(watch.folder)
        except Exception as error:
            self._say(f"embedded PostgreSQL did not stop: {error}", error=True)
            return
        if stopped:
            self._say("Embedded PostgreSQL stopped.")
        elif embedded_postmaster_alive(watch.folder):
            self._say(
                "Embedded PostgreSQL left running: another process of the checkout uses it, "
                "and the last one to exit stops it."
            )
