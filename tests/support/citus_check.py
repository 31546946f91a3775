"""The Citus statement check: a pytest plugin (registered by tests/conftest.py) that records every
statement the API and the engine run during the suite and, at the end, fails the run if one of
them touches a tenant table without pinning it to one tenant (``tests.support.citus_rules``).

What counts as "the API and the engine" is a scope the plugin sets per thread: a request to
``/api/`` (from ``request_started`` to ``request_finished``), an event stream's read, and a turn
(the turn worker's run of one claimed thread, a ``Turn`` and its lease heartbeat). Statements
outside a scope (fixtures, the tests' own reads, the admin, management commands, the workers'
claims and sweeps, which are cross-tenant by design) are not recorded; docs/citus.md lists
those. Servers and workers the tests start as subprocesses are not seen.

The cost stays small: outside a scope a statement costs one attribute read; inside, a dictionary
look-up by its SQL text, and a new text is normalised (IN lists and VALUES rows collapsed) and
its call site taken once. Each distinct statement is parsed once, at the end.
"""

from __future__ import annotations

import functools
import re
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from django.apps import apps
from django.core.signals import request_finished, request_started
from django.db.backends.signals import connection_created

from tests.support.citus_rules import TENANT_COLUMN, statement_problems

ROOT = Path(__file__).resolve().parents[2]
PROJECT_APPS = (
    "accounts",
    "conversations",
    "workspace",
    "webhooks",
    "routines",
    "engine",
    "operations",
)
# Tables with a user_id column that Citus would hold as reference tables, and why.
REFERENCE_TABLES = {
    # Authentication finds a key by its hash before any tenant is known, and a service key has
    # no tenant: a small table read on every request, written only by operators.
    "accounts_apikey": "looked up by key hash before the tenant is known",
}
MAX_STATEMENTS = 20_000
MAX_RAW_TEXTS = 100_000
_SITE_FRAMES = 3

_IN_LIST = re.compile(r"(?:%s|\$\d+)(?:, (?:%s|\$\d+))+")
_VALUES_ROWS = re.compile(r"(\([^()]*\))(?:, \1)+")
_SPACES = re.compile(r"\s+")


def tenant_tables() -> frozenset[str]:
    """Tables of the project's apps with a ``user_id`` column, reference tables excepted."""
    return frozenset(
        model._meta.db_table
        for model in apps.get_models()
        if model._meta.app_config.name in PROJECT_APPS
        and any(field.column == TENANT_COLUMN for field in model._meta.concrete_fields)
        and model._meta.db_table not in REFERENCE_TABLES
    )


def cross_tenant_statements() -> dict[str, str]:
    """Statements of the API that are cross-tenant on purpose, each with why and how it runs on
    Citus (docs/citus.md, "Cross-tenant by design")."""
    from conversations.services.lease import CLAIM_RUNNABLE_ANY_TENANT_SQL

    return {
        normalised(CLAIM_RUNNABLE_ANY_TENANT_SQL): (
            "POST /api/v1/threads/next by a service key without X-User-Id claims the oldest "
            "runnable thread of any tenant, as the turn workers do: a multi-shard UPDATE on Citus"
        ),
    }


def normalised(sql: str) -> str:
    # Whitespace is kept: a line break ends a -- comment.
    text = sql.strip()
    return _VALUES_ROWS.sub(r"\1", _IN_LIST.sub("%s, %s", text))


@dataclass
class Statement:
    sql: str
    scope: str
    site: tuple[str, ...]
    test: str
    count: int = 1


@dataclass(frozen=True)
class Violation:
    statement: Statement
    problems: tuple[str, ...]

    def report(self) -> str:
        lines = [_SPACES.sub(" ", self.statement.sql)[:600], f"    scope: {self.statement.scope}"]
        lines += [f"    problem: {problem}" for problem in self.problems]
        lines += [f"    at: {frame}" for frame in self.statement.site]
        lines.append(f"    first seen in: {self.statement.test}")
        return "\n".join(lines)


def _call_site() -> tuple[str, ...]:
    """The innermost frames of project code (not Django, not the tests' support) that led here."""
    frames: list[str] = []
    frame: FrameType | None = sys._getframe(2)
    while frame is not None and len(frames) < _SITE_FRAMES:
        path = frame.f_code.co_filename
        if path.startswith(str(ROOT)) and "/.venv/" not in path and "/tests/support/" not in path:
            relative = path[len(str(ROOT)) + 1 :]
            frames.append(f"{relative}:{frame.f_lineno} {frame.f_code.co_qualname}")
        frame = frame.f_back
    return tuple(frames)


