"""The Citus readiness check (docs/citus.md): its rules catch what Citus could not run on one
shard, the suite's recorder sees what the API runs and reports a statement that breaks them, and
the schema's unique indexes and foreign keys on tenant tables are known."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connection
from rest_framework.test import APIClient

from conversations.models import Thread
from tests.support.citus_check import (
    RECORDER,
    REFERENCE_TABLES,
    StatementRecorder,
    tenant_tables,
)
from tests.support.citus_rules import schema_problems, statement_problems

TABLES = frozenset({"conversations_thread", "conversations_conversationentry"})


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM conversations_thread WHERE user_id = %s AND id = %s",
        'SELECT * FROM "conversations_thread" WHERE "conversations_thread"."user_id" IN (%s)',
        "SELECT 1 FROM conversations_thread t JOIN conversations_conversationentry e"
        " ON e.thread_id = t.id AND e.user_id = t.user_id WHERE t.user_id = %(tenant)s",
        "SELECT 1 FROM conversations_thread t WHERE t.user_id = $1 AND EXISTS ("
        "SELECT 1 FROM conversations_conversationentry e WHERE e.user_id = t.user_id)",
        "WITH mine AS (SELECT id FROM conversations_thread WHERE user_id = %s) SELECT * FROM mine",
        "INSERT INTO conversations_thread (id, user_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        "UPDATE conversations_thread SET goal = %s WHERE id = %s AND user_id = %s::text",
        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'",
        "SELECT set_config('lock_timeout', %s, true)",
    ],
)
def test_statements_pinned_to_one_tenant_pass(sql: str) -> None:
    assert statement_problems(sql, TABLES) == []


@pytest.mark.parametrize(
    ("sql", "problem"),
    [
        ("SELECT * FROM conversations_thread WHERE id = %s", "conversations_thread (as"),
        (
            "SELECT * FROM conversations_thread WHERE user_id = %s OR id = %s",
            "conversations_thread (as",
        ),
        (
            "SELECT * FROM conversations_thread WHERE user_id IN (%s, %s)",
            "conversations_thread (as",
        ),
        (
            "SELECT 1 FROM conversations_thread t JOIN conversations_conversationentry e"
            " ON e.thread_id = t.id WHERE t.user_id = %s",
            "conversations_conversationentry (as e)",
        ),
        (
            "SELECT 1 FROM conversations_thread t WHERE t.user_id = %s AND EXISTS ("
            "SELECT 1 FROM conversations_conversationentry e WHERE e.thread_id = t.id)",
            "conversations_conversationentry (as e)",
        ),
        (
            "WITH all_threads AS (SELECT id FROM conversations_thread) SELECT * FROM all_threads",
            "conversations_thread (as",
        ),
        (
            "SELECT * FROM conversations_thread WHERE user_id = %s"
            " UNION ALL SELECT * FROM conversations_thread WHERE id = %s",
            "conversations_thread (as",
        ),
        ("INSERT INTO conversations_thread (id, goal) VALUES (%s, %s)", "does not name user_id"),
        ("UPDATE conversations_thread SET goal = %s WHERE id = %s", "conversations_thread (as"),
        (
            "DELETE FROM conversations_conversationentry"
            " WHERE thread_id IN (SELECT id FROM conversations_thread WHERE user_id = %s)",
            "conversations_conversationentry (as",
        ),
        ("TRUNCATE conversations_thread", "TruncateStmt on tenant table"),
    ],
)
def test_statements_not_pinned_to_one_tenant_are_reported(sql: str, problem: str) -> None:
    problems = statement_problems(sql, TABLES)

    assert any(problem in line for line in problems), problems


@pytest.mark.django_db
def test_the_tenant_tables_are_every_table_with_a_user_id_but_the_reference_ones() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT table_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND column_name = 'user_id'"
            " AND table_name NOT LIKE 'auth\\_%%' AND table_name NOT LIKE 'django\\_%%'"
        )
        with_user_id = {name for (name,) in cursor.fetchall()}

    assert tenant_tables() == with_user_id - set(REFERENCE_TABLES)
    assert len(tenant_tables()) == 15


@pytest.mark.django_db
def test_the_suite_records_what_an_api_request_runs(
    tenant_client: Callable[[str], APIClient],
) -> None:
    response = tenant_client("citus-probe").post(
        "/api/v1/messages", {"channel": "web", "content": "hi"}, format="json"
    )

    assert response.status_code == 202
    recorded = [s for s in RECORDER.statements.values() if s.scope == "API POST /api/v1/messages"]
    assert any("INSERT INTO conversations_conversationentry" in s.sql for s in recorded)


@pytest.mark.django_db
def test_a_statement_run_in_scope_without_the_tenant_is_reported_with_its_call_site() -> None:
    recorder = StatementRecorder()
    connection.ensure_connection()
    recorder.install(connection)
    try:
        with recorder.scope("API test"):
            Thread.objects.filter(user_id="alice", goal="pinned").exists()
            Thread.objects.filter(goal="anyone's").exists()
        Thread.objects.filter(goal="out of scope").exists()
    finally:
        connection.execute_wrappers.remove(recorder)

    violations = recorder.violations()

    assert len(recorder.statements) == 2
    assert len(violations) == 1
    report = violations[0].report()
    assert "conversations_thread (as conversations_thread) is not pinned by user_id" in report
    assert "scope: API test" in report
    assert "tests/test_citus.py" in report
    assert "test_a_statement_run_in_scope_without_the_tenant_is_reported" in report


# What the schema still has that Citus would refuse: the tables are keyed by id alone, and their
# foreign keys and per-parent unique indexes do not name user_id. docs/citus.md ("The schema")
# says what the migration to (user_id, id) keys involves. A new index or foreign key that
# repeats the mistake fails here; one that is fixed must leave this list.
KNOWN_SCHEMA_PROBLEMS = {
    ("accounts_idempotencykey", "accounts_idempotencykey_pkey"),
    (
        "conversations_channeluserindex",
        "conversations_channe_conversation_id_6227e207_fk_conversat",
    ),
    ("conversations_channeluserindex", "conversations_channeluserindex_pkey"),
    ("conversations_conversation", "conversations_conversation_pkey"),
    (
        "conversations_conversationentry",
        "conversations_conver_conversation_id_21047d2b_fk_conversat",
    ),
    ("conversations_conversationentry", "conversations_conver_thread_id_13f11f18_fk_conversat"),
    ("conversations_conversationentry", "conversations_conversationentry_pkey"),
    ("conversations_conversationentry", "entry_unique_seq_per_conversation"),
    ("conversations_thread", "conversations_thread_conversation_id_05253b36_fk_conversat"),
    ("conversations_thread", "conversations_thread_pkey"),
    ("conversations_thread", "thread_one_tracked_foreground_per_conversation"),
    ("conversations_threadevent", "conversations_thread_thread_id_e1781c08_fk_conversat"),
    ("conversations_threadevent", "conversations_threadevent_pkey"),
    ("conversations_threadevent", "thread_event_unique_seq"),
    ("workspace_chunk", "workspace_chunk_document_fk"),
    ("workspace_chunk", "workspace_chunk_document_index"),
    ("workspace_chunk", "workspace_chunk_pkey"),
    ("workspace_document", "workspace_document_pkey"),
    ("workspace_documentversion", "workspace_documentversion_pkey"),
    ("workspace_documentversion", "workspace_version_document_fk"),
    ("workspace_documentversion", "workspace_version_document_version"),
}


@pytest.mark.django_db
def test_the_schema_problems_citus_would_refuse_are_the_known_ones() -> None:
    with connection.cursor() as cursor:
        problems = schema_problems(cursor, tenant_tables())

    new = [
        str(problem)
        for problem in problems
        if (problem.table, problem.name) not in KNOWN_SCHEMA_PROBLEMS
    ]
    fixed = KNOWN_SCHEMA_PROBLEMS - {(problem.table, problem.name) for problem in problems}
    assert new == [], "unique indexes or foreign keys Citus would refuse"
    assert fixed == set(), "fixed: take them out of KNOWN_SCHEMA_PROBLEMS"


@pytest.mark.django_db
def test_a_unique_index_or_foreign_key_without_user_id_on_a_tenant_table_is_reported() -> None:
    with connection.cursor() as cursor:
        # Rolled back with the test's transaction.
        cursor.execute(
            "CREATE TABLE citus_probe_parent (user_id text, id int, PRIMARY KEY (user_id, id));"
            "CREATE TABLE citus_probe_child (user_id text, id int UNIQUE, parent_id int,"
            " path text, UNIQUE (user_id, path));"
            "ALTER TABLE citus_probe_child ADD CONSTRAINT child_parent_fk"
            " FOREIGN KEY (user_id, parent_id) REFERENCES citus_probe_parent (user_id, id);"
            "CREATE TABLE citus_probe_other (id int PRIMARY KEY, parent_id int, parent_user text,"
            " FOREIGN KEY (parent_user, parent_id) REFERENCES citus_probe_parent (user_id, id))"
        )
        problems = schema_problems(cursor, frozenset({"citus_probe_parent", "citus_probe_child"}))

    assert sorted(str(problem) for problem in problems) == [
        "citus_probe_child: citus_probe_child_id_key (unique on id)",
        "citus_probe_other: citus_probe_other_parent_user_parent_id_fkey"
        " (references tenant table citus_probe_parent)",
    ]
