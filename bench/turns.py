"""Turns benchmark: what a whole agent turn costs on top of the model, seen from a client.

T tenants talk to the real service at once, each through its own API key and its own thread of
this driver: post a message, wait for the agent's reply with the entries long-poll, repeat. The
service runs as it does in production: 2 web processes, the turn worker (queue ``threads``) and
the background worker (indexing, maintenance), as subprocesses on a scratch database. The echo
model stands in for the model: a turn is ``--checkpoints`` model calls adding up to ``--model-ms``,
and the turn checkpoints its growing state (up to about ``--state-kb``) after every call.

Per turn: end-to-end time (message posted -> agent entry seen by the client) and overhead (that
minus the model's time). Two configurations, each on a fresh database, in the same run:

- ours: the defaults (engine state in runtime paths: one upsert, never indexed; indexing queued;
  a database pool of DATABASE_POOL_SIZE's default; hashing embeddings).
- baseline, built like the origin before its fix: runtime paths indexed and versioned inline
  (WORKSPACE_RUNTIME_PATHS="", WORKSPACE_INDEXING=inline) through an embeddings API that takes
  50 ms per text (a loopback server), DATABASE_POOL_SIZE=10, and every checkpoint under one
  database-wide lock (THREAD_RUNNER=bench.baseline_runner.run_thread: the origin's global mutex).

    .venv/bin/python bench/turns.py            # quick: well under a minute
    .venv/bin/python bench/turns.py --full     # 30 tenants x 5 turns, 1 s model, 50 KB state

Explicit flags override either mode. The chart goes to bench/results/turns.png and the services'
output to bench/results/turns.log (its tail is printed when a run fails).
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any
from urllib.parse import quote

from embeddings_server import embeddings_server, free_port
from scratch_database import scratch_database

BASE_DIR = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
LOG_PATH = RESULTS_DIR / "turns.log"
CHART_PATH = RESULTS_DIR / "turns.png"

OURS_ONLY = False
QUICK = {"tenants": 8, "turns": 2, "model_ms": 300, "checkpoints": 4, "state_kb": 20}
FULL = {"tenants": 30, "turns": 5, "model_ms": 1000, "checkpoints": 8, "state_kb": 50}

EMBEDDING_SECONDS_PER_INPUT = 0.05
WEB_WORKERS = 2
WEB_THREADS = 32
BACKGROUND_CONCURRENCY = 2
LONG_POLL_MAX_SECONDS = 30
# Until the server honours wait_seconds it answers at once; then the driver polls this often.
POLL_INTERVAL_SECONDS = 0.05
STARTUP_TIMEOUT_SECONDS = 60
# System entries that end a thread without an agent reply (others, "Thread started", are news).
ENDED_WITHOUT_REPLY = ("Thread failed", "Thread stopped", "Thread reached", "Gate ")
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


class BenchFailure(Exception):
    """The run cannot go on; the message says why, and the services' log tail follows it."""


# --- Configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    tenants: int
    turns: int
    model_ms: int
    checkpoints: int
    state_kb: int
    turn_timeout: float

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


def database_url(settings_dict: Mapping[str, Any]) -> str:
    """A DATABASE_URL for the database Django is connected to (a Unix socket when HOST is one)."""
    user = quote(settings_dict["USER"] or "", safe="")
    password = quote(settings_dict["PASSWORD"] or "", safe="")
    credentials = f"{user}:{password}@" if password else f"{user}@"
    name = quote(settings_dict["NAME"], safe="")
    host = settings_dict["HOST"] or "localhost"
    port = int(settings_dict["PORT"] or 5432)
    if host.startswith("/"):
        return f"postgresql://{credentials}/{name}?host={quote(host, safe='/')}&port={port}"
    return f"postgresql://{credentials}{host}:{port}/{name}"


# --- HTTP --------------------------------------------------------------------------------------


