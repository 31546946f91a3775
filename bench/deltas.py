"""Token deltas benchmark: what one delta costs the process that publishes it, and how many a turn
sends.

A delta is published from the model call's own thread, which holds no connection: it takes one
from the pool for its one statement and gives it back (``DeltaPublisher``). That is timed against
publishing on a connection held throughout (what a publisher keeping one would spend), as CPU
time of this process and wall time per delta, alongside building the payloads alone (a short
text, and the 64 KiB an external engine may send at once, split into notifications). Then echo
turns through the real runner count the deltas a step sends at ENGINE_DELTA_INTERVAL_MS:

    .venv/bin/python bench/deltas.py [--iterations 2000]

Runs against its own database (created, migrated, dropped), never the dev database.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

# Run as a script, this folder comes first on the path: the checkout must come before it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.scratch_database import scratch_database


def per_call(call: Callable[[], object], iterations: int) -> tuple[float, float]:
    """CPU and wall microseconds per call, on a thread of its own (as the model call's)."""
    result: list[float] = []

    def run() -> None:
        from django.db import connection

        try:
            for _ in range(min(iterations, 200)):  # warm: pool, prepared statements
                call()
            cpu, wall = time.thread_time(), time.perf_counter()
            for _ in range(iterations):
                call()
            result.extend([time.thread_time() - cpu, time.perf_counter() - wall])
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return result[0] / iterations * 1e6, result[1] / iterations * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    iterations = parser.parse_args().iterations
    with scratch_database("ironclaw_bench_deltas") as name:
        import uuid

        from django.conf import settings
        from django.db import connection

        from conversations.models import Thread
        from conversations.services import message_handle
        from core.notify import DELTAS_CHANNEL, dedicated_connection
        from engine import deltas
        from engine.delta_sender import delta_sender
        from engine.model_clients import EchoModel
        from engine.runner import Turn

        thread_id, conversation_id = uuid.uuid4(), uuid.uuid4()
        short = "The model's reply so far, a sentence or two of it. " * 4

        def payloads(text: str) -> Callable[[], list[str]]:
            return lambda: deltas.delta_payloads(
                conversation_id=conversation_id,
                thread_id=thread_id,
                step=1,
                offset=0,
                text=text,
                at=time.time(),
            )

        def give_back() -> None:
            deltas.deltas_notify(payloads(short)())
            connection.close()

        def held() -> None:
            deltas.deltas_notify(payloads(short)())

        def queued() -> None:
            delta_sender().send(payloads(short)())

        print(f"deltas on {name}: per delta, {iterations} each, on a thread of its own")
        print(f"  {'case':<52}{'CPU us':>8}{'wall us':>9}")
        cases: list[tuple[str, Callable[[], object]]] = [
            (f"payload of {len(short)} characters (build only)", payloads(short)),
            ("64 KiB split into notifications (build only)", payloads("é" * 32 * 1024)),
            ("publish, connection from the pool and back (used)", give_back),
            ("publish on a connection held throughout", held),
            ("queued for the sender thread (the engine's way)", queued),
        ]
        for label, call in cases:
            cpu, wall = per_call(call, iterations)
            print(f"  {label:<52}{cpu:8.0f}{wall:9.0f}")
        # The queued ones still going out must not count as the turns' deltas below.
        delta_sender().idle(timeout=60)
        split = len(payloads("é" * 32 * 1024)())
        print(f"  64 KiB of two-byte characters: {split} notifications")

        interval = settings.ENGINE_DELTA_INTERVAL_MS
        print(f"  deltas per echo turn at ENGINE_DELTA_INTERVAL_MS={interval}")
        with dedicated_connection() as listen:
            listen.execute(f"LISTEN {DELTAS_CHANNEL}")
            for latency_ms in (200, 1000, 5000):
                sent = message_handle(user_id="alice", channel="web", content="hello " * 20)
                Turn(
                    Thread.objects.get(pk=sent.thread_id), model=EchoModel(latency_ms=latency_ms)
                ).run()
                delta_sender().idle()
                count = sum(1 for _ in listen.notifies(timeout=0.5))
                print(f"    echo of {latency_ms} ms: {count} deltas")


if __name__ == "__main__":
    main()
