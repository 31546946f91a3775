"""The charts as a browser draws them, with the admin's own CSS: every series stands out from the
page in the light theme, the dark one and the operating system's dark mode, and the axes take
the page's text colour.

The page is the charts page as the test client serves it, with the admin's static files served
from Django's own folder: no web server, and nothing fetched from elsewhere. Playwright runs an
event loop in this thread, so the database is read before the browser starts.
"""

from __future__ import annotations

import datetime
import mimetypes
from pathlib import Path
from typing import Any

import django
import pytest
from django.test import Client

from tests.operations.test_admin_charts import FIVE_MINUTES, _bucket_starts, _finished, _job
from tests.support.browser import BROWSER_MARKS, SCREENSHOTS, Page, chromium

pytestmark = [
    *BROWSER_MARKS,
    pytest.mark.django_db,
]

ADMIN_STATIC = Path(django.__file__).parent / "contrib" / "admin" / "static"
ORIGIN = "http://admin.test"

# The smallest contrast WCAG asks of graphics (bars, lines) against what is next to them.
GRAPHICS_CONTRAST = 3.0


def _luminance(rgb: str) -> float:
    channels = [int(part) / 255 for part in rgb[rgb.index("(") + 1 : -1].split(",")[:3]]
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(first: str, second: str) -> float:
    lighter, darker = sorted((_luminance(first), _luminance(second)), reverse=True)
    return (lighter + 0.05) / (darker + 0.05)


def _serve(page: Page, html: str) -> None:
    def static(route: Any) -> None:
        path = ADMIN_STATIC / route.request.url.split("/static/", 1)[1].split("?")[0]
        if not path.is_file():
            route.fulfill(status=404, body="")
            return
        kind = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
        route.fulfill(body=path.read_bytes(), content_type=kind)

    page.route(f"{ORIGIN}/static/**", static)
    page.route(f"{ORIGIN}/admin/charts/", lambda route: route.fulfill(body=html))


def _colours(page: Page) -> dict[str, Any]:
    return dict(
        page.evaluate(
            """() => {
                const fill = (selector) => getComputedStyle(document.querySelector(selector)).fill;
                const stroke = (selector) =>
                    getComputedStyle(document.querySelector(selector)).stroke;
                return {
                    background: getComputedStyle(document.body).backgroundColor,
                    text: getComputedStyle(document.body).color,
                    axis_text: fill('[data-chart="turns"] .chart-axes text[text-anchor="end"]'),
                    series: {
                        completed: fill('[data-series="completed"] rect'),
                        failed: fill('[data-series="failed"] rect'),
                        stopped: fill('[data-series="stopped"] rect'),
                        other: fill('[data-series="other"] rect'),
                        p50: stroke('[data-chart="overhead"] [data-series="p50"] line'),
                        p95: stroke('[data-chart="overhead"] [data-series="p95"] line'),
                        peak: stroke('[data-series="peak"] line'),
                        waiting: stroke('[data-series="waiting"] line'),
                    },
                };
            }"""
        )
    )


def test_every_series_stands_out_in_the_light_and_the_dark_theme(admin_client: Client) -> None:
    starts = _bucket_starts(FIVE_MINUTES, 12)
    for number, state in enumerate(("completed", "failed", "stopped", "completed")):
        _finished(starts[8 + number] + datetime.timedelta(seconds=1), overhead_ms=100, state=state)
    _job("indexing", "todo", [("deferred", starts[9])])
    html = admin_client.get("/admin/charts/").content.decode()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    seen: dict[str, dict[str, Any]] = {}
    with chromium() as browser:
        for theme, scheme in (("light", "light"), ("dark", "light"), ("auto", "dark")):
            page = browser.new_page(viewport={"width": 1300, "height": 1000})
            page.emulate_media(color_scheme=scheme)  # type: ignore[arg-type]
            page.add_init_script(f"localStorage.setItem('theme', '{theme}')")
            _serve(page, html)
            page.goto(f"{ORIGIN}/admin/charts/")
            seen[f"{theme}/{scheme}"] = _colours(page)
            page.locator("#dashboard-charts").screenshot(
                path=str(SCREENSHOTS / f"charts-{theme}-{scheme}.png")
            )
            page.close()

    light, dark, system_dark = seen["light/light"], seen["dark/light"], seen["auto/dark"]
    assert light["background"] != dark["background"]
    assert system_dark == dark
    for colours in (light, dark):
        assert colours["axis_text"] == colours["text"]
        low = {
            name: round(contrast(colour, colours["background"]), 2)
            for name, colour in colours["series"].items()
            if contrast(colour, colours["background"]) < GRAPHICS_CONTRAST
        }
        assert low == {}, colours
    # The admin's own error colour for failures, in either theme.
    assert light["series"]["failed"] == "rgb(186, 33, 33)"
    assert dark["series"]["failed"] == "rgb(227, 95, 95)"
