"""The streams benchmark's figures (see bench/streams.py): phases A and B side by side, the
streams' opening and deltas, the database's connections, the web processes' memory and CPU, and
the issue's targets."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

from bench.streams_client import Opened, Received
from bench.streams_probes import Connections, ConnectionSamples
from bench.streams_profile import Profiles
from bench.turns_cpu import SERVICE_ROLES, CpuSample, cpu_per_turn, format_cpu
from bench.turns_figures import percentile, summarise
from bench.turns_load import Load
from bench.turns_service import Run, Turn

# The targets.
P95_RATIO_MAX = 1.2
FIRST_DELTA_P95_MAX_MS = 50.0
# The connection snapshots, in the order they are taken; the held-by-streams figure compares
# the second and the third.
BEFORE_LOAD = "before any load"
NO_STREAMS = "after A and the control GETs"
OPEN_IDLE = "the streams open, idle"
CLOSED = "the streams closed"


@dataclass
class Phase:
    name: str  # "A": no streams, "B": with them
    turns: list[Turn]
    gets: list[float]  # GET threads/{id}, seconds
    before: CpuSample
    after: CpuSample
    connections: ConnectionSamples
    client_cpu: float | None  # the stream client's CPU seconds during the phase
    received: Received | None = None
    open_after: int | None = None  # streams the client had open at the phase's end
    profiles: Profiles | None = None  # --profile's recordings
    # The web processes' CPU seconds by thread group (bench/streams_profile.py), and in the kernel.
    web_threads: dict[str, float] = field(default_factory=dict)
    web_kernel: float = 0.0

    @property
    def seconds(self) -> float:
        return self.after.at - self.before.at

    def rate(self, role: str) -> float:
        """CPU seconds a second of ``role`` during the phase."""
        return (self.after.seconds[role] - self.before.seconds[role]) / self.seconds


@dataclass
class Report:
    load: Load
    options: dict[str, Any]
    idle: dict[str, float]  # CPU rates before any load, no streams
    idle_with_streams: dict[str, float] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)
    plain: list[Opened] = field(default_factory=list)  # the control GETs
    opened: list[Opened] = field(default_factory=list)
    # /metrics' figures (streams_open, db_pool_connections_in_use/_open) at some snapshots.
    gauges: dict[str, dict[str, float]] = field(default_factory=dict)
    connections: dict[str, Connections] = field(default_factory=dict)
    rss_mib: dict[str, float] = field(default_factory=dict)  # the first round's
    round_ratios: list[float] = field(default_factory=list)  # overhead p95 B/A of each round

    def of(self, name: str) -> list[Phase]:
        return [phase for phase in self.phases if phase.name == name]


def _latencies(phases: list[Phase], load: Load) -> dict[str, list[float]]:
    """Seconds of each measured thing over ``phases``."""
    turns = [turn for phase in phases for turn in phase.turns]
    summary = summarise(Run(turns, {}), load)
    return {
        "turn overhead": summary.overhead,
        "turn end-to-end": summary.e2e,
        "POST messages": [turn.post_seconds for turn in turns],
        "GET threads/{id}": [seconds for phase in phases for seconds in phase.gets],
    }


def _ms(values: list[float], fraction: float) -> float:
    return percentile(values, fraction) * 1000 if values else float("nan")


def _spread(values: list[float]) -> str:
    if not values:
        return "none"
    return (
        f"p50 {_ms(values, 0.5):.1f} / p95 {_ms(values, 0.95):.1f} / "
        f"max {max(values) * 1000:.1f} ms ({len(values)})"
    )


def print_latencies(report: Report) -> float | None:
    """The API's latencies in A and B; returns the B/A ratio of the turn overhead's p95."""
    a, b = _latencies(report.of("A"), report.load), _latencies(report.of("B"), report.load)
    print(f"\n== API latency, ms: A {len(a['POST messages'])} turns, B {len(b['POST messages'])}")
    print(f"{'':<18}{'A p50':>9}{'B p50':>9}{'B/A':>7}{'A p95':>10}{'B p95':>9}{'B/A':>7}")
    ratio = None
    for name in a:
        cells = ""
        for fraction in (0.5, 0.95):
            before, after = _ms(a[name], fraction), _ms(b[name], fraction)
            share = after / before if before > 0 else float("nan")
            cells += f"{before:9.1f}{after:9.1f}{share:7.2f}" + (" " if fraction == 0.5 else "")
            if name == "turn overhead" and fraction == 0.95:
                ratio = share
        print(f"{name:<18}{cells}")
    if len(report.phases) > 2:
        p95s = [_ms(_latencies([p], report.load)["turn overhead"], 0.95) for p in report.phases]
        rounds = [b / a for a, b in zip(p95s[::2], p95s[1::2], strict=False) if a > 0]
        print(
            "turn overhead p95 phase by phase (the noise): "
            + ", ".join(f"{p.name} {p95:.1f}" for p, p95 in zip(report.phases, p95s, strict=True))
            + f"; B/A round by round {', '.join(f'{r:.2f}' for r in rounds)} "
            f"(median {statistics.median(rounds):.2f})"
        )
        report.round_ratios = rounds
    return ratio


def print_streams(report: Report) -> float | None:
    """Opening, deltas; returns the first deltas' p95 in ms."""
    print("\n== Streams")
    at_once = report.options["open_concurrency"]
    for plain, opened in zip(report.plain, report.opened, strict=True):
        for what, done in (("control GETs of the conversations", plain), ("opened", opened)):
            print(
                f"{what}: {len(done.each)} in {done.seconds:.2f} s ({at_once} at a time), "
                f"each {_spread(done.each)}; {len(done.failures)} failed"
            )
            for failure in done.failures[:3]:
                print(f"  failed: {failure}")
    served = report.gauges.get(OPEN_IDLE, {}).get("streams_open")
    print(f"the hubs say {served} streams open (the last round's)")
    first_p95 = None
    for phase in report.of("B"):
        received = phase.received
        assert received is not None
        print(
            f"B: {phase.open_after} streams open at its end; {received.frames} entry/thread "
            f"events and {received.keepalives} keep-alives received, {received.deltas_idle} "
            f"deltas on idle streams, {received.reopened} streams ended by the server"
        )
        print(f"  lag of every delta (received - at): {_spread(received.lags)}")
        print(f"  lag of each step's first delta:     {_spread(received.first_lags)}")
        if received.first_lags:
            first_p95 = max(first_p95 or 0.0, _ms(received.first_lags, 0.95))
    return first_p95


