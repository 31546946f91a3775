"""How a chart is drawn: its geometry (axes with a few labelled ticks, stacked bars or lines with
gaps, a hover title on every bucket, bar and point) and a text summary, for the SVG template
``admin/operations/chart.svg.html``.

Colours are CSS (the series' custom properties, ``currentColor`` and the admin's variables), so
one drawing serves the light and the dark theme. Coordinates are strings with one decimal: the
template prints them as they are, whatever the locale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.template.loader import render_to_string
from django.utils.safestring import SafeString

from core.admin_display import duration_text
from operations.chart_data import ChartData, Series, Span

WIDTH = 480
HEIGHT = 200
# The plot area's margins: tick labels left and below, the unit above.
LEFT, RIGHT, TOP, BOTTOM = 60, 10, 18, 22
Y_TICKS = 4


@dataclass(frozen=True)
class Tick:
    at: str
    label: str


@dataclass(frozen=True)
class Box:
    x: str
    y: str
    width: str
    height: str
    title: str
    colour: str = ""


@dataclass(frozen=True)
class Point:
    x: str
    y: str
    title: str


@dataclass
class Line:
    colour: str
    dashed: bool
    # Runs of buckets with a value, each a polyline's points ("x,y x,y").
    segments: list[str] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)


@dataclass
class Drawing:
    key: str
    title: str
    summary: str
    unit_label: str
    width: int = WIDTH
    height: int = HEIGHT
    left: int = LEFT
    right: int = WIDTH - RIGHT
    top: int = TOP
    bottom: int = HEIGHT - BOTTOM
    y_ticks: list[Tick] = field(default_factory=list)
    x_ticks: list[Tick] = field(default_factory=list)
    # One per bucket, the plot's height: hovering anywhere over a bucket shows all its values.
    columns: list[Box] = field(default_factory=list)
    bars: list[Box] = field(default_factory=list)
    lines: list[Line] = field(default_factory=list)


def _number(value: float) -> str:
    return f"{value:.1f}"


def nice_step(top: float, ticks: int = Y_TICKS) -> float:
    """The smallest of 1, 2, 5 x 10^n that covers ``top`` in ``ticks`` steps."""
    raw = max(top, 1e-9) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


def value_text(value: float, unit: str) -> str:
    """A value with its unit: "850 ms", "1.5 s", "1 turn", "12 documents"."""
    if unit == "ms":
        return duration_text(timedelta(milliseconds=value))
    count = round(value)
    return f"{count} {unit[:-1] if count == 1 else unit}"


# A time axis counts in the largest of these its top spans twice, so its ticks are round numbers
# of one unit (0, 1, 2, 3 h; never 83.333 min).
TIME_UNITS = ((3_600_000.0, "h"), (60_000.0, "min"), (1000.0, "s"))


def time_unit(top_ms: float) -> tuple[float, str]:
    """The unit a time axis reaching ``top_ms`` counts in: its length in ms and its name."""
    return next(((ms, name) for ms, name in TIME_UNITS if top_ms >= 2 * ms), (1.0, "ms"))


def tick_text(value: float, unit: str, top: float) -> str:
    if unit != "ms":
        return f"{value:g}"
    length, name = time_unit(top)
    return f"{value / length:g} {name}"


def bucket_text(start: datetime, step: timedelta, last: bool) -> str:
    end = start + step
    return f"{start:%H:%M}-{end:%H:%M} UTC" + (", so far" if last else "")


def _stacked_totals(data: ChartData) -> list[float]:
    return [sum(s.values[i] or 0 for s in data.series) for i in range(len(data.starts))]


def _axis_top(data: ChartData) -> tuple[float, float]:
    if data.stacked:
        highest = max(_stacked_totals(data), default=0)
    else:
        highest = max((v for s in data.series for v in s.values if v is not None), default=0)
    # An empty chart still has an axis: 0 to 1 (turns, documents) or to 50 ms.
    if data.unit == "ms":
        length, _ = time_unit(highest or 100)
        step = nice_step((highest or 100) / length) * length
    else:
        step = max(nice_step(highest or Y_TICKS), 1)
    return step, step * max(1, math.ceil(highest / step - 1e-9))


def _value_in_title(data: ChartData, label: str, value: float | None) -> str:
    if value is None:
        return f"{label} none"
    if data.stacked:
        return f"{value:g} {label}"
    return f"{label} {value_text(value, data.unit)}"


def _counted(data: ChartData, index: int) -> str:
    return f" (of {value_text(data.counts[index], data.counted)})" if data.counts else ""


def _bucket_title(data: ChartData, index: int, last: bool) -> str:
    values = ", ".join(_value_in_title(data, s.label, s.values[index]) for s in data.series)
    return f"{bucket_text(data.starts[index], data.step, last)}: {values}{_counted(data, index)}"


def drawing(data: ChartData, span: Span) -> Drawing:
    """Where everything goes: values scale to the plot's height, buckets share its width."""
    board = Drawing(
        key=data.key,
        title=data.title,
        summary=summary(data, span),
        unit_label="time" if data.unit == "ms" else data.unit,
    )
    step, top = _axis_top(data)
    height = board.bottom - board.top
    buckets = max(1, len(data.starts))
    width = (board.right - board.left) / buckets

    def y(value: float) -> float:
        return board.bottom - height * value / top

    board.y_ticks = [
        Tick(_number(y(i * step)), tick_text(i * step, data.unit, top))
        for i in range(round(top / step) + 1)
    ]
    board.x_ticks = [
        Tick(_number(board.left + i * width), f"{start:%H:%M}")
        for i, start in enumerate(data.starts)
        if i % span.label_every == 0
    ]
    for i in range(len(data.starts)):
        x = board.left + i * width
        last = i == len(data.starts) - 1
        board.columns.append(
            Box(
                _number(x),
                str(board.top),
                _number(width),
                str(height),
                _bucket_title(data, i, last),
            )
        )
        if data.stacked:
            base = 0.0
            for s in data.series:
                value = s.values[i] or 0
                if value <= 0:
                    continue
                board.bars.append(
                    Box(
                        _number(x + width * 0.1),
                        _number(y(base + value)),
                        _number(width * 0.8),
                        _number(y(base) - y(base + value)),
                        f"{bucket_text(data.starts[i], data.step, last)}: {value:g} {s.label}",
                        s.colour,
                    )
                )
                base += value
    if not data.stacked:
        board.lines = [_line(data, series, board.left, width, y) for series in data.series]
    return board


