"""The dashboard benchmark's databases: seeded in SQL once, kept between runs.

A database per size (``ironclaw_bench_dashboard_<threads>``) on the same server as the dev one,
never the dev database itself. Its comment records the seed's size and the moment the data is
"as of"; a later run finds it, shifts every timestamp the admin reads by the time since, so the
last hour and day hold what they held when it was seeded, and measures without seeding again.

The seed runs with ``session_replication_role = replica``: no trigger fires, so the thread rows'
state machine and event triggers, the entries' read-only and NOTIFY triggers and Procrastinate's
event triggers are skipped (as are foreign key checks). The rows they would have written (thread
events, job events) are seeded as the triggers would have written them.
"""

from __future__ import annotations

import datetime
import json
import time
from dataclasses import asdict, dataclass
from typing import Any

import django
from django.conf import settings
from psycopg import sql
from scratch_database import admin_connection

SEED_VERSION = 1
ENTRY_BATCH = 250_000
# A reused seed younger than this is measured as it is: its last hour is off by at most that much.
SHIFT_AFTER = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class Size:
    tenants: int
    conversations: int
    threads: int
    entries: int
    # Live threads (created, running, waiting, suspended): the last thread of some conversations.
    live: int
    # Per tenant: two runtime documents (engine state), the rest semantic notes.
    documents_per_tenant: int
    jobs: int

    def describe(self) -> str:
        return (
            f"{self.threads:,} threads ({self.live} live), {self.entries:,} entries in "
            f"{self.conversations:,} conversations, {self.tenants:,} tenants, "
            f"{self.tenants * self.documents_per_tenant:,} documents, {self.jobs:,} jobs"
        )


FULL = Size(1_000, 20_000, 100_000, 1_000_000, 300, 5, 50_000)
QUICK = Size(100, 2_000, 10_000, 100_000, 100, 5, 5_000)
SMALL = Size(10, 20, 100, 1_000, 5, 5, 100)


def database_name(size: Size) -> str:
    return f"ironclaw_bench_dashboard_{size.threads}"


def use(name: str) -> None:
    """Point Django at ``name``, closing the connections (and pools) to the one before."""
    from django.db import connections

    for alias in connections:
        connections[alias].close()
        close_pool = getattr(connections[alias], "close_pool", None)
        if close_pool is not None:
            close_pool()
    settings.DATABASES["default"]["NAME"] = name


def _execute(statement: str, params: dict[str, Any] | None = None) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(statement, params)
        return int(cursor.rowcount)


# Temporary tables: which conversation and thread each number is, and the thread's times, so
# entries and events agree with their thread.
_CONVERSATIONS = """
CREATE TEMPORARY TABLE bench_conversation AS
SELECT c, gen_random_uuid() AS id, 'tenant-' || lpad((c %% %(tenants)s)::text, 5, '0') AS user_id,
  %(as_of)s - interval '8 days' - random() * interval '22 days' AS created_at
FROM generate_series(0, %(conversations)s - 1) AS c
"""

_THREADS = """
CREATE TEMPORARY TABLE bench_thread AS
WITH base AS (
  SELECT i, gen_random_uuid() AS id, least(i / %(per)s, %(conversations)s - 1) AS c,
    i %% %(per)s AS k, random() AS r_state, random() AS r_time, random() AS r_len
  FROM generate_series(0, %(threads)s - 1) AS i
), numbered AS (
  SELECT base.*, CASE WHEN k = %(per)s - 1 AND c %% %(live_every)s = 0
    AND c / %(live_every)s < %(live)s THEN c / %(live_every)s END AS live_n
  FROM base
), stated AS (
  SELECT numbered.*, CASE
      WHEN live_n IS NULL THEN CASE WHEN r_state < 0.035 THEN 'failed'
        WHEN r_state < 0.05 THEN 'stopped' ELSE 'completed' END
      WHEN live_n %% 10 < 4 THEN 'created' WHEN live_n %% 10 < 7 THEN 'running'
      WHEN live_n %% 10 < 9 THEN 'waiting' ELSE 'suspended' END AS state,
    CASE WHEN live_n IS NULL THEN %(as_of)s - r_time * interval '7 days' END AS finished_at,
    make_interval(secs => 2 + r_len * 58) AS duration
  FROM numbered
)
SELECT stated.*, conversation.id AS conversation_id, conversation.user_id,
  CASE WHEN finished_at IS NOT NULL THEN finished_at - duration
    WHEN state = 'created' THEN %(as_of)s - r_time * interval '10 minutes'
    WHEN state = 'running' THEN %(as_of)s - r_time * interval '2 minutes'
    ELSE %(as_of)s - r_time * interval '1 hour' END AS created_at
FROM stated JOIN bench_conversation conversation USING (c)
"""

