"""Production mode: the documented environment passes `check --deploy`, a shared database needs a
shared SECRET_KEY, proxy settings are validated, probes skip the HTTPS redirect, and importing the
settings writes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.test import Client
from pytest_django.fixtures import Settings as SettingsWrapper

BASE_DIR = Path(settings.BASE_DIR)


def _production_env() -> dict[str, str]:
    """The ```dotenv block of the Production section of docs/deployment.md, as documented."""
    page = (BASE_DIR / "docs" / "deployment.md").read_text()
    section = page.split("\n## Production\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```dotenv\n(.*?)```", section, re.DOTALL)
    assert block is not None, "docs/deployment.md's Production section lost its ```dotenv block"
    pairs = [line.split("=", 1) for line in block.group(1).splitlines() if line.strip()]
    return {name: value for name, value in pairs}


def _manage(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    inherited = {
        name: value
        for name, value in os.environ.items()
        # Only what the test names: the suite's own SECRET_KEY and friends must not leak in.
        if name not in {"SECRET_KEY", "DATABASE_URL", "DEBUG", "IRONCLAW_VAR_DIR", "STATIC_ROOT"}
    }
    return subprocess.run(
        [sys.executable, "manage.py", *arguments],
        cwd=BASE_DIR,
        env={**inherited, "PYTHONDONTWRITEBYTECODE": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_check_deploy_reports_no_issue_with_the_documented_production_environment(
    tmp_path: Path,
) -> None:
    env = {**_production_env(), "IRONCLAW_VAR_DIR": str(tmp_path / "var")}

    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=env)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues (0 silenced)." in result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


def test_check_deploy_still_warns_about_the_local_defaults(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": _production_env()["DATABASE_URL"],
        "SECRET_KEY": _production_env()["SECRET_KEY"],
        "IRONCLAW_VAR_DIR": str(tmp_path / "var"),
    }

    result = _manage("check", "--deploy", env=env)

    for issue in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert issue in result.stderr + result.stdout


def test_a_shared_database_without_secret_key_stops_start_up_naming_it(tmp_path: Path) -> None:
    env = {"DATABASE_URL": _production_env()["DATABASE_URL"], "SECRET_KEY": ""}

    result = _manage("check", env={**env, "IRONCLAW_VAR_DIR": str(tmp_path / "var")})
    with_debug = _manage(
        "check", env={**env, "DEBUG": "true", "IRONCLAW_VAR_DIR": str(tmp_path / "debug")}
    )

    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY must be set when DATABASE_URL is set" in result.stderr
    assert not (tmp_path / "var").exists()
    assert with_debug.returncode == 0, with_debug.stderr


def test_settings_write_nothing_when_a_key_is_configured(tmp_path: Path) -> None:
    before = sorted(path.name for path in BASE_DIR.iterdir())
    env = {
        "SECRET_KEY": "k" * 60,
        "IRONCLAW_VAR_DIR": str(tmp_path / "var"),
        "STATIC_ROOT": str(tmp_path / "static"),
    }

    result = _manage("check", env=env)

    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []
    assert sorted(path.name for path in BASE_DIR.iterdir()) == before


def test_the_embedded_run_keeps_its_generated_key_under_the_var_dir(tmp_path: Path) -> None:
    env = {
        "SECRET_KEY": "",
        "IRONCLAW_VAR_DIR": str(tmp_path / "var"),
        "STATIC_ROOT": str(tmp_path / "static"),
    }

    first = _manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings; print(settings.SECRET_KEY)",
        env=env,
    )
    second = _manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings; print(settings.SECRET_KEY)",
        env=env,
    )

    assert first.returncode == 0, first.stderr
    assert [path.name for path in (tmp_path / "var").iterdir()] == ["secret_key"]
    assert first.stdout == second.stdout
    assert len(first.stdout.strip()) >= 50
    assert not (tmp_path / "static").exists()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SECURE_PROXY_SSL_HEADER", "X-Forwarded-Proto,https", "SECURE_PROXY_SSL_HEADER must be"),
        ("SECURE_PROXY_SSL_HEADER", "HTTP_X_FORWARDED_PROTO", "SECURE_PROXY_SSL_HEADER must be"),
        ("SECURE_PROXY_SSL_HEADER", "HTTP_X_FORWARDED_PROTO,https,x", "SECURE_PROXY_SSL_HEADER"),
        ("CSRF_TRUSTED_ORIGINS", "admin.example.com", "CSRF_TRUSTED_ORIGINS entries must be"),
        ("CSRF_TRUSTED_ORIGINS", "ftp://admin.example.com", "CSRF_TRUSTED_ORIGINS entries must"),
        ("CSRF_TRUSTED_ORIGINS", "https://a.example.com/admin", "CSRF_TRUSTED_ORIGINS entries"),
        ("SECURE_SSL_REDIRECT", "sometimes", "SECURE_SSL_REDIRECT must be a boolean"),
        ("SECURE_HSTS_SECONDS", "-1", "SECURE_HSTS_SECONDS must be at least 0"),
        ("SECURE_HSTS_PRELOAD", "maybe", "SECURE_HSTS_PRELOAD must be a boolean"),
        ("USE_X_FORWARDED_HOST", "2", "USE_X_FORWARDED_HOST must be a boolean"),
        ("JOBS_RETENTION_DAYS", "-1", "JOBS_RETENTION_DAYS must be at least 0"),
        ("READYZ_REQUIRE_WORKER", "always", "READYZ_REQUIRE_WORKER must be a boolean"),
        ("WEB_TRUSTED_PROXY", "proxy.internal", "WEB_TRUSTED_PROXY must be the IP address"),
        ("WEB_TRUSTED_PROXY_HEADERS", "x-real-ip", "WEB_TRUSTED_PROXY_HEADERS must be"),
        ("WEB_TRUSTED_PROXY_HEADERS", "forwarded,x-forwarded-for", "WEB_TRUSTED_PROXY_HEADERS"),
        ("WEB_TRUSTED_PROXY_COUNT", "0", "WEB_TRUSTED_PROXY_COUNT must be at least 1"),
    ],
)
def test_a_bad_production_setting_stops_start_up_naming_it(
    variable: str, value: str, message: str
) -> None:
    result = _manage("check", env={"SECRET_KEY": "k" * 60, variable: value})

    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert message in result.stderr