class Client:
    """One tenant's view of the REST API (its own API key)."""

    def __init__(self, base_url: str, api_key: str):
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}

    def request(
        self, method: str, path: str, body: Any = None, *, timeout: float = 30
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            self.base_url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode(errors="replace")[:500]


def healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


# --- Services ----------------------------------------------------------------------------------


class Services:
    """The web server and both workers as subprocesses, their output appended to one log."""

    def __init__(self, label: str, env: Mapping[str, str], load: Load, log: IO[str]):
        self.label = label
        self.env = env
        self.load = load
        self.log = log
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.failure: str | None = None
        self.polls = 0  # entries requests; about one a turn when the long-poll is honoured

    def commands(self) -> dict[str, list[str]]:
        worker = [sys.executable, "manage.py", "run_worker"]
        web = {
            f"web{index}": [
                sys.executable,
                "manage.py",
                "serve_web",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--threads",
                str(WEB_THREADS),
            ]
            for index in range(1, WEB_WORKERS + 1)
        }
        return {
            **web,
            "turns": [
                *worker,
                "--queues",
                "threads",
                "--concurrency",
                str(self.load.tenants),
                "--name",
                "turns",
            ],
            "background": [
                *worker,
                "--queues",
                "indexing,default",
                "--concurrency",
                str(BACKGROUND_CONCURRENCY),
                "--name",
                "background",
            ],
        }

    def start(self) -> None:
        for name, argv in self.commands().items():
            self.log.write(f"\n===== {self.label}: {name}: {' '.join(argv)}\n")
            self.log.flush()
            self.processes[name] = subprocess.Popen(
                argv, cwd=BASE_DIR, env=dict(self.env), stdout=self.log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not healthy(self.base_url):
            self.check()
            if time.monotonic() > deadline:
                raise BenchFailure(
                    f"{self.label}: the web server did not answer /healthz within "
                    f"{STARTUP_TIMEOUT_SECONDS} s"
                )
            time.sleep(0.1)

    def check(self) -> None:
        """Raise if a service died or the monitor found a failed turn job."""
        for name, process in self.processes.items():
            code = process.poll()
            if code is not None:
                raise BenchFailure(f"{self.label}: the {name} process exited with status {code}")
        if self.failure:
            raise BenchFailure(self.failure)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.log.write(f"===== {self.label}: stopped\n")
        self.log.flush()


@contextmanager
def running_services(
    label: str, env: Mapping[str, str], load: Load, log: IO[str]
) -> Iterator[Services]:
    services = Services(label, env, load, log)
    stop_monitor = threading.Event()
    monitor = threading.Thread(target=watch_jobs, args=(services, stop_monitor), daemon=True)
    try:
        services.start()
        monitor.start()
        yield services
    finally:
        stop_monitor.set()
        if monitor.is_alive():
            monitor.join(timeout=5)
        services.stop()


def watch_jobs(services: Services, stop: threading.Event) -> None:
    """A turn job that failed (the runner raised) leaves its thread waiting forever: say so."""
    from django.db import connection

    try:
        while not stop.wait(0.5):
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(*) FROM procrastinate_jobs "
                    "WHERE queue_name = 'threads' AND status = 'failed'"
                )
                (failed,) = cursor.fetchone() or (0,)
            if failed:
                services.failure = (
                    f"{services.label}: {failed} run_thread job(s) failed in the turn worker "
                    "(the runner raised; its traceback is in the log)"
                )
                return
    except Exception as error:  # the database going away ends the run elsewhere
        services.failure = services.failure or f"{services.label}: job monitor: {error!r}"
    finally:
        connection.close()


# --- One configuration -------------------------------------------------------------------------


@dataclass
class Turn:
    tenant: int
    number: int
    thread_id: str
    seconds: float  # post sent -> agent entry seen
    sent_at: float  # wall clock, for the server's timestamps
    seen_at: float
    detail: dict[str, Any] = field(default_factory=dict)


def field_of(detail: Mapping[str, Any], name: str) -> Any:
    """A usage/timing field of a thread, top level or grouped (the API is growing them)."""
    if name in detail:
        return detail[name]
    for group in ("usage", "timings"):
        nested = detail.get(group)
        if isinstance(nested, Mapping) and name in nested:
            return nested[name]
    return None


def wall(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def wait_for_reply(
    client: Client,
    services: Services,
    conversation_id: str,
    after_seq: int,
    timeout: float,
    what: str,
    thread_id: str,
) -> dict[str, Any]:
    """Long-poll the entries until the agent answers; also works while wait_seconds is ignored."""
    deadline = time.monotonic() + timeout
    while True:
        services.check()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            status, thread = client.request("GET", f"/api/v1/threads/{thread_id}", timeout=10)
            state = (
                {k: thread.get(k) for k in ("state", "claim_count", "step_count", "outcome")}
                if isinstance(thread, dict)
                else thread
            )
            raise BenchFailure(
                f"{services.label}: {what}: no agent reply within {timeout:.0f} s "
                f"(thread {thread_id}: HTTP {status} {state})"
            )
        wait = max(1, min(LONG_POLL_MAX_SECONDS, int(remaining)))
        asked = time.monotonic()
        services.polls += 1
        try:
            status, page = client.request(
                "GET",
                f"/api/v1/conversations/{conversation_id}/entries"
                f"?after_seq={after_seq}&wait_seconds={wait}",
                timeout=wait + 15,
            )
        except OSError as error:
            raise BenchFailure(
                f"{services.label}: {what}: entries request failed: {error}"
            ) from None
        if status != 200:
            raise BenchFailure(f"{services.label}: {what}: entries answered HTTP {status}: {page}")
        for entry in page["results"]:
            if entry["sender"] == "agent":
                return dict(entry)
            if entry["sender"] == "system" and entry["content"].startswith(ENDED_WITHOUT_REPLY):
                raise BenchFailure(
                    f"{services.label}: {what}: the thread ended without a reply: "
                    f"{entry['content']!r}"
                )
            after_seq = max(after_seq, int(entry["seq"]))
        if time.monotonic() - asked < wait / 2:
            time.sleep(POLL_INTERVAL_SECONDS)  # answered at once: the long-poll is not there yet


def one_turn(
    client: Client, services: Services, content: str, what: str, timeout: float
) -> tuple[str, float, float, float]:
    """Post a message and wait for the reply: thread id, seconds, and wall clock sent/seen."""
    sent_at = time.time()
    started = time.perf_counter()
    status, posted = client.request(
        "POST", "/api/v1/messages", {"channel": "web", "content": content}
    )
    if status != 202:
        raise BenchFailure(f"{services.label}: {what}: POST messages answered {status}: {posted}")
    reply = wait_for_reply(
        client,
        services,
        str(posted["conversation_id"]),
        int(posted["seq"]),
        timeout,
        what,
        str(posted["thread_id"]),
    )
    seconds = time.perf_counter() - started
    return str(reply.get("thread_id") or posted["thread_id"]), seconds, sent_at, time.time()


def drive(services: Services, clients: list[Client], load: Load) -> list[Turn]:
    """Every tenant in its own thread, released together; all turns, or the first failure."""
    turns: list[Turn] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(clients) + 1)

    def tenant(number: int, client: Client) -> None:
        try:
            barrier.wait()
            for index in range(load.turns):
                what = f"tenant {number} turn {index + 1}"
                thread_id, seconds, sent_at, seen_at = one_turn(
                    client,
                    services,
                    f"turn {index + 1} of tenant {number}",
                    what,
                    load.turn_timeout,
                )
                with lock:
                    turns.append(Turn(number, index + 1, thread_id, seconds, sent_at, seen_at))
                if errors:
                    return
        except BaseException as error:
            with lock:
                errors.append(error)

    threads = [
        threading.Thread(target=tenant, args=(number, client), daemon=True)
        for number, client in enumerate(clients)
    ]
    for thread in threads:
        thread.start()
    barrier.wait()
    for thread in threads:
        while thread.is_alive():  # joined in slices, so Ctrl-C reaches the main thread
            thread.join(0.2)
            if errors:
                raise errors[0]
    if errors:
        raise errors[0]
    return turns


def run_configuration(label: str, env: dict[str, str], load: Load, log: IO[str]) -> list[Turn]:
    """One configuration on its own scratch database: services up, warm-up turn, measured turns."""
    with scratch_database(f"ironclaw_bench_turns_{label}") as name:
        from django.conf import settings

        from accounts.services import api_key_create

        # With DATABASE_URL the settings require SECRET_KEY: the services share this process's.
        env = {
            **env,
            "DATABASE_URL": database_url(settings.DATABASES["default"]),
            "SECRET_KEY": settings.SECRET_KEY,
        }
        keys = [
            api_key_create(name="bench", user_id=f"bench-tenant-{n}").raw_key
            for n in range(load.tenants + 1)
        ]
        print(f"  {label}: database {name}; starting web, turn and background workers", flush=True)
        with running_services(label, env, load, log) as services:
            clients = [Client(services.base_url, key) for key in keys]
            # Imports, pools and job fetching warmed up, on a tenant of its own.
            one_turn(clients[-1], services, "warm-up", "warm-up turn", load.turn_timeout)
            started = time.perf_counter()
            turns = drive(services, clients[:-1], load)
            elapsed = time.perf_counter() - started
            for turn in turns:
                status, detail = clients[turn.tenant].request(
                    "GET", f"/api/v1/threads/{turn.thread_id}"
                )
                if status == 200 and isinstance(detail, dict):
                    turn.detail = detail
            polls = services.polls
        print(
            f"  {label}: {len(turns)} turns in {elapsed:.1f} s; "
            f"{polls / (len(turns) + 1):.1f} entries requests per turn",
            flush=True,
        )
        return turns


# --- Figures -----------------------------------------------------------------------------------


def percentile(values: list[float], fraction: float) -> float:
    """Nearest rank: the smallest value with at least ``fraction`` of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


@dataclass
class Summary:
    e2e: list[float]  # seconds
    overhead: list[float]
    model_from_server: int
    phases: dict[str, float]  # mean ms of each gap the server's timings allow

    def row(self, values: list[float]) -> list[float]:
        return [percentile(values, p) * 1000 for p in (0.5, 0.95, 0.99)] + [
            statistics.fmean(values) * 1000
        ]


PHASES = (
    "post sent->enqueued",
    "enqueued->claimed",
    "claimed->first model call",
    "between model calls",
    "last model call->finished",
    "finished->reply seen",
)


def summarise(turns: list[Turn], load: Load) -> Summary:
    e2e: list[float] = []
    overhead: list[float] = []
    from_server = 0
    gaps: dict[str, list[float]] = {phase: [] for phase in PHASES}
    for turn in turns:
        detail = turn.detail
        model_ms = field_of(detail, "model_time_ms")
        if isinstance(model_ms, int | float):
            model_seconds = float(model_ms) / 1000
            from_server += 1
        else:
            model_seconds = load.configured_model_seconds
        e2e.append(turn.seconds)
        overhead.append(turn.seconds - model_seconds)

        enqueued = wall(field_of(detail, "enqueued_at"))
        claimed = wall(field_of(detail, "claimed_at"))
        finished = wall(field_of(detail, "finished_at"))
        calls = field_of(detail, "model_calls")
        calls = calls if isinstance(calls, list) else []
        spans = [
            (wall(call.get("started_at")), wall(call.get("ended_at")))
            for call in calls
            if isinstance(call, Mapping)
        ]
        spans = [span for span in spans if span[0] is not None and span[1] is not None]
        spans.sort(key=lambda span: span[0] or 0.0)

        def gap(phase: str, start: float | None, end: float | None) -> None:
            if start is not None and end is not None:
                gaps[phase].append((end - start) * 1000)

        gap("post sent->enqueued", turn.sent_at, enqueued)
        gap("enqueued->claimed", enqueued, claimed)
        if spans:
            gap("claimed->first model call", claimed, spans[0][0])
            for previous, following in itertools.pairwise(spans):
                gap("between model calls", previous[1], following[0])
            gap("last model call->finished", spans[-1][1], finished)
        gap("finished->reply seen", finished, turn.seen_at)
    phases = {phase: statistics.fmean(values) for phase, values in gaps.items() if values}
    return Summary(e2e, overhead, from_server, phases)


def print_table(label: str, summary: Summary, load: Load) -> None:
    count = len(summary.e2e)
    source = (
        f"model time from the server for {summary.model_from_server}/{count} turns"
        if summary.model_from_server
        else f"model time as configured ({load.configured_model_seconds * 1000:.0f} ms)"
    )
    print(f"\n== {label}: {count} turns; overhead = end-to-end - model time ({source})")
    print(f"{'ms':<14}{'p50':>10}{'p95':>10}{'p99':>10}{'mean':>10}")
    for name, values in (("end-to-end", summary.e2e), ("overhead", summary.overhead)):
        print(f"{name:<14}" + "".join(f"{value:10.1f}" for value in summary.row(values)))
    if summary.phases:
        print("mean gaps, ms (from the thread's timings):")
        for phase in PHASES:
            if phase in summary.phases:
                print(f"  {phase:<28}{summary.phases[phase]:10.1f}")
    else:
        print("mean gaps: the server reports no thread timings yet (claimed_at, model_calls...)")


def print_ratios(ours: Summary, baseline: Summary) -> None:
    print("\n== baseline / ours (>1: ours is faster)")
    print(f"{'':<14}{'p50':>10}{'p95':>10}{'p99':>10}{'mean':>10}")
    for name, ours_values, base_values in (
        ("end-to-end", ours.e2e, baseline.e2e),
        ("overhead", ours.overhead, baseline.overhead),
    ):
        cells = []
        for mine, theirs in zip(ours.row(ours_values), baseline.row(base_values), strict=True):
            cells.append(f"x{theirs / mine:.2f}" if mine > 0 else "n/a")
        print(f"{name:<14}" + "".join(f"{cell:>10}" for cell in cells))


def save_chart(results: dict[str, Summary], load: Load) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, attribute, title in (
        (axes[0], "e2e", "end-to-end (post -> reply seen)"),
        (axes[1], "overhead", "overhead (end-to-end - model time)"),
    ):
        for label, summary in results.items():
            values = sorted(max(value, 1e-3) for value in getattr(summary, attribute))
            fractions = [(index + 1) / len(values) for index in range(len(values))]
            axis.step(values, fractions, where="post", label=label)
        axis.set_xscale("log")
        axis.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        axis.xaxis.set_minor_formatter(NullFormatter())
        axis.set_xlabel("seconds (log)")
        axis.set_ylabel("fraction of turns")
        axis.set_title(title)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend()
    figure.suptitle(
        f"{load.tenants} tenants x {load.turns} turns, model {load.model_ms} ms in "
        f"{load.checkpoints} calls, state ~{load.state_kb} KB"
    )
    figure.tight_layout()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    figure.savefig(CHART_PATH, dpi=110)
    plt.close(figure)
    return CHART_PATH


# --- Main --------------------------------------------------------------------------------------


def parse_load() -> Load:
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
    options = parser.parse_args()
    global OURS_ONLY
    OURS_ONLY = options.ours_only
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
    return Load(turn_timeout=options.turn_timeout, **values)


def base_env(load: Load) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in DEFAULTED}
    return {**env, "LOG_LEVEL": "WARNING", "PYTHONUNBUFFERED": "1", **load.engine_env()}


def interrupted(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    load = parse_load()
    signal.signal(signal.SIGTERM, interrupted)  # stop the services on SIGTERM as on Ctrl-C
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    print(
        f"turns: {load.tenants} tenants x {load.turns} turns, model {load.model_ms} ms in "
        f"{load.checkpoints} calls of {load.call_ms} ms, checkpoint growing to ~{load.state_kb} KB "
        f"({load.step_bytes} bytes per working step), {os.cpu_count()} CPUs; log {LOG_PATH}",
        flush=True,
    )
    results: dict[str, Summary] = {}
    with LOG_PATH.open("w") as log:
        try:
            ours_env = {
                **base_env(load),
                "EMBEDDING_PROVIDER": "hashing",
                "WORKSPACE_INDEXING": "queue",
            }
            results["ours"] = summarise(run_configuration("ours", ours_env, load, log), load)
            if OURS_ONLY:
                print_table("ours", results["ours"], load)
                return 0
            with embeddings_server(EMBEDDING_SECONDS_PER_INPUT) as embedder:
                baseline_env = {
                    **base_env(load),
                    "WORKSPACE_RUNTIME_PATHS": "",
                    "WORKSPACE_INDEXING": "inline",
                    "EMBEDDING_PROVIDER": "openai",
                    "EMBEDDING_BASE_URL": embedder.url,
                    "EMBEDDING_API_KEY": "bench",
                    "EMBEDDING_DIMENSIONS": "256",
                    "DATABASE_POOL_SIZE": "10",
                    # Turns queue for the small pool behind the global lock; that wait is what
                    # the baseline measures, so let it last as long as a turn may (the default
                    # 10 s fails turns at 30 tenants), as bench/conversations.py does with its
                    # lock timeout.
                    "DATABASE_POOL_TIMEOUT": str(min(300, max(10, math.ceil(load.turn_timeout)))),
                    "THREAD_RUNNER": "bench.baseline_runner.run_thread",
                }
                turns = run_configuration("baseline", baseline_env, load, log)
                print(
                    f"  baseline: the embeddings server embedded {embedder.inputs} texts in "
                    f"{embedder.requests} requests",
                    flush=True,
                )
            results["baseline"] = summarise(turns, load)
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


def print_log_tail(lines: int = 60) -> None:
    with suppress(OSError):
        tail = LOG_PATH.read_text(errors="replace").splitlines()[-lines:]
        print(f"--- last {len(tail)} lines of {LOG_PATH}:", file=sys.stderr)
        for line in tail:
            print(line, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
