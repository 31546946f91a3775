"""What the browser tests share: Debian's Chromium driven by Playwright, the marks that skip them
(with how to install what is missing) where either is absent, and where screenshots go."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from django.conf import settings

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

__all__ = ["BROWSER_MARKS", "CHROMIUM", "SCREENSHOTS", "Page", "expect", "sync_playwright"]
