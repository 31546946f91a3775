"""Read one series out of a Prometheus text exposition (what ``/metrics`` answers)."""

from __future__ import annotations

import re

_LINE = re.compile(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def metric_sample(text: str, name: str, **labels: str) -> float:
    """The value of the series ``name`` with exactly ``labels`` (in any order)."""
    for line in text.splitlines():
        match = _LINE.fullmatch(line)
        if match and match[1] == name and dict(_LABEL.findall(match[2] or "")) == labels:
            return float(match[3])
    raise AssertionError(f"no {name}{labels} in the scrape")
