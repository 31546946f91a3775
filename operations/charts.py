"""The dashboard's charts (turns by outcome, turn overhead, queue wait, indexing backlog) over
the last hour or day: ``charts(span)`` is what ``admin/operations/charts.html`` shows, on the
admin's index and on its own page (``/admin/charts/``, see ``charts_urls``).

The data is ``operations/chart_data.py`` (one query per chart, in one bounded transaction), the
drawing ``operations/charts_svg.py``: server-side SVG, no script and nothing fetched elsewhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from django.contrib import admin
from django.db import DatabaseError
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils.safestring import SafeString

from operations.chart_data import SPANS, ChartData, Series, Span, charts_data, span_named
from operations.charts_svg import chart_svg, drawing

logger = logging.getLogger(__name__)

# The charts give up on a slow database rather than holding the page (and a connection).
CHARTS_STATEMENT_TIMEOUT_MS = 2000


@dataclass(frozen=True)
class Chart:
    data: ChartData
    svg: SafeString
    summary: str

    @property
    def key(self) -> str:
        return self.data.key

    @property
    def series(self) -> tuple[Series, ...]:
        return self.data.series


@dataclass
class ChartsBoard:
    span: Span
    spans: list[Span] = field(default_factory=lambda: list(SPANS.values()))
    charts: list[Chart] = field(default_factory=list)
    # Why the charts are missing (the database was too slow or failed).
    unavailable: str = ""


def charts(span: str) -> ChartsBoard:
    """The charts over ``span`` ("hour" or "day"; anything else is "hour"), drawn; when the
    database fails or does not answer within ``CHARTS_STATEMENT_TIMEOUT_MS``, none and why."""
    board = ChartsBoard(span=span_named(span))
    try:
        data = charts_data(board.span, statement_timeout_ms=CHARTS_STATEMENT_TIMEOUT_MS)
    except DatabaseError as error:
        logger.warning("admin dashboard: charts unavailable: %s", error)
        board.unavailable = (
            "The charts are unavailable: the database did not answer within "
            f"{CHARTS_STATEMENT_TIMEOUT_MS} ms ({type(error).__name__})."
        )
        return board
    for chart in data:
        drawn = drawing(chart, board.span)
        board.charts.append(Chart(chart, chart_svg(drawn), drawn.summary))
    return board


def charts_view(request: HttpRequest) -> HttpResponse:
    """The charts on a page of their own, in the admin's frame."""
    context: dict[str, Any] = {
        **admin.site.each_context(request),
        "title": "Charts",
        "charts": charts(request.GET.get("span", "hour")),
    }
    return TemplateResponse(request, "admin/operations/charts_page.html", context)


def charts_urls(site: admin.AdminSite) -> list[URLPattern]:
    """``/admin/charts/`` (name ``admin:charts``), for staff signed in to ``site``: put them
    before the site's own (``get_urls``)."""
    return [path("charts/", site.admin_view(charts_view), name="charts")]