_FAILURES = [
    "model call failed: upstream returned 502 Bad Gateway (attempt 3 of 3)",
    "model call timed out after 120 s",
    "tool 'shell' exited with status 137",
    "context window exceeded: 212,431 tokens for a 200,000-token model",
    "engine error: KeyError: 'messages'",
]

_INSERT_THREADS = """
INSERT INTO conversations_thread (id, user_id, conversation_id, kind, state, goal, tracked,
  lease_owner, lease_expires_at, cancel_requested, claim_count, step_count, tokens_used,
  input_tokens, output_tokens, cost_usd, model_time_ms, enqueued_at, claimed_at, model_calls,
  outcome, start_seq, event_seq, metadata, created_at, updated_at, started_at, finished_at)
SELECT id, user_id, conversation_id,
  CASE WHEN live_n IS NOT NULL OR i %% 20 > 1 THEN 'foreground' WHEN i %% 20 = 0 THEN 'research'
    ELSE 'mission' END,
  state, 'goal ' || i || ': ' || repeat('summarise the report ', 1 + i %% 5),
  live_n IS NOT NULL,
  CASE WHEN state = 'running' THEN 'turn-worker:bench-host:' || (i %% 4) ELSE '' END,
  CASE WHEN state <> 'running' THEN NULL
    WHEN live_n %% 50 = 4 THEN %(as_of)s - interval '3 minutes'
    ELSE %(as_of)s + interval '1 minute' END,
  false, CASE WHEN state = 'created' THEN 0 WHEN state = 'failed' THEN 1 + i %% 3 ELSE 1 END,
  1 + floor(r_len * 8)::int, 800 + floor(r_len * 20000)::bigint, 600 + floor(r_len * 16000)::bigint,
  200 + floor(r_len * 4000)::bigint, round((r_len * 0.05)::numeric, 6),
  CASE WHEN state = 'created' THEN 0 ELSE floor(extract(epoch FROM duration) * 700)::bigint END,
  created_at,
  CASE WHEN state <> 'created' THEN created_at + make_interval(secs => 0.02 + r_len * 0.2) END,
  '[]'::jsonb,
  CASE state
    WHEN 'completed' THEN jsonb_build_object('kind', 'completed', 'response', 'Done: ' || i)
    WHEN 'failed' THEN jsonb_build_object('kind', 'failed',
      'error', (%(failures)s::text[])[1 + i %% %(failure_count)s])
    WHEN 'stopped' THEN jsonb_build_object('kind', 'stopped', 'reason', 'operator')
  END,
  k * %(per_thread)s + 2,
  CASE state WHEN 'created' THEN 1 WHEN 'running' THEN 2 ELSE 3 END,
  jsonb_build_object('goal_entry_seqs', jsonb_build_array(k * %(per_thread)s + 1)),
  created_at, coalesce(finished_at, created_at + interval '1 second'),
  CASE WHEN state <> 'created' THEN created_at + make_interval(secs => 0.02 + r_len * 0.2) END,
  finished_at
FROM bench_thread
"""

# One batch of entries: a conversation's entries belong to its threads in turn (each thread's
# first is the user's goal, its second "Thread started", then replies and injected messages).
_INSERT_ENTRIES = """
INSERT INTO conversations_conversationentry (id, conversation_id, user_id, seq, sender, content,
  thread_id, delivered_at, created_at, metadata)
SELECT gen_random_uuid(), conversation.id, conversation.user_id, e.seq,
  CASE WHEN e.j = 0 THEN 'user' WHEN e.j = 1 THEN 'system' WHEN e.j %% 2 = 0 THEN 'agent'
    ELSE 'user' END,
  CASE WHEN e.j = 1 THEN 'Thread started'
    ELSE 'message ' || e.n || ' ' || repeat('lorem ipsum dolor ', 3 + e.n %% 12) END,
  thread.id,
  CASE WHEN e.j = 0 OR (e.j > 1 AND e.j %% 2 = 1) THEN thread.created_at + e.j * interval '1 s' END,
  thread.created_at + e.j * interval '1 second', '{}'::jsonb
FROM (
  SELECT n, n / %(per_conversation)s AS c, n %% %(per_conversation)s + 1 AS seq,
    least((n %% %(per_conversation)s) / %(per_thread)s, %(per)s - 1) AS k,
    n %% %(per_conversation)s - least((n %% %(per_conversation)s) / %(per_thread)s, %(per)s - 1)
      * %(per_thread)s AS j
  FROM generate_series(%(start)s, %(stop)s - 1) AS n
) AS e
JOIN bench_conversation conversation ON conversation.c = e.c
JOIN bench_thread thread ON thread.i = e.c * %(per)s + e.k
"""

