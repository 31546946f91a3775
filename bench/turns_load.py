"""The turns benchmark's load and its two configurations' environments (see bench/turns.py)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOG_PATH = RESULTS_DIR / "turns.log"
CHART_PATH = RESULTS_DIR / "turns.png"

QUICK = {"tenants": 8, "turns": 2, "model_ms": 300, "checkpoints": 4, "state_kb": 20}
FULL = {"tenants": 30, "turns": 5, "model_ms": 1000, "checkpoints": 8, "state_kb": 50}

EMBEDDING_SECONDS_PER_INPUT = 0.05
WEB_WORKERS = 2
WEB_THREADS = 32
BACKGROUND_CONCURRENCY = 2
BASELINE_RUNNER = "bench.baseline_runner.run_thread"
# Settings a configuration leaves at their defaults: dropped from the inherited environment.
DEFAULTED = (
    "DATABASE_POOL_SIZE",
    "DATABASE_POOL_TIMEOUT",
    "WORKSPACE_RUNTIME_PATHS",
    "WORKSPACE_INDEXING",
    "EMBEDDING_BASE_URL",
    "EMBEDDING_API_KEY",
    "EMBEDDING_DIMENSIONS",
    "THREAD_RUNNER",
)


@dataclass(frozen=True)
class Load:
    tenants: int
    turns: int
    model_ms: int
    checkpoints: int
    state_kb: int
    turn_timeout: float
    # Tenants' first messages spread evenly over one model time instead of all at once (later
    # turns follow each one's reply, so they stay spread): the same rate of turns, without the
    # synchronised bursts in which the last of 30 arrivals waits for the CPU the 29 before it use.
    spread: bool = False

    @property
    def call_ms(self) -> int:
        return self.model_ms // self.checkpoints

    @property
    def configured_model_seconds(self) -> float:
        return self.call_ms * self.checkpoints / 1000

    @property
    def step_bytes(self) -> int:
        # The first checkpoints-1 calls are working steps; their text is what the state grows by.
        working_steps = self.checkpoints - 1
        return self.state_kb * 1024 // working_steps if working_steps else 0

    def engine_env(self) -> dict[str, str]:
        return {
            "ENGINE_MODEL": "echo",
            "ENGINE_ECHO_STEPS": str(self.checkpoints),
            "ENGINE_ECHO_LATENCY_MS": str(self.call_ms),
            "ENGINE_ECHO_STEP_BYTES": str(self.step_bytes),
            "ENGINE_MAX_ITERATIONS": str(max(10, self.checkpoints + 1)),
        }

    def service_env(self) -> dict[str, str]:
        """What serve runs: 2 web processes, a turn worker taking every tenant's turn at once,
        the background worker."""
        return {
            "WEB_CONCURRENCY": str(WEB_WORKERS),
            "WEB_THREADS": str(WEB_THREADS),
            "ENGINE_CONCURRENCY": str(self.tenants),
            "BACKGROUND_CONCURRENCY": str(BACKGROUND_CONCURRENCY),
        }


def base_env(load: Load) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DEFAULTED}
    return {
        **env,
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
        **load.service_env(),
        **load.engine_env(),
    }


def _embedder_env(embeddings_url: str) -> dict[str, str]:
    return {
        "EMBEDDING_PROVIDER": "openai",
        "EMBEDDING_BASE_URL": embeddings_url,
        "EMBEDDING_API_KEY": "bench",
        "EMBEDDING_DIMENSIONS": "256",
    }


def ours_env(load: Load, embeddings_url: str) -> dict[str, str]:
    """The defaults, with the same embeddings API as the baseline: engine state is never
    embedded, so it should see no call."""
    return {**base_env(load), **_embedder_env(embeddings_url), "WORKSPACE_INDEXING": "queue"}


def baseline_env(load: Load, embeddings_url: str) -> dict[str, str]:
    """The origin before its fix: runtime paths indexed and versioned inline through a slow
    embeddings API, a small pool, every checkpoint under one global lock (the runner's)."""
    return {
        **base_env(load),
        **_embedder_env(embeddings_url),
        "WORKSPACE_RUNTIME_PATHS": "",
        "WORKSPACE_INDEXING": "inline",
        "DATABASE_POOL_SIZE": "10",
        # Turns queue for the small pool behind the global lock; that wait is what the baseline
        # measures, so let it last as long as a turn may (the default 10 s fails turns at 30
        # tenants), as bench/conversations.py does with its lock timeout.
        "DATABASE_POOL_TIMEOUT": str(min(300, max(10, math.ceil(load.turn_timeout)))),
        "THREAD_RUNNER": BASELINE_RUNNER,
    }