def print_connections(report: Report) -> int:
    """pg_stat_activity's figures; returns the connections the open idle streams added."""
    print(
        "\n== The app database's client connections (pg_stat_activity), by the process at the "
        "other end"
    )
    for label, connections in report.connections.items():
        print(f"  {label + ':':<30}{connections}")
        if label in report.gauges:
            gauges = report.gauges[label]
            print(
                f"  {'':<30}the pools (/metrics): {gauges.get('db_pool_connections_open')} open, "
                f"{gauges.get('db_pool_connections_in_use')} lent out"
            )
    for phase in report.phases:
        print(f"  {'under load, ' + phase.name + ':':<30}{phase.connections}")
    means = {name: max((p.connections.mean for p in report.of(name)), default=0.0) for name in "AB"}
    web_max = {
        name: max((p.connections.role_max("web") for p in report.of(name)), default=0)
        for name in "AB"
    }
    print(
        f"  under load B - A: {means['B'] - means['A']:+.1f} on average; the web processes' "
        f"pooled connections at most {web_max['A']} in A, {web_max['B']} in B"
    )
    without, with_streams = report.connections.get(NO_STREAMS), report.connections.get(OPEN_IDLE)
    if without is None or with_streams is None:
        return 0
    added = with_streams.total - without.total

    def gauge_delta(name: str) -> float:
        return report.gauges[OPEN_IDLE].get(name, 0.0) - report.gauges[NO_STREAMS].get(name, 0.0)

    grown, lent = gauge_delta("db_pool_connections_open"), gauge_delta("db_pool_connections_in_use")
    # What the pools opened and keep idle (psycopg_pool's max_idle: 10 minutes) for the opening
    # burst's requests is no stream's; a connection lent out, or outside the pools, would be.
    held = round(added - grown + lent)
    print(
        f"  held by the open idle streams: {held:+d}: {added:+d} connections, of which the pools "
        f"grew by {grown:+.0f} idle ones for the opening burst's requests and lent out "
        f"{lent:+.0f} more; web listeners {with_streams.by_role.get('web (listener)')} "
        f"(before {without.by_role.get('web (listener)')})"
    )
    return held