# What the thread triggers write: spawned, claimed, then the outcome (or waiting, suspended).
_INSERT_EVENTS = """
INSERT INTO conversations_threadevent (user_id, thread_id, conversation_id, seq, kind, data,
  created_at)
SELECT thread.user_id, thread.id, thread.conversation_id, seq,
  CASE seq WHEN 1 THEN 'spawned' WHEN 2 THEN 'claimed' ELSE thread.state END,
  jsonb_build_object('state', CASE seq WHEN 1 THEN 'created' WHEN 2 THEN 'running'
    ELSE thread.state END, 'claim_count', least(seq - 1, 1)),
  CASE seq WHEN 1 THEN thread.created_at WHEN 2 THEN thread.created_at + interval '50 ms'
    ELSE coalesce(thread.finished_at, thread.created_at + interval '10 seconds') END
FROM bench_thread thread
CROSS JOIN LATERAL generate_series(1, CASE thread.state WHEN 'created' THEN 1
  WHEN 'running' THEN 2 ELSE 3 END) AS seq
"""

_INSERT_DOCUMENTS = """
INSERT INTO workspace_document (id, user_id, path, content, content_hash, metadata, is_runtime,
  index_state, indexed_hash, created_at, updated_at)
SELECT gen_random_uuid(), 'tenant-' || lpad(t::text, 5, '0'), path, content,
  'sha256:' || md5(content || n) || md5(n::text), '{}'::jsonb, j < 2,
  CASE WHEN j < 2 THEN 'skipped' WHEN n %% 250 = 2 THEN 'pending' WHEN n %% 400 = 3 THEN 'failed'
    ELSE 'indexed' END,
  CASE WHEN j >= 2 AND n %% 250 <> 2 AND n %% 400 <> 3
    THEN 'sha256:' || md5(content || n) || md5(n::text) ELSE '' END,
  %(as_of)s - interval '30 days',
  CASE WHEN n %% 800 = 3 THEN %(as_of)s - interval '20 minutes'
    ELSE %(as_of)s - random() * interval '7 days' END
FROM generate_series(0, %(tenants)s - 1) AS t
CROSS JOIN generate_series(0, %(per_tenant)s - 1) AS j
CROSS JOIN LATERAL (SELECT t * %(per_tenant)s + j AS n,
  CASE j WHEN 0 THEN 'engine/.runtime/state.json'
    WHEN 1 THEN 'engine/.runtime/threads/' || t || '.json' ELSE 'notes/' || j || '.md' END AS path,
  CASE WHEN j < 2 THEN repeat('{"step": 12, "messages": ["lorem ipsum"]} ', 500)
    ELSE repeat('words of a note ', 80) END AS content) AS doc
"""

_INSERT_VERSIONS_AND_CHUNKS = [
    """
    INSERT INTO workspace_documentversion (document_id, user_id, version, content, content_hash,
      changed_by, created_at)
    SELECT id, user_id, 1, content, content_hash, 'bench', created_at
    FROM workspace_document WHERE NOT is_runtime
    """,
    """
    INSERT INTO workspace_chunk (document_id, user_id, chunk_index, content, source_hash,
      embedding, embedding_model, created_at)
    SELECT id, user_id, chunk, 'words of a note', content_hash, NULL, 'hashing-64', updated_at
    FROM workspace_document CROSS JOIN generate_series(0, 1) AS chunk
    WHERE index_state = 'indexed'
    """,
]

# Jobs: ids grow with time over the last 7 days; the newest are waiting or running, a few failed.
_INSERT_JOBS = """
INSERT INTO procrastinate_jobs (queue_name, task_name, lock, args, status, scheduled_at,
  attempts, queueing_lock, priority, abort_requested, worker_id)
SELECT CASE WHEN n %% 10 = 0 THEN 'default' ELSE 'indexing' END,
  CASE WHEN n %% 10 = 0 THEN 'conversations.tasks.sweep_expired_leases'
    ELSE 'workspace.index_document' END,
  NULL, jsonb_build_object('document_id', gen_random_uuid()),
  (CASE WHEN n >= %(jobs)s - 40 THEN 'todo' WHEN n >= %(jobs)s - 44 THEN 'doing'
    WHEN n %% 997 = 5 THEN 'failed' WHEN n %% 1999 = 7 THEN 'cancelled'
    ELSE 'succeeded' END)::procrastinate_job_status,
  CASE WHEN n >= %(jobs)s - 5 THEN %(as_of)s + interval '5 minutes' END,
  CASE WHEN n %% 997 = 5 THEN 3 ELSE 1 END, NULL, 0, false,
  CASE WHEN n >= %(jobs)s - 44 AND n < %(jobs)s - 40 THEN %(worker)s END
FROM generate_series(0, %(jobs)s - 1) AS n
ORDER BY n
"""

