"""A guard for a run through a transaction pooler: no statement on a pooled connection may leave
state on its server session, which the pooler hands to other clients after the transaction.

Enabled by ``IRONCLAW_POOLED_SESSION_CHECK=1`` (tests/core/test_pgbouncer.py sets it for the API
suite it runs through PgBouncer). Every statement Django runs on the default connection passes
through ``session_state_refuse``, which raises on LISTEN, session-level SET or set_config,
session advisory locks, PREPARE, temporary tables and cursors held past their transaction.
Time zone and encoding are exempt: PgBouncer tracks those parameters per client itself.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.backends.signals import connection_created

ENV = "IRONCLAW_POOLED_SESSION_CHECK"
# Parameters PgBouncer itself restores for each client (its "tracked" parameters).
TRACKED = {"timezone", "client_encoding", "datestyle", "standard_conforming_strings"}

_STATEMENT = re.compile(
    r"""^\s*(?:
        (?P<listen>LISTEN|UNLISTEN|PREPARE|DEALLOCATE|DISCARD|LOAD)\b
      | SET\s+(?!LOCAL\b|TRANSACTION\b|CONSTRAINTS\b|SESSION\s+CHARACTERISTICS\b)
          (?:SESSION\s+)?(?P<set>\w+)
      | RESET\s+(?P<reset>\w+)
      | CREATE\s+(?:GLOBAL\s+|LOCAL\s+)?(?P<temp>TEMP|TEMPORARY)\b
      | DECLARE\b[^;]*?\bWITH\s+(?P<hold>HOLD)\b
    )""",
    re.IGNORECASE | re.VERBOSE,
)
_SESSION_LOCK = re.compile(r"\bpg_(?:try_)?advisory_(?:un)?lock(?:_shared)?\s*\(", re.IGNORECASE)
# set_config(name, value, false): the third argument false (or a placeholder) is session-wide.
_SET_CONFIG = re.compile(
    r"\bset_config\s*\(\s*'(?P<name>[^']+)'\s*,[^,]*,\s*(?P<local>[^)]+)\)", re.IGNORECASE
)


class SessionStateOnPooledConnection(AssertionError):
    pass


def session_state(sql: str) -> str | None:
    """What, in ``sql``, would outlive its transaction on a pooled server session, or None."""
    found = _STATEMENT.match(sql)
    if found:
        name = found.group("set") or found.group("reset")
        if name is not None:
            return None if name.lower() in TRACKED | {"time"} else f"session setting {name}"
        return "temporary table" if found.group("temp") else found.group(0).strip()
    if _SESSION_LOCK.search(sql):
        return "session-level advisory lock"
    for call in _SET_CONFIG.finditer(sql):
        name, local = call.group("name").lower(), call.group("local").strip().lower()
        if local != "true" and name not in TRACKED:
            return f"set_config({name!r}) outside its transaction"
    return None


def session_state_refuse(
    execute: Callable[..., Any], sql: str, params: Any, many: bool, context: dict[str, Any]
) -> Any:
    found = session_state(str(sql))
    if found is not None:
        raise SessionStateOnPooledConnection(f"{found} on a pooled connection: {sql}")
    return execute(sql, params, many, context)


def _guard(sender: object, connection: BaseDatabaseWrapper, **kwargs: object) -> None:
    if session_state_refuse not in connection.execute_wrappers:
        connection.execute_wrappers.append(session_state_refuse)


def install() -> None:
    """Guard every connection Django opens from now on."""
    connection_created.connect(_guard, dispatch_uid="pooled-session-guard")
