"""Where the web processes' CPU goes during a phase (see bench/streams.py): always, by thread
(``ThreadCpu``: each thread's time on a CPU from /proc, named by ``py-spy dump``), and
with ``--profile``, by function (``Profiles``).

py-spy samples with ``--gil`` (only the samples that hold the interpreter lock: CPU, not waits) at
RATE a second, from a few seconds into the phase until a few seconds before its end; the raw
collapsed stacks go to bench/results/streams-<phase>-web<n>.txt for any flame graph tool.
Sampling costs the profiled process a little CPU, so the latency figures of a profiled run are
not the benchmark's.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections import Counter
from contextlib import suppress
from pathlib import Path

import psutil

from bench.turns_load import RESULTS_DIR

PY_SPY = Path(sys.executable).parent / "py-spy"
RATE = 100
# Seconds left out at each end of the phase (the tenants' start, their last turns).
MARGIN_SECONDS = 3.0
# A sample's thread, by the first of these found in its stack (outermost frame first).
THREADS = (
    ("stream reads (stream-read threads)", "_read_run"),
    ("notification listener thread", "notify.py"),
    ("hub loop (streams thread)", "run_forever"),
    ("request threads (waitress)", "waitress"),
)


# A thread's group, by its name (core.streams, core.notify, waitress).
GROUPS = (
    ("hub loop", "streams"),
    ("stream reads", "stream-read"),
    ("notification listener", "notify"),
    ("request threads", "waitress"),
    ("HTTP I/O loop (main thread)", "MainThread"),
)
_DUMP_THREAD = re.compile(r'^Thread (\d+) \([^)]*\): "(.*)"$', re.M)


def thread_groups(pid: int) -> dict[int, str]:
    """Each thread of ``pid`` by group, from ``py-spy dump`` (empty when it cannot attach)."""
    try:
        dump = subprocess.run(
            [str(PY_SPY), "dump", "--nonblocking", "-p", str(pid)],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    groups = {}
    for tid, name in _DUMP_THREAD.findall(dump):
        groups[int(tid)] = next((g for g, prefix in GROUPS if name.startswith(prefix)), "other")
    return groups


def _on_cpu_seconds(pid: int, tid: int) -> float:
    """A thread's time on a CPU, exact (schedstat's nanoseconds: /proc's ticks would round each
    of 40 request threads' share down by up to a tick)."""
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


class ThreadCpu:
    """The CPU seconds of each thread group of ``pids`` from now to ``stop``, and the processes'
    kernel (system) seconds."""

    def __init__(self, pids: list[int]):
        self.pids = pids
        self.before, self.kernel = self._sample(), self._kernel()

    def _kernel(self) -> float:
        seconds = 0.0
        for pid in self.pids:
            with suppress(psutil.Error):
                seconds += psutil.Process(pid).cpu_times().system
        return seconds

    def _sample(self) -> dict[tuple[int, int], float]:
        times = {}
        for pid in self.pids:
            with suppress(OSError):
                for tid in os.listdir(f"/proc/{pid}/task"):
                    times[pid, int(tid)] = _on_cpu_seconds(pid, int(tid))
        return times

    def stop(self) -> tuple[dict[str, float], float]:
        """Seconds by thread group (threads that ended meanwhile are not counted), and the
        processes' kernel seconds."""
        after, kernel = self._sample(), self._kernel() - self.kernel
        groups = {
            (pid, tid): group for pid in self.pids for tid, group in thread_groups(pid).items()
        }
        spent: dict[str, float] = {}
        for thread, seconds in after.items():
            group = groups.get(thread, "unnamed")
            spent[group] = spent.get(group, 0.0) + seconds - self.before.get(thread, 0.0)
        return spent, kernel


class Profiles:
    """py-spy recording each of ``pids`` (the web processes) for most of a phase."""

    def __init__(self, phase: str, pids: list[int], seconds: float):
        self.phase = phase
        self.seconds = max(1, int(seconds - 2 * MARGIN_SECONDS))
        self.paths = [RESULTS_DIR / f"streams-{phase}-web{n + 1}.txt" for n in range(len(pids))]
        self._processes: list[subprocess.Popen[bytes]] = []
        self._timer = threading.Timer(MARGIN_SECONDS, self._start, args=(pids,))
        self._timer.start()

    def _start(self, pids: list[int]) -> None:
        for pid, path in zip(pids, self.paths, strict=True):
            command = [str(PY_SPY), "record", "--gil", "--nonblocking", "-r", str(RATE)]
            command += ["-d", str(self.seconds), "--format", "raw", "-o", str(path)]
            command += ["-p", str(pid)]
            self._processes.append(
                subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            )

    def report(self) -> None:
        """Wait for the recordings, then print each process's CPU by thread and hot functions."""
        self._timer.join()
        for process in self._processes:
            process.wait(timeout=self.seconds + 30)
        for path in self.paths:
            print_profile(self.phase, path, self.seconds)


def _stacks(path: Path) -> Counter[str]:
    stacks: Counter[str] = Counter()
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return stacks
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            stacks[stack] += int(count)
    return stacks


def _thread(stack: str) -> str:
    for name, marker in THREADS:
        if marker in stack:
            return name
    return "other"


def _function(frame: str) -> str:
    """``name (path/to/file.py:123)`` -> ``name (file.py)``."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rsplit('/', 1)[-1].split(':', 1)[0]})" if where else name


def print_profile(phase: str, path: Path, seconds: float, top: int = 12) -> None:
    stacks = _stacks(path)
    total = sum(stacks.values())
    if not total:
        print(f"\n-- profile {phase} {path.name}: no samples (is py-spy allowed to attach?)")
        return
    print(
        f"\n-- profile {phase} {path.name}: {total} samples holding the GIL in {seconds} s "
        f"at {RATE}/s = {total / seconds / RATE * 100:.1f} % of a core"
    )
    threads: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        threads[_thread(stack)] += count
        frames = stack.split(";")
        own[_function(frames[-1])] += count
        for function in {_function(frame) for frame in frames}:
            inclusive[function] += count
    for name, count in threads.most_common():
        print(f"  {count / seconds / RATE * 100:5.1f} % of a core  {name}")
    print("  hottest functions, % of the samples: self / with what they call")
    for function, count in own.most_common(top):
        print(
            f"  {count / total * 100:5.1f} / {inclusive[function] / total * 100:5.1f}  {function}"
        )
    interesting = [
        (function, count)
        for function, count in inclusive.most_common()
        if any(part in function for part in ("streams.py", "notify.py", "json"))
    ]
    print("  the streams' code, % of the samples with what it calls:")
    for function, count in interesting[:top]:
        print(f"  {count / total * 100:5.1f}  {function}")
