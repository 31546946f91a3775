from __future__ import annotations

import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from ironclaw_site.env import env_bool, env_choice, env_float, env_int, env_list


def _start_up(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Import the settings in a fresh process, as `manage.py` or the web server would."""
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=settings.BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "ironclaw_site.settings", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DATABASE_POOL_SIZE", "abc", "DATABASE_POOL_SIZE must be an integer"),
        ("DATABASE_POOL_SIZE", "0", "DATABASE_POOL_SIZE must be at least 1"),
        ("DATABASE_POOL_TIMEOUT", "-5", "DATABASE_POOL_TIMEOUT must be at least 1"),
        ("DEBUG", "maybe", "DEBUG must be a boolean"),
        ("DATABASE_URL", "mysql://u:p@localhost/db", "DATABASE_URL must point at PostgreSQL"),
        ("PORT", "70000", "PORT must be at most 65535"),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL must be one of"),
        ("LOG_FORMAT", "bad", "LOG_FORMAT must be one of json, text; got 'bad'"),
        ("RATE_LIMIT_PER_MINUTE", "-1", "RATE_LIMIT_PER_MINUTE must be at least 0"),
        ("RATE_LIMIT_TENANT_PER_MINUTE", "lots", "RATE_LIMIT_TENANT_PER_MINUTE must be an integer"),
        ("ADMIN_LOGIN_FAILURE_LIMIT", "0", "ADMIN_LOGIN_FAILURE_LIMIT must be at least 1"),
        ("ADMIN_LOGIN_COOLOFF_MINUTES", "soon", "ADMIN_LOGIN_COOLOFF_MINUTES must be an integer"),
        ("RUNTIME_RETENTION_DAYS", "-1", "RUNTIME_RETENTION_DAYS must be at least 0"),
        ("RUNTIME_RETENTION_DAYS", "36501", "RUNTIME_RETENTION_DAYS must be at most 36500"),
        (
            "HEALTH_QUEUE_WAIT_AMBER_SECONDS",
            "600",
            "HEALTH_QUEUE_WAIT_AMBER_SECONDS (600.0) must not exceed HEALTH_QUEUE_WAIT_RED_SECONDS",
        ),
        (
            "HEALTH_FAILED_TURNS_AMBER",
            "11",
            "HEALTH_FAILED_TURNS_AMBER (11) must not exceed HEALTH_FAILED_TURNS_RED (10)",
        ),
        (
            "TURN_WORKER_DEAD_SECONDS",
            "3",
            "TURN_WORKER_DEAD_SECONDS (3.0) must be more than twice WORKER_HEARTBEAT_SECONDS",
        ),
    ],
)
def test_bad_setting_stops_start_up_naming_the_variable(
    variable: str, value: str, message: str
) -> None:
    result = _start_up({variable: value})

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_good_settings_start_up_cleanly() -> None:
    result = _start_up({"DATABASE_POOL_SIZE": "5", "DEBUG": "no", "PORT": "8080"})

    assert result.returncode == 0, result.stderr


def test_env_int_reads_defaults_and_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOME_NUMBER", raising=False)
    assert env_int("SOME_NUMBER", 7) == 7

    monkeypatch.setenv("SOME_NUMBER", " 12 ")
    assert env_int("SOME_NUMBER", 7, minimum=1, maximum=20) == 12

    monkeypatch.setenv("SOME_NUMBER", "1.5")
    with pytest.raises(ImproperlyConfigured, match="SOME_NUMBER must be an integer"):
        env_int("SOME_NUMBER", 7)


def test_env_float_rejects_non_finite_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_RATIO", "nan")

    with pytest.raises(ImproperlyConfigured, match="SOME_RATIO must be a finite number"):
        env_float("SOME_RATIO", 0.5)


def test_env_bool_accepts_common_spellings(monkeypatch: pytest.MonkeyPatch) -> None:
    for raw, expected in [("TRUE", True), ("on", True), ("1", True), ("no", False), ("0", False)]:
        monkeypatch.setenv("SOME_FLAG", raw)
        assert env_bool("SOME_FLAG", not expected) is expected


def test_env_list_distinguishes_unset_from_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOME_LIST", raising=False)
    assert env_list("SOME_LIST", ["a"]) == ["a"]

    monkeypatch.setenv("SOME_LIST", "")
    assert env_list("SOME_LIST", ["a"]) == []

    monkeypatch.setenv("SOME_LIST", " x, ,y ")
    assert env_list("SOME_LIST", ["a"]) == ["x", "y"]


def test_env_choice_names_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_MODE", "sideways")

    with pytest.raises(ImproperlyConfigured, match="SOME_MODE must be one of up, down"):
        env_choice("SOME_MODE", "up", ["up", "down"])
