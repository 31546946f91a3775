from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection

from tests.support.servers import database_url

pytestmark = pytest.mark.django_db


def _start_with(variables: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Start Django in a fresh process with ``variables`` set, as a deployment would."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "ironclaw_site.settings",
        "DATABASE_URL": database_url(connection.settings_dict),
        **variables,
    }
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_conversation_settings_have_documented_defaults() -> None:
    assert settings.CONVERSATION_LOCK_TIMEOUT_MS == 2000
    assert settings.CONVERSATION_DEFAULT_BUSY_POLICY == "inject"
    assert settings.CONVERSATION_MAX_MESSAGE_BYTES == 65_536
    assert settings.THREAD_DEFAULT_LEASE_SECONDS == 60
    assert settings.THREAD_MAX_LEASE_SECONDS == 3600
    assert settings.THREAD_RUNNER == "engine.runner.run_thread"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CONVERSATION_LOCK_TIMEOUT_MS", "soon"),
        ("CONVERSATION_LOCK_TIMEOUT_MS", "0"),
        ("CONVERSATION_DEFAULT_BUSY_POLICY", "shout"),
        ("CONVERSATION_MAX_MESSAGE_BYTES", "-1"),
        ("THREAD_DEFAULT_LEASE_SECONDS", "7200"),
        ("THREAD_RUNNER", "not a path"),
    ],
)
def test_bad_conversation_setting_fails_start_up_naming_the_variable(name: str, value: str) -> None:
    started = _start_with({name: value})

    assert started.returncode != 0
    assert "ImproperlyConfigured" in started.stderr
    assert name in started.stderr.strip().splitlines()[-1]