_INSERT_JOB_EVENTS = """
INSERT INTO procrastinate_events (job_id, type, at)
SELECT job.id, step.type::procrastinate_job_event_type,
  %(as_of)s - (1 - (job.id - bounds.low)::float / greatest(1, bounds.high - bounds.low))
    * interval '7 days' + step.delay
FROM procrastinate_jobs job
CROSS JOIN (SELECT min(id) AS low, max(id) AS high FROM procrastinate_jobs) AS bounds
CROSS JOIN LATERAL (VALUES ('deferred', interval '0'), ('started', interval '200 ms'),
  (CASE job.status WHEN 'succeeded' THEN 'succeeded' WHEN 'failed' THEN 'failed'
    ELSE 'cancelled' END, interval '2 s')) AS step (type, delay)
WHERE step.type = 'deferred' OR (step.type = 'started' AND job.status <> 'todo')
  OR (step.delay = interval '2 s' AND job.status IN ('succeeded', 'failed', 'cancelled'))
"""


def _seed(size: Size, as_of: datetime.datetime) -> None:
    started = time.perf_counter()

    def step(label: str, statement: str, params: dict[str, Any] | None = None) -> None:
        rows = _execute(statement, params)
        print(f"    {label}: {rows:,} rows ({time.perf_counter() - started:.0f} s)", flush=True)

    per = max(1, size.threads // size.conversations)
    per_conversation = size.entries // size.conversations
    per_thread = max(2, per_conversation // per)
    shape: dict[str, Any] = {
        **asdict(size),
        "as_of": as_of,
        "per": per,
        "per_conversation": per_conversation,
        "per_thread": per_thread,
        "live_every": max(1, size.conversations // max(1, size.live)),
        "failures": _FAILURES,
        "failure_count": len(_FAILURES),
        "per_tenant": size.documents_per_tenant,
    }
    _execute("SET session_replication_role = replica")
    _execute("SELECT setseed(0.42)")
    _execute(_CONVERSATIONS, shape)
    _execute(_THREADS, shape)
    _execute("CREATE UNIQUE INDEX ON bench_thread (i)")
    _execute("CREATE UNIQUE INDEX ON bench_conversation (c)")
    _execute("ANALYZE bench_thread")
    _execute("ANALYZE bench_conversation")
    step(
        "conversations",
        "INSERT INTO conversations_conversation (id, user_id, channel, metadata, busy_policy,"
        " last_seq, created_at, updated_at) SELECT id, user_id, CASE WHEN c < %(tenants)s THEN"
        " 'web' ELSE 'web:' || c END, '{}', NULL, %(per_conversation)s, created_at,"
        " %(as_of)s - random() * interval '7 days' FROM bench_conversation",
        shape,
    )
    step(
        "channel index",
        "INSERT INTO conversations_channeluserindex (id, user_id, channel, conversation_id,"
        " updated_at) SELECT gen_random_uuid(), user_id, channel, id, updated_at"
        " FROM conversations_conversation",
    )
    step("threads", _INSERT_THREADS, shape)
    total = per_conversation * size.conversations
    for start in range(0, total, ENTRY_BATCH):
        stop = min(total, start + ENTRY_BATCH)
        step(
            f"entries {start:,}-{stop:,}", _INSERT_ENTRIES, {**shape, "start": start, "stop": stop}
        )
    step("thread events", _INSERT_EVENTS)
    step("documents", _INSERT_DOCUMENTS, shape)
    for label, statement in zip(("versions", "chunks"), _INSERT_VERSIONS_AND_CHUNKS, strict=True):
        step(label, statement)
    worker_ids = _workers(as_of)
    step("jobs", _INSERT_JOBS, {**shape, "worker": worker_ids[1]})
    step("job events", _INSERT_JOB_EVENTS, shape)
    _execute("SET session_replication_role = DEFAULT")
    _execute("DROP TABLE bench_thread, bench_conversation")


def _workers(as_of: datetime.datetime) -> list[int]:
    """A turns worker, a background worker (both alive) and a stalled one Procrastinate has not
    pruned yet; their ids."""
    from django.db import connection

    ids = []
    with connection.cursor() as cursor:
        for name, age in (("turns", 5), ("background", 8), ("background", 3600)):
            cursor.execute(
                "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (%s) RETURNING id",
                [as_of - datetime.timedelta(seconds=age)],
            )
            (worker_id,) = cursor.fetchone()
            cursor.execute(
                "INSERT INTO ironclaw_site_workername (worker_id, name, registered_at)"
                " VALUES (%s, %s, %s)",
                [worker_id, name, as_of - datetime.timedelta(days=1)],
            )
            ids.append(worker_id)
    return ids


# Timestamps the admin reads for "the last hour/day", moved forward by the time since the seed.
_SHIFTED = {
    "conversations_thread": (
        "created_at",
        "updated_at",
        "enqueued_at",
        "claimed_at",
        "started_at",
        "finished_at",
        "lease_expires_at",
    ),
    "conversations_threadevent": ("created_at",),
    "conversations_conversation": ("created_at", "updated_at"),
    "workspace_document": ("created_at", "updated_at"),
    "procrastinate_events": ("at",),
    "procrastinate_jobs": ("scheduled_at",),
    "procrastinate_workers": ("last_heartbeat",),
}


def _shift(gap: datetime.timedelta) -> None:
    """Move the seeded moments forward by ``gap`` (entries keep theirs: the dashboard does not
    read them, and a million rows rewritten would take longer than the reseed saves)."""
    _execute("SET session_replication_role = replica")
    for table, columns in _SHIFTED.items():
        assignments = sql.SQL(", ").join(
            sql.SQL("{0} = {0} + %(gap)s").format(sql.Identifier(column)) for column in columns
        )
        statement = sql.SQL("UPDATE {} SET {}").format(sql.Identifier(table), assignments)
        _execute(statement.as_string(None), {"gap": gap})
    _execute("SET session_replication_role = DEFAULT")
    # FULL: the tables as compact as seeded, so every run reads as many pages as the first.
    for table in _SHIFTED:
        _execute(f"VACUUM FULL ANALYZE {table}")


def _comment(name: str) -> dict[str, object] | None:
    with admin_connection() as admin:
        row = admin.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            [name],
        ).fetchone()
    if row is None:
        return None
    try:
        return dict(json.loads(row[0] or "{}"))
    except ValueError:
        return {}


def _set_comment(name: str, size: Size, as_of: datetime.datetime) -> None:
    text = json.dumps({"version": SEED_VERSION, "size": asdict(size), "as_of": as_of.isoformat()})
    with admin_connection() as admin:
        admin.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(text))
        )


