"""Turns benchmark: what a whole agent turn costs on top of the model, seen from a client.

T tenants talk to the real service at once, each through its own API key and its own thread of
this driver: post a message, wait for the agent's reply with the entries long-poll, repeat. The
service runs as it does in production, under ``manage.py serve``: 2 web processes, the turn worker
(queue ``threads``) and the background worker (indexing, maintenance), on a scratch database. The
echo model stands in for the model: a turn is ``--checkpoints`` model calls adding up to
``--model-ms``, and the turn checkpoints its growing state (up to about ``--state-kb``) after
every call.

Per turn: end-to-end time (message posted -> agent entry seen by the client) and overhead (that
minus the model's time). The measured turns come after a first burst of one turn per tenant, all
at once, whose figures print apart: it grows the database pools to their peak, and every
connection it adds is a new PostgreSQL session paying its first statements' costs once. Two
configurations, each on a fresh database, in the same run:

- ours: the defaults (engine state in runtime paths: one upsert, never indexed; indexing queued;
  a database pool of DATABASE_POOL_SIZE's default), with the same embeddings API as the baseline,
  which it should never call: engine state is not embedded.
- baseline, built like the origin before its fix: runtime paths indexed and versioned inline
  (WORKSPACE_RUNTIME_PATHS="", WORKSPACE_INDEXING=inline) through an embeddings API that takes
  50 ms per text (a loopback server), DATABASE_POOL_SIZE=10, and every checkpoint under one
  process-wide mutex taken before any database work, holding no connection while it waits
  (THREAD_RUNNER=bench.baseline_runner.run_thread: the origin's global lock).

    .venv/bin/python bench/turns.py            # quick: well under a minute
    .venv/bin/python bench/turns.py --full     # 30 tenants x 5 turns, 1 s model, 50 KB state

Explicit flags override either mode. The chart goes to bench/results/turns.png and serve's output
to bench/results/turns.log (its tail is printed when a run fails). The driver is
bench/turns_service.py, the figures bench/turns_figures.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from contextlib import suppress
from pathlib import Path
from types import FrameType

# Run as a script, this folder comes first on the path: the checkout must come before it, or
# bench/conversations.py would stand in for the conversations app.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.turns_figures import (
    Summary,
    print_ratios,
    print_table,
    save_chart,
    summarise,
)
from bench.turns_load import (
    EMBEDDING_SECONDS_PER_INPUT,
    FULL,
    LOG_PATH,
    QUICK,
    RESULTS_DIR,
    Load,
    baseline_env,
    ours_env,
)
from bench.turns_service import BenchFailure, run_configuration
from tests.support.embeddings_server import running_embeddings_server


def parse_load() -> tuple[Load, bool]:
    """The load asked for, and whether to skip the baseline (--ours-only)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--full", action="store_true", help=f"the full run: {FULL}")
    parser.add_argument("--tenants", type=int, help=f"tenants at once (quick {QUICK['tenants']})")
    parser.add_argument("--turns", type=int, help=f"turns per tenant (quick {QUICK['turns']})")
    parser.add_argument("--model-ms", type=int, help=f"model time per turn ({QUICK['model_ms']})")
    parser.add_argument(
        "--checkpoints",
        type=int,
        help=f"model calls (= checkpoints) per turn ({QUICK['checkpoints']})",
    )
    parser.add_argument(
        "--state-kb", type=int, help=f"checkpoint size by the last step ({QUICK['state_kb']})"
    )
    parser.add_argument(
        "--turn-timeout", type=float, default=120.0, help="seconds a turn may take (120)"
    )
    parser.add_argument(
        "--ours-only", action="store_true", help="skip the baseline (to iterate on ours)"
    )
    parser.add_argument(
        "--spread",
        action="store_true",
        help="start the tenants spread over one model time, not all at once (same rate)",
    )
    options = parser.parse_args()
    mode = FULL if options.full else QUICK
    values = {
        name: getattr(options, name) if getattr(options, name) is not None else default
        for name, default in mode.items()
    }
    for name, value in values.items():
        if value < (0 if name == "state_kb" else 1):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {value}")
    if values["model_ms"] < values["checkpoints"]:
        parser.error("--model-ms must be at least --checkpoints (1 ms per model call)")
    load = Load(turn_timeout=options.turn_timeout, spread=options.spread, **values)
    return load, options.ours_only


def interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    load, ours_only = parse_load()
    signal.signal(signal.SIGTERM, interrupted)  # stop the services on SIGTERM as on Ctrl-C
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    print(
        f"turns: {load.tenants} tenants x {load.turns} turns, model {load.model_ms} ms in "
        f"{load.checkpoints} calls of {load.call_ms} ms, checkpoint growing to ~{load.state_kb} KB "
        f"({load.step_bytes} bytes per working step), "
        f"{'arrivals spread over one model time' if load.spread else 'all tenants at once'}, "
        f"{os.cpu_count()} CPUs; log {LOG_PATH}",
        flush=True,
    )
    results: dict[str, Summary] = {}
    with (
        LOG_PATH.open("w") as log,
        running_embeddings_server(seconds_per_input=EMBEDDING_SECONDS_PER_INPUT) as embedder,
    ):
        url = f"{embedder.url}/v1"
        try:
            for label, env in (
                ("ours", ours_env(load, url)),
                ("baseline", baseline_env(load, url)),
            ):
                inputs, requests = embedder.inputs, len(embedder.requests)
                results[label] = summarise(run_configuration(label, env, load, log), load)
                print(
                    f"  {label}: the embeddings API was asked for {embedder.inputs - inputs} "
                    f"texts in {len(embedder.requests) - requests} requests",
                    flush=True,
                )
                if ours_only:
                    print_table("ours", results["ours"], load)
                    return 0
        except (BenchFailure, KeyboardInterrupt) as error:
            log.flush()
            reason = "interrupted" if isinstance(error, KeyboardInterrupt) else str(error)
            print(f"\nturns benchmark FAILED: {reason}", file=sys.stderr)
            print_log_tail()
            return 130 if isinstance(error, KeyboardInterrupt) else 1

    print_table("ours", results["ours"], load)
    print_table("baseline (origin before its fix)", results["baseline"], load)
    print_ratios(results["ours"], results["baseline"])
    print(f"\nchart: {save_chart(results, load)}")
    return 0


def print_log_tail(lines: int = 60, path: Path = LOG_PATH) -> None:
    with suppress(OSError):
        tail = path.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- last {len(tail)} lines of {path}:", file=sys.stderr)
        for line in tail:
            print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
