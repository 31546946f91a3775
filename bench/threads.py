"""Threads released together for a benchmark, each on its own database connection."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


def run_threads(count: int, work: Callable[[int], list[float]]) -> tuple[float, list[float]]:
    """Run ``work(n)`` in ``count`` threads released together; wall time and all latencies."""
    from django.db import connection

    barrier = threading.Barrier(count + 1)
    latencies: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker(number: int) -> None:
        try:
            connection.ensure_connection()
            barrier.wait()
            measured = work(number)
            with lock:
                latencies.extend(measured)
        except BaseException as error:
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    return elapsed, latencies