def print_processes(report: Report) -> None:
    print("\n== Web processes")
    rss = report.rss_mib
    if "streams open" in rss:
        per_stream = (rss["streams open"] - rss["no streams"]) * 1024 / report.options["streams"]
        print(
            f"RSS {rss['no streams']:.1f} MiB without streams, {rss['streams open']:.1f} with "
            f"them open ({per_stream:+.1f} KiB a stream), {rss.get('after B', 0):.1f} after B"
        )
    idle, streams_idle = report.idle["web"], report.idle_with_streams.get("web", 0.0)
    print(
        f"CPU, % of one core: idle {idle * 100:.1f}, idle with the streams open "
        f"{streams_idle * 100:.1f}; "
        + ", ".join(
            f"{p.name} {p.rate('web') * 100:.1f} (kernel {p.web_kernel / p.seconds * 100:.1f})"
            for p in report.phases
        )
    )
    print("  by thread, % of one core, both web processes:")
    for phase in report.phases:
        threads = sorted(phase.web_threads.items(), key=lambda item: -item[1])
        print(
            f"  {phase.name}: "
            + ", ".join(
                f"{group} {seconds / phase.seconds * 100:.1f}" for group, seconds in threads
            )
        )
    for phase in report.phases:
        cpu = cpu_per_turn(phase.before, phase.after, report.idle, len(phase.turns))
        client = (
            f"; the stream client {phase.client_cpu / phase.seconds * 100:.1f} % of a core"
            if phase.client_cpu is not None
            else ""
        )
        print(f"CPU a turn, {phase.name}: {format_cpu(cpu)}{client}")
    print(
        "the service's whole CPU, % of one core: "
        + ", ".join(
            f"{p.name} {sum(p.rate(role) for role in SERVICE_ROLES) * 100:.1f}"
            for p in report.phases
        )
    )


def print_report(report: Report) -> None:
    ratio = print_latencies(report)
    first_p95 = print_streams(report)
    held = print_connections(report)
    print_processes(report)
    print("\n== Targets")
    verdicts = [
        (
            f"turn overhead p95 B/A <= {P95_RATIO_MAX}",
            ratio is not None and ratio <= P95_RATIO_MAX,
            (f"{ratio:.2f}" if ratio is not None else "n/a")
            + (
                f" (round by round: median {statistics.median(report.round_ratios):.2f})"
                if report.round_ratios
                else ""
            ),
        ),
        ("connections held by idle streams: 0", held <= 0, f"{held:+d}"),
        (
            f"first delta p95 <= {FIRST_DELTA_P95_MAX_MS:.0f} ms",
            first_p95 is not None and first_p95 <= FIRST_DELTA_P95_MAX_MS,
            f"{first_p95:.1f} ms" if first_p95 is not None else "n/a",
        ),
    ]
    for label, met, value in verdicts:
        print(f"  {'met   ' if met else 'MISSED'} {label}: {value}")
