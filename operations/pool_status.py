"""The web processes' database pools as the health verdict sees them: callers waiting for a
pooled connection now, and requests refused for want of one lately.

Both come from the pool metrics every process records (``core.metrics``): with
``PROMETHEUS_MULTIPROC_DIR`` (``manage.py serve``), summed over every process from the folder's
gauge and counter files only (the histograms, the bulk of it, are not read); without it, this
process's own. No database statement.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections import deque
from dataclasses import dataclass

from django.db import connections
from prometheus_client import REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector

# core.metrics's DB_POOL_WAITING and DB_POOL_TIMEOUTS, as their samples are named.
WAITING_METRIC = "ironclaw_db_pool_requests_waiting"
TIMEOUTS_SAMPLE = "ironclaw_db_pool_timeouts_total"
# How far back the verdict looks for refused requests.
TIMEOUTS_WINDOW_SECONDS = 15 * 60.0


@dataclass(frozen=True)
class PoolStatus:
    # Callers waiting for a pooled connection, summed over the processes.
    waiting: int = 0
    # Requests answered 503 because no pooled connection came in time, over the last
    # ``timeouts_seconds`` (None: no earlier reading in the window to compare with).
    recent_timeouts: int | None = None
    timeouts_seconds: float = 0.0


class CounterIncrease:
    """How much a cumulative counter grew lately, from the readings this process took of it.

    The counter counts since the service started; a verdict wants "lately". Each reading is kept
    for ``window`` seconds and the oldest one kept is the baseline, so the first reading after a
    quiet spell has none (None) rather than a misleading total."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._readings: deque[tuple[float, float]] = deque(maxlen=10_000)
        self._lock = threading.Lock()

    def add(self, value: float, *, now: float | None = None) -> tuple[int, float] | None:
        """Record ``value``; the increase since the oldest reading in the window and how many
        seconds ago that was, or None without one."""
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._readings and self._readings[0][0] < now - self.window:
                self._readings.popleft()
            baseline = self._readings[0] if self._readings else None
            self._readings.append((now, value))
        if baseline is None:
            return None
        since, before = baseline
        # Lower than before: serve emptied the metrics folder at a restart, counting from 0.
        increase = value - before if value >= before else value
        return round(increase), now - since


_timeouts = CounterIncrease(TIMEOUTS_WINDOW_SECONDS)


def _summed_over_processes(folder: str) -> tuple[float, float]:
    files = glob.glob(os.path.join(folder, "gauge_livesum_*.db")) + glob.glob(
        os.path.join(folder, "counter_*.db")
    )
    waiting = timeouts = 0.0
    for metric in MultiProcessCollector.merge(files, accumulate=True):
        for sample in metric.samples:
            if sample.name == WAITING_METRIC:
                waiting += sample.value
            elif sample.name == TIMEOUTS_SAMPLE:
                timeouts += sample.value
    return waiting, timeouts


def _this_process() -> tuple[float, float]:
    pool = type(connections["default"])._connection_pools.get("default")  # type: ignore[attr-defined]
    # The pool's own figure is the live one; the gauge is recorded at the end of each request.
    if pool is not None:
        waiting = float(pool.get_stats().get("requests_waiting", 0))
    else:
        waiting = REGISTRY.get_sample_value(WAITING_METRIC) or 0.0
    return waiting, REGISTRY.get_sample_value(TIMEOUTS_SAMPLE) or 0.0


def pool_status(*, window: CounterIncrease = _timeouts) -> PoolStatus:
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    waiting, timeouts = _summed_over_processes(folder) if folder else _this_process()
    recent = window.add(timeouts)
    return PoolStatus(
        waiting=round(waiting),
        recent_timeouts=recent[0] if recent else None,
        timeouts_seconds=recent[1] if recent else 0.0,
    )