def test_the_proxy_ssl_header_is_read_as_header_and_value() -> None:
    result = _manage(
        "shell",
        "--no-imports",
        "-c",
        "from django.conf import settings; print(settings.SECURE_PROXY_SSL_HEADER)",
        env={"SECRET_KEY": "k" * 60, "SECURE_PROXY_SSL_HEADER": "http_x_forwarded_proto, https"},
    )

    assert result.stdout.strip() == "('HTTP_X_FORWARDED_PROTO', 'https')", result.stderr


@pytest.mark.django_db
def test_probes_answer_plain_http_while_everything_else_redirects_to_https(
    settings: SettingsWrapper,
) -> None:
    settings.SECURE_SSL_REDIRECT = True
    client = Client()

    health = client.get("/healthz")
    ready = client.get("/readyz")
    api = client.get("/api/v1/conversations")
    behind_tls = client.get("/healthz", secure=True)

    assert health.status_code == 200
    assert ready.status_code == 200
    assert api.status_code == 301
    assert api["Location"] == "https://testserver/api/v1/conversations"
    assert behind_tls.status_code == 200


def test_a_proxy_ssl_header_without_a_trusted_proxy_is_a_warning_naming_both() -> None:
    result = _manage(
        "check",
        env={"SECRET_KEY": "k" * 60, "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https"},
    )

    assert "ironclaw_site.W001" in result.stderr
    assert "WEB_TRUSTED_PROXY" in result.stderr
