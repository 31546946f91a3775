"""Release real threads together, each on its own database connection."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection


def run_together(workers: list[Callable[[], Any]]) -> tuple[list[Any], list[BaseException]]:
    """Run each callable in its own thread, released together by a barrier.

    Each thread opens its database connection before the barrier (so the race is between the
    operations, not connection set-up) and closes it in ``finally``.
    """
    barrier = threading.Barrier(len(workers))
    results: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(work: Callable[[], Any]) -> None:
        try:
            connection.ensure_connection()
            barrier.wait(timeout=30)
            outcome = work()
            with lock:
                results.append(outcome)
        except BaseException as error:
            with lock:
                errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(work,)) for work in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return results, errors


def run_together_or_raise(workers: list[Callable[[], Any]]) -> list[Any]:
    """``run_together``, re-raising the first failure."""
    results, errors = run_together(workers)
    if errors:
        raise errors[0]
    return results
