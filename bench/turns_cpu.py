"""CPU per turn by role, read from /proc (psutil): serve's web processes, its turn and background
workers, serve itself, PostgreSQL, and this driver. What the service burns while idle (periodic
maintenance, the workers' polling) is measured before the first message and subtracted."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

import psutil

# The order the figures print in; "client" is this driver, never counted in the service's total.
ROLES = ("web", "turns", "background", "serve", "postgres", "client")
SERVICE_ROLES = ROLES[:-1]


def _cpu(process: psutil.Process, *, reaped_children: bool = False) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    seconds = times.user + times.system
    if reaped_children:
        # Children that exited and were waited for: PostgreSQL's ended backends.
        seconds += times.children_user + times.children_system
    return seconds


def process_role(process: psutil.Process) -> str:
    try:
        argv = process.cmdline()
    except psutil.NoSuchProcess:
        return "gone"
    if "serve_web" in argv:
        return "web"
    return argv[argv.index("--name") + 1] if "--name" in argv else "other"


@dataclass(frozen=True)
class CpuSample:
    at: float  # monotonic seconds
    seconds: dict[str, float]


class CpuMeter:
    """Cumulative CPU seconds of each role; the processes are found once, after start-up."""

    def __init__(self, *, serve_pid: int, postmaster_pid: int):
        self.serve = psutil.Process(serve_pid)
        self.children = list(self.serve.children())
        self.postmaster = psutil.Process(postmaster_pid)
        self.client = psutil.Process()

    def sample(self) -> CpuSample:
        seconds = dict.fromkeys(ROLES, 0.0)
        for child in self.children:
            role = process_role(child)
            if role in seconds:
                seconds[role] += _cpu(child)
        seconds["serve"] = _cpu(self.serve)
        seconds["postgres"] = _cpu(self.postmaster, reaped_children=True) + sum(
            _cpu(backend) for backend in _children(self.postmaster)
        )
        seconds["client"] = _cpu(self.client)
        return CpuSample(time.monotonic(), seconds)

    def idle_rates(self, seconds: float) -> dict[str, float]:
        """CPU seconds per second of each role while no message is sent."""
        before = self.sample()
        time.sleep(seconds)
        after = self.sample()
        elapsed = after.at - before.at
        return {role: (after.seconds[role] - before.seconds[role]) / elapsed for role in ROLES}


def _children(process: psutil.Process) -> Iterable[psutil.Process]:
    try:
        return process.children()
    except psutil.NoSuchProcess:
        return []


def cpu_per_turn(
    before: CpuSample, after: CpuSample, idle: dict[str, float], turns: int
) -> dict[str, float]:
    """Milliseconds of CPU per turn by role, the idle rate times the run's length taken off."""
    elapsed = after.at - before.at
    return {
        role: max(0.0, after.seconds[role] - before.seconds[role] - idle[role] * elapsed)
        * 1000
        / max(turns, 1)
        for role in ROLES
    }


def format_cpu(per_turn: dict[str, float]) -> str:
    service = sum(per_turn[role] for role in SERVICE_ROLES)
    parts = " / ".join(f"{role} {per_turn[role]:.1f}" for role in SERVICE_ROLES)
    return f"{service:.1f} ms ({parts}); the bench client {per_turn['client']:.1f} ms"
