"""The turns benchmark's figures: latency percentiles, the gaps between a thread's phases from
its timings, the two configurations side by side, and the chart (see bench/turns.py)."""

from __future__ import annotations

import datetime
import itertools
import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.turns_cpu import format_cpu
from bench.turns_load import CHART_PATH, RESULTS_DIR, Load
from bench.turns_service import Run


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
    cpu_ms_per_turn: dict[str, float]  # by role
    # The first burst, one turn per tenant on pools and sessions not yet grown (turns_service).
    cold: Summary | None = None

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


def summarise(run: Run, load: Load) -> Summary:
    turns = run.turns
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
    cold = None
    if run.cold_turns:
        cold = summarise(Run(run.cold_turns, run.cold_cpu_ms_per_turn), load)
    return Summary(e2e, overhead, from_server, phases, run.cpu_ms_per_turn, cold)


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
    print(f"CPU per turn: {format_cpu(summary.cpu_ms_per_turn)}")
    if summary.cold is not None:
        p50, p95 = (percentile(summary.cold.overhead, p) * 1000 for p in (0.5, 0.95))
        count = len(summary.cold.e2e)
        print(
            f"first burst, before the measured turns ({count} turn{'s' * (count != 1)}, one per "
            f"tenant, while the pools grow): overhead p50 {p50:.1f} / p95 {p95:.1f} ms; "
            f"CPU per turn {format_cpu(summary.cold.cpu_ms_per_turn)}"
        )


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
    ours_cpu = sum(v for k, v in ours.cpu_ms_per_turn.items() if k != "client")
    base_cpu = sum(v for k, v in baseline.cpu_ms_per_turn.items() if k != "client")
    if ours_cpu > 0:
        print(f"{'CPU per turn':<14}{f'x{base_cpu / ours_cpu:.2f}':>10}")


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