class StatementRecorder:
    """The statements run inside a scope, once each, with where they first came from."""

    def __init__(self) -> None:
        self._local = threading.local()
        self._lock = threading.Lock()
        self._keys: dict[str, str] = {}
        self.statements: dict[str, Statement] = {}
        self.dropped = 0
        self.current_test = ""

    @property
    def current_scope(self) -> str | None:
        return getattr(self._local, "scope", None)

    @contextmanager
    def scope(self, label: str) -> Iterator[None]:
        previous = self.current_scope
        self._local.scope = label
        try:
            yield
        finally:
            self._local.scope = previous

    def enter(self, label: str | None) -> None:
        self._local.scope = label

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        scope = getattr(self._local, "scope", None)
        if scope is not None:
            self.record(sql, scope)
        return execute(sql, params, many, context)

    def record(self, sql: str, scope: str) -> None:
        key = self._keys.get(sql)
        if key is None:
            key = normalised(sql)
            if len(self._keys) < MAX_RAW_TEXTS:
                self._keys[sql] = key
        with self._lock:
            seen = self.statements.get(key)
            if seen is not None:
                seen.count += 1
            elif len(self.statements) >= MAX_STATEMENTS:
                self.dropped += 1
            else:
                self.statements[key] = Statement(key, scope, _call_site(), self.current_test)

    def install(self, connection: Any) -> None:
        # First in the list: Django's execute_wrapper() context manager pops the last one.
        if self not in connection.execute_wrappers:
            connection.execute_wrappers.insert(0, self)

    def violations(self, tables: frozenset[str] | None = None) -> list[Violation]:
        tables = tenant_tables() if tables is None else tables
        allowed = cross_tenant_statements()
        found = []
        for statement in list(self.statements.values()):
            if statement.sql in allowed:
                continue
            try:
                problems = statement_problems(statement.sql, tables)
            except Exception as error:  # pglast.parser.ParseError, and anything unexpected
                problems = [f"could not be parsed: {error}"]
            if problems:
                found.append(Violation(statement, tuple(problems)))
        return found


RECORDER = StatementRecorder()


def _api_request_started(sender: Any, environ: dict[str, Any] | None = None, **kwargs: Any) -> None:
    path = str((environ or {}).get("PATH_INFO", ""))
    if path.startswith("/api/"):
        RECORDER.enter(f"API {environ.get('REQUEST_METHOD', '') if environ else ''} {path}")


def _api_request_finished(sender: Any, **kwargs: Any) -> None:
    RECORDER.enter(None)


def _connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    RECORDER.install(connection)


def _scoped(function: Callable[..., Any], label: str) -> Callable[..., Any]:
    @functools.wraps(function)
    def run(*args: Any, **kwargs: Any) -> Any:
        with RECORDER.scope(label):
            return function(*args, **kwargs)

    run.__citus_scoped__ = True  # type: ignore[attr-defined]
    return run


def _scope_engine() -> None:
    from core import streams
    from engine.runner import Turn
    from operations.turn_worker import TurnWorker

    targets: list[tuple[Any, str, str]] = [
        (TurnWorker, "_run_turn", "engine: turn worker's turn"),
        (Turn, "run", "engine: turn"),
        (Turn, "_heartbeat", "engine: turn's lease heartbeat"),
        (streams, "_read_run", "API: event stream read"),
    ]
    for owner, name, label in targets:
        function = getattr(owner, name)
        if not getattr(function, "__citus_scoped__", False):
            setattr(owner, name, _scoped(function, label))


def pytest_sessionstart(session: pytest.Session) -> None:
    from django.db import connections

    connection_created.connect(_connection_created, dispatch_uid="citus_check")
    request_started.connect(_api_request_started, dispatch_uid="citus_check_started")
    request_finished.connect(_api_request_finished, dispatch_uid="citus_check_finished")
    for connection in connections.all(initialized_only=True):
        RECORDER.install(connection)
    _scope_engine()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # A stream a test left unread never sent request_finished: its scope ends with the test.
    RECORDER.enter(None)
    RECORDER.current_test = item.nodeid


def pytest_runtest_teardown(item: pytest.Item) -> None:
    RECORDER.enter(None)


_found: list[Violation] = []


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not RECORDER.statements:
        return
    _found[:] = RECORDER.violations()
    if _found and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not RECORDER.statements:
        return
    statements = len(RECORDER.statements)
    if not _found:
        terminalreporter.write_line(
            f"Citus statement check: {statements} distinct statements of the API and the "
            "engine, each pinned to one tenant."
        )
        return
    terminalreporter.section("Citus statement check failed", sep="=", red=True)
    terminalreporter.write_line(
        f"{len(_found)} of {statements} distinct statements of the API and the engine touch a "
        f"tenant table without {TENANT_COLUMN} = <value> (docs/citus.md):\n"
    )
    for violation in _found:
        terminalreporter.write_line(violation.report() + "\n")
    if RECORDER.dropped:
        terminalreporter.write_line(f"({RECORDER.dropped} statements past the cap not checked)")