def _superuser() -> None:
    from django.contrib.auth import get_user_model

    users = get_user_model()
    if not users.objects.filter(username="bench-admin").exists():
        users.objects.create_superuser("bench-admin", "bench@example.invalid", "bench-password")


def bench_database(size: Size, *, reseed: bool) -> str:
    """Point Django at the database of ``size``: made and seeded unless a seed of the same size
    and version is there already (``reseed`` makes it again); returns its name."""
    from django.utils import timezone

    name = database_name(size)
    found = _comment(name)
    fresh = (
        reseed
        or found is None
        or found.get("version") != SEED_VERSION
        or found.get("size") != asdict(size)
    )
    if fresh:
        use("postgres")
        with admin_connection() as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    use(name)
    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    _superuser()
    now = timezone.now()
    started = time.perf_counter()
    if fresh:
        print(f"  seeding {name}: {size.describe()}", flush=True)
        _seed(size, now)
        _execute("VACUUM ANALYZE")
        print(f"  seeded in {time.perf_counter() - started:.1f} s", flush=True)
    else:
        assert found is not None
        as_of = datetime.datetime.fromisoformat(str(found["as_of"]))
        gap = now - as_of
        if gap > SHIFT_AFTER:
            _shift(gap)
            as_of = now
        print(
            f"  reusing {name} (seeded data {gap.total_seconds():,.0f} s old, "
            + (
                f"moved forward in {time.perf_counter() - started:.1f} s"
                if as_of == now
                else "kept"
            )
            + "; --reseed to seed again)",
            flush=True,
        )
        now = as_of
    _set_comment(name, size, now)
    return name


def drop_databases() -> None:
    use("postgres")
    with admin_connection() as admin:
        for size in (FULL, QUICK, SMALL):
            name = database_name(size)
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            print(f"dropped {name} (if it was there)")
