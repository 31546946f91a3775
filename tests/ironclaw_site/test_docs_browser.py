"""The API docs UI renders in a real headless browser with no internet: every asset is local."""

from __future__ import annotations

import shutil
import subprocess
import tempfile

import pytest
from django.db import connection

from tests.support.servers import app_server, database_url

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="Chromium is not installed: `apt-get install chromium` (.ci/run does this) to run "
        "browser tests",
    ),
    pytest.mark.django_db(transaction=True),
]


def test_docs_ui_renders_the_schema_offline() -> None:
    assert CHROMIUM is not None
    env = {"DATABASE_URL": database_url(connection.settings_dict)}
    with app_server(env) as base_url, tempfile.TemporaryDirectory() as profile:
        result = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                f"--user-data-dir={profile}",
                # Any request that leaves loopback fails, so a CDN asset would break the page.
                "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                "--virtual-time-budget=10000",
                "--dump-dom",
                f"{base_url}/api/docs/",
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )

    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    # Swagger UI builds these nodes from the schema it fetched: the page works end to end.
    assert 'class="swagger-ui' in dom
    assert "ironclaw_site API" in dom
    assert "/api/v1/me" in dom
