"""Simulated hosts: each runs one ``manage.py`` command in a process group of its own, with an
environment of its own (home, temporary and var folders), so that the processes of two hosts
share nothing but what their environments name, the database's URL first.

Nothing here reads Django's settings.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psutil

from tests.support.serve import processes_kill
from tests.support.servers import BASE_DIR

STOP_TIMEOUT_SECONDS = 30
# What a host takes from this machine's environment: how to find Python and the locale. Nothing
# of the application's: each setting a host has is one it was given.
MACHINE_VARIABLES = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "VIRTUAL_ENV")


def host_env(folder: Path, settings: Mapping[str, str]) -> dict[str, str]:
    """The environment of a host whose own files live under ``folder``: its home, temporary and
    var folders there, the machine's PATH and locale, and ``settings``."""
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    return {
        **{name: os.environ[name] for name in MACHINE_VARIABLES if name in os.environ},
        "HOME": str(folder),
        "TMPDIR": str(folder / "tmp"),
        "IRONCLAW_VAR_DIR": str(folder / "var"),
        "LOG_LEVEL": "WARNING",
        "LOG_FORMAT": "text",
        **settings,
    }


@dataclass
class Host:
    """``manage.py *command`` as a host runs it, with exactly ``env``; its output goes to
    ``folder``/``name``.log. ``start()`` again after ``kill()`` is the host's reboot."""

    name: str
    command: list[str]
    env: dict[str, str]
    folder: Path
    process: subprocess.Popen[str] | None = None
    _log: IO[str] | None = field(default=None, repr=False)

    def start(self) -> None:
        assert not self.running(), f"{self.name} already runs"
        self.folder.mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self._log = (self.folder / f"{self.name}.log").open("a")
        self._log.write(f"--- start {self.name}: manage.py {' '.join(self.command)}\n")
        self._log.flush()
        self.process = subprocess.Popen(
            [sys.executable, "manage.py", *self.command],
            cwd=BASE_DIR,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def processes(self) -> list[psutil.Process]:
        """The host's live processes: its command and every process it started (serve's children
        run in sessions of their own, so its process group alone would miss them)."""
        if not self.running():
            return []
        assert self.process is not None
        found = []
        with suppress(psutil.NoSuchProcess):
            leader = psutil.Process(self.process.pid)
            found = [leader, *leader.children(recursive=True)]
        return [process for process in found if _alive(process)]

    def kill(self) -> None:
        """SIGKILL every process of the host at once, as a power cut would; wait until they are
        gone."""
        assert self.process is not None
        victims = self.processes()
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        processes_kill(victims)
        self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
        psutil.wait_procs(victims, timeout=STOP_TIMEOUT_SECONDS)

    def stop(self) -> None:
        """SIGTERM (a host's orderly shutdown); whatever still runs after 30 s is killed."""
        if self.process is not None:
            started = self.processes()
            if self.running():
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(timeout=STOP_TIMEOUT_SECONDS)
                except subprocess.TimeoutExpired:
                    self.kill()
            processes_kill(started)
        if self._log is not None:
            self._log.close()
            self._log = None

    def output_tail(self, lines: int = 40) -> str:
        try:
            text = (self.folder / f"{self.name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return f"--- {self.name}:\n" + "\n".join(text.splitlines()[-lines:])


def _alive(process: psutil.Process) -> bool:
    with suppress(psutil.NoSuchProcess):
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    return False
