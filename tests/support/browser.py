"""What the browser tests share: Debian's Chromium driven by Playwright, the marks that skip them
(with how to install what is missing) where either is absent, and where screenshots go."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.conf import settings

if TYPE_CHECKING:
    from playwright.sync_api import Browser

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - requirements-dev.txt pins it
    sync_playwright = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = Path(settings.BASE_DIR) / "var" / "screenshots"

BROWSER_MARKS = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Chromium is not installed: `apt-get install chromium` (.ci/run does this) to run "
        "browser tests",
    ),
    pytest.mark.skipif(
        sync_playwright is None,
        reason="Playwright is not installed: pip install -r requirements-dev.txt",
    ),
]


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, driven by Playwright's sync API (which runs an event loop in
    this thread: no ORM call until it closes)."""
    assert sync_playwright is not None
    assert CHROMIUM is not None
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            # No sandbox: containers lack the user namespaces it needs. Nothing leaves loopback.
            args=["--no-sandbox", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"],
        )
        try:
            yield browser
        finally:
            browser.close()


def admin_sign_in(page: Page, base_url: str, password: str, username: str = "operator") -> None:
    """Sign in to the admin through its login form; the page is then on the dashboard."""
    page.goto(f"{base_url}/admin/login/?next=/admin/")
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.click("input[type=submit]")


__all__ = [
    "BROWSER_MARKS",
    "CHROMIUM",
    "SCREENSHOTS",
    "Page",
    "admin_sign_in",
    "chromium",
    "expect",
    "sync_playwright",
]