def _line(
    data: ChartData, series: Series, left: int, width: float, y: Callable[[float], float]
) -> Line:
    """The series' runs of values as polylines (a bucket without one is a gap), and a point
    with its title on every value."""
    line = Line(series.colour, series.dashed)
    run: list[str] = []
    for i, value in enumerate(series.values):
        if value is None:
            # A lone value is its point only: a polyline needs two.
            if len(run) > 1:
                line.segments.append(" ".join(run))
            run = []
            continue
        x, top = left + (i + 0.5) * width, y(value)
        run.append(f"{_number(x)},{_number(top)}")
        last = i == len(series.values) - 1
        title = (
            f"{bucket_text(data.starts[i], data.step, last)}: {series.label} "
            f"{value_text(value, data.unit)}{_counted(data, i)}"
        )
        line.points.append(Point(_number(x), _number(top), title))
    if len(run) > 1:
        line.segments.append(" ".join(run))
    return line


def summary(data: ChartData, span: Span) -> str:
    """The chart in words, for those who cannot see it: totals or latest and highest values."""
    if not data.starts:
        return "No data."
    last = len(data.starts) - 1
    latest = bucket_text(data.starts[last], data.step, True)
    if data.stacked:
        totals = _stacked_totals(data)
        if not sum(totals):
            return f"{span.label.capitalize()}: {value_text(0, data.unit)}."
        parts = ", ".join(f"{sum(v or 0 for v in s.values):g} {s.label}" for s in data.series)
        busiest = max(range(len(totals)), key=lambda i: (totals[i], i))
        return (
            f"{span.label.capitalize()}: {value_text(sum(totals), data.unit)} ({parts}). "
            f"Latest {span.step_label} ({latest}): {value_text(totals[last], data.unit)}. "
            f"Most: {value_text(totals[busiest], data.unit)} "
            f"({bucket_text(data.starts[busiest], data.step, busiest == last)})."
        )
    sentences = [f"{span.label.capitalize()}, per {span.step_label}."]
    for s in data.series:
        # "Most waiting", but "p95" stays as it is written.
        label = s.label if s.label[1:2].isdigit() else s.label[:1].upper() + s.label[1:]
        measured = [i for i, v in enumerate(s.values) if v is not None]
        if not measured:
            sentences.append(f"{label}: none.")
            continue
        highest = max(measured, key=lambda i: (s.values[i] or 0, i))
        if not s.values[highest]:
            sentences.append(f"{label}: {value_text(0, data.unit)} throughout.")
            continue
        now = s.values[last]
        sentences.append(
            f"{label}: {'none' if now is None else value_text(now, data.unit)} in the latest "
            f"({latest}), highest {value_text(s.values[highest] or 0, data.unit)} "
            f"({bucket_text(data.starts[highest], data.step, highest == last)})."
        )
    return " ".join(sentences)


def chart_svg(board: Drawing) -> SafeString:
    return render_to_string("admin/operations/chart.svg.html", {"drawing": board})
