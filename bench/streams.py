"""Event streams benchmark: 1,000 Server-Sent Event streams open on ``manage.py serve`` while 30
tenants run turns, against the same turns without streams, in the same run.

The service runs as ``make run`` has it (``manage.py serve``: its default web processes, request
threads and workers) on a scratch database, with the echo model making each turn a few model
calls of ``--model-ms / --checkpoints`` each, whose text the engine publishes as token deltas
(every ENGINE_DELTA_INTERVAL_MS). The tenants' load is bench/turns.py's: each tenant posts a
message, long-polls the entries for the reply, then reads its thread (GET threads/{id}), for
``--seconds``; their first messages are spread over one model time (``--together``: all at
once). Each of ``--rounds`` rounds is two phases of that load:

- A: no streams.
- B: ``--streams`` streams open (real TCP connections to the public port, from a client process
  of its own: bench/streams_client.py): one on each active tenant's conversation, whose deltas
  are timed, and the rest on idle conversations of other tenants, ``--per-tenant`` a tenant
  (each tenant's key may hold STREAMS_PER_KEY streams per web process; none is raised here).
  Before they open, as many plain GETs of their conversations, as many at a time: the control
  for the pools' growth that so many requests at once bring, which is no stream's.

It prints, for A and B and B/A: the turns' overhead and end-to-end time, and each API request's
own latency (POST messages, GET threads/{id}), p50 and p95; the time to open the streams; each
delta's lag on the active streams (received minus its ``at``, when the engine had the text: the
same clock), and that of the first delta of each model step; the app database's connections
(``pg_stat_activity``, each attributed to the process at its other end with ``ss``) before the
load, before the streams, with them open and idle, and under each phase's load, with the pools'
own figures from /metrics; the web processes' memory, and their CPU by thread (the hub's loop,
the notification listener, the request threads); the issue's targets, met or missed.

    .venv/bin/python bench/streams.py             # 30 tenants, 1,000 streams, 2 x (A, B) of 30 s
    .venv/bin/python bench/streams.py --rounds 4  # more rounds: the noise, round by round
    .venv/bin/python bench/streams.py --profile   # and py-spy on the web processes

serve's output goes to bench/results/streams.log (its tail is printed when a run fails).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import signal
import sys
import time
from pathlib import Path

# Run as a script, this folder comes first on the path: the checkout must come before it.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.streams_client import Watch
from bench.streams_figures import (
    BEFORE_LOAD,
    CLOSED,
    NO_STREAMS,
    OPEN_IDLE,
    Phase,
    Report,
    print_report,
)
from bench.streams_probes import (
    ConnectionCounter,
    ConnectionSamples,
    StreamClient,
    process_roles,
    service_gauges,
    web_processes,
    web_rss_mib,
)
from bench.streams_profile import Profiles, ThreadCpu
from bench.turns import interrupted, print_log_tail
from bench.turns_cpu import CpuMeter
from bench.turns_load import RESULTS_DIR, Load, base_env
from bench.turns_service import (
    IDLE_SECONDS,
    BenchFailure,
    Services,
    Turn,
    database_postmaster_pid,
    drive,
    one_turn,
    scratch_services,
    thread_detail,
)

LOG_PATH = RESULTS_DIR / "streams.log"
# Idle streams settle (their hand-offs done, the hub's first keep-alives not yet due) this long
# before their connections are counted.
SETTLE_SECONDS = 2.0


def parse() -> tuple[Load, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tenants", type=int, default=30, help="tenants running turns (30)")
    parser.add_argument("--streams", type=int, default=1000, help="streams open in B (1000)")
    parser.add_argument("--per-tenant", type=int, default=10, help="idle streams a tenant (10)")
    parser.add_argument("--seconds", type=float, default=30, help="length of a phase (30)")
    parser.add_argument("--rounds", type=int, default=2, help="A-then-B rounds (2)")
    parser.add_argument("--model-ms", type=int, default=3000, help="model time a turn (3000)")
    parser.add_argument("--checkpoints", type=int, default=3, help="model calls a turn (3)")
    parser.add_argument("--state-kb", type=int, default=8, help="working steps' text (8 KB)")
    parser.add_argument("--open-concurrency", type=int, default=64, help="opens at once (64)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the web processes in each phase (bench/streams_profile.py)",
    )
    parser.add_argument(
        "--together", action="store_true", help="start the tenants at once, not spread"
    )
    options = parser.parse_args()
    if options.streams < options.tenants:
        parser.error("--streams must be at least --tenants (one per active conversation)")
    load = Load(
        tenants=options.tenants,
        turns=1,
        model_ms=options.model_ms,
        checkpoints=options.checkpoints,
        state_kb=options.state_kb,
        turn_timeout=120.0,
        spread=not options.together,
    )
    return load, options


def service_env(load: Load) -> dict[str, str]:
    """bench/turns.py's environment with serve's own defaults (web processes, request threads,
    workers' concurrency), as ``make run`` has them."""
    ours = load.service_env()
    return {name: value for name, value in base_env(load).items() if name not in ours}


def watches_create(active_keys: list[str], streams: int, per_tenant: int) -> list[Watch]:
    """A conversation for each active tenant (its messages go there: channel web), and idle
    tenants' conversations for the other streams, ``per_tenant`` each, with their keys."""
    from django.db import connection

    from accounts.services import api_key_create
    from conversations.services import conversation_start_new

    watches = [
        Watch(key, str(conversation_start_new(user_id=f"bench-tenant-{n}", channel="web").id), True)
        for n, key in enumerate(active_keys)
    ]
    idle = streams - len(active_keys)
    for tenant in range(math.ceil(idle / per_tenant)):
        user_id = f"bench-idle-{tenant}"
        key = api_key_create(name="bench", user_id=user_id).raw_key
        for n in range(min(per_tenant, idle - tenant * per_tenant)):
            conversation = conversation_start_new(user_id=user_id, channel=f"idle-{n}")
            watches.append(Watch(key, str(conversation.id), False))
    connection.close()
    return watches


def run_phase(
    name: str,
    services: Services,
    keys: list[str],
    load: Load,
    seconds: float,
    meter: CpuMeter,
    counter: ConnectionCounter,
    client: StreamClient | None,
    *,
    profile: bool,
) -> Phase:
    """The tenants' turns for ``seconds`` (each finishes the turn it started), measured."""
    gets: list[float] = []
    pids = [process.pid for process in web_processes(services)]
    profiles = Profiles(name, pids, seconds) if profile else None

    def read_thread(turn: Turn, key: str) -> None:
        gets.append(thread_detail(services, key, turn))

    stop_sampling, samples = counter.sampling()
    client_cpu = client.cpu_seconds() if client is not None else 0.0
    before, threads = meter.sample(), ThreadCpu(pids)
    turns = drive(services, keys, load, until=time.monotonic() + seconds, after_turn=read_thread)
    after, (by_thread, kernel) = meter.sample(), threads.stop()
    stop_sampling.set()
    return Phase(
        name,
        turns,
        gets,
        before,
        after,
        ConnectionSamples(list(samples)),
        client.cpu_seconds() - client_cpu if client is not None else None,
        profiles=profiles,
        web_threads=by_thread,
        web_kernel=kernel,
    )


def phase_b(
    report: Report,
    services: Services,
    keys: list[str],
    watches: list[Watch],
    meter: CpuMeter,
    counter: ConnectionCounter,
) -> Phase:
    """The control GETs, the streams opened, phase B's load, the streams closed."""
    options = report.options
    client = StreamClient(services.base_url, watches, options["open_concurrency"])
    try:
        report.plain.append(client.plain())
        time.sleep(SETTLE_SECONDS)
        report.connections[NO_STREAMS] = counter.count()
        report.gauges[NO_STREAMS] = service_gauges(services)
        report.rss_mib.setdefault("no streams", web_rss_mib(services))
        report.opened.append(client.open())
        time.sleep(SETTLE_SECONDS)
        report.connections[OPEN_IDLE] = counter.count()
        report.gauges[OPEN_IDLE] = service_gauges(services)
        report.rss_mib.setdefault("streams open", web_rss_mib(services))
        report.idle_with_streams = meter.idle_rates(IDLE_SECONDS)
        client.take()  # what came before the load: keep-alives only
        phase = run_phase(
            "B",
            services,
            keys,
            report.load,
            options["seconds"],
            meter,
            counter,
            client,
            profile=options["profile"],
        )
        phase.received, phase.open_after = client.take()
        report.rss_mib.setdefault("after B", web_rss_mib(services))
    finally:
        client.close()
    time.sleep(SETTLE_SECONDS)
    report.connections[CLOSED] = counter.count()
    return phase


def measure(services: Services, keys: list[str], load: Load, options: argparse.Namespace) -> Report:
    from django.conf import settings

    active_keys = keys[:-1]
    started = time.perf_counter()
    watches = watches_create(active_keys, options.streams, options.per_tenant)
    print(
        f"  {len(watches)} conversations for the streams and {len({w.key for w in watches})} "
        f"keys created in {time.perf_counter() - started:.1f} s; warming up",
        flush=True,
    )
    # Imports, pools and job fetching warmed up; then one turn for each tenant.
    one_turn(services, keys[-1], "warm-up", "warm-up turn", load.turn_timeout)
    drive(services, active_keys, dataclasses.replace(load, turns=1, spread=False))
    meter = CpuMeter(serve_pid=services.serve.process.pid, postmaster_pid=database_postmaster_pid())
    counter = ConnectionCounter(settings.DATABASES["default"]["NAME"], process_roles(services))
    report = Report(load=load, options=vars(options), idle=meter.idle_rates(IDLE_SECONDS))
    try:
        report.connections[BEFORE_LOAD] = counter.count()
        for round_number in range(1, options.rounds + 1):
            phase = run_phase(
                "A",
                services,
                active_keys,
                load,
                options.seconds,
                meter,
                counter,
                None,
                profile=options.profile,
            )
            report.phases.append(phase)
            print(f"  round {round_number}: A, {len(phase.turns)} turns", flush=True)
            phase = phase_b(report, services, active_keys, watches, meter, counter)
            report.phases.append(phase)
            lags = len(phase.received.lags) if phase.received else 0
            print(f"  round {round_number}: B, {len(phase.turns)} turns, {lags} deltas timed")
    finally:
        counter.close()
    return report


def main() -> int:
    load, options = parse()
    signal.signal(signal.SIGTERM, interrupted)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    model = f"{load.checkpoints} calls of {load.call_ms} ms"
    print(
        f"streams: {load.tenants} tenants' turns (model {model}) for {options.seconds:.0f} s "
        f"without streams (A), then with {options.streams} open (B), {options.rounds} round(s); "
        f"{os.cpu_count()} CPUs; log {LOG_PATH}",
        flush=True,
    )
    with LOG_PATH.open("w") as log:
        try:
            with scratch_services(
                "streams",
                service_env(load),
                log,
                tenants=load.tenants + 1,
                database_prefix="ironclaw_bench",
            ) as (services, keys):
                report = measure(services, keys, load, options)
        except (BenchFailure, KeyboardInterrupt) as error:
            import traceback

            traceback.print_exc()
            log.flush()
            reason = "interrupted" if isinstance(error, KeyboardInterrupt) else str(error)
            print(f"\nstreams benchmark FAILED: {reason}", file=sys.stderr)
            print_log_tail(path=LOG_PATH)
            return 130 if isinstance(error, KeyboardInterrupt) else 1
    print_report(report)
    for phase in report.phases:
        if phase.profiles is not None:
            phase.profiles.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
