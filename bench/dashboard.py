"""Dashboard benchmark: the operations console's index and the main admin lists on a large database.

Target (the operations console's issue): the dashboard renders in 300 ms or less with 100,000
threads and 1,000,000 conversation entries. Each page is requested through Django's test client
logged in as a superuser (the whole middleware stack, the view and its template, no network), so
the bench measures whatever the dashboard shows without knowing how it is built.

Baseline, in the same run: the same pages on an almost empty database (100 threads, 1,000
entries), and a trivial admin page (the password change form) on the large one. Then each SQL
statement of one dashboard render (captured with CaptureQueriesContext) is run again under
``EXPLAIN (ANALYZE, BUFFERS)``: its time, and any sequential scan of a table of more than 10,000
rows, which is the statement that will not scale. The lists' statements follow.

The databases (``ironclaw_bench_dashboard_<threads>``, next to the dev one on the same server)
are seeded in SQL once, in about a minute, and kept: a later run reuses them (``--reseed`` seeds
again, ``--drop`` drops them).

    .venv/bin/python bench/dashboard.py [--quick] [--requests 30] [--rounds 3] [--reseed] [--drop]

``--quick``: 10,000 threads and 100,000 entries instead, 10 requests a page.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import dashboard_seed as seed

TARGET_MS = 300.0
# A sequential scan of a table larger than this is flagged: it grows with the table.
SEQ_SCAN_ROWS = 10_000
WARM_UP = 2

# WhiteNoise's, for a checkout whose static files were never collected: the admin's pages are
# measured without their CSS and scripts, which a browser fetches apart.
warnings.filterwarnings("ignore", message="No directory at")


def pages() -> dict[str, str]:
    from django.urls import reverse

    threads = reverse("admin:conversations_thread_changelist")
    return {
        "dashboard": reverse("admin:index"),
        "dashboard ?span=day": reverse("admin:index") + "?span=day",
        "thread list": threads,
        "thread list, failed": threads + "?state__exact=failed",
        "conversation list": reverse("admin:conversations_conversation_changelist"),
        "entry list": reverse("admin:conversations_conversationentry_changelist"),
        "document list": reverse("admin:workspace_document_changelist"),
        "job list": reverse("admin:procrastinate_procrastinatejob_changelist"),
        "password change (trivial)": reverse("admin:password_change"),
    }


@dataclass
class Timing:
    queries: int
    times_ms: list[float]
    # A page that answered but said its figures were unavailable (the dashboard's statement
    # timeout), which would make it look fast.
    error_note: bool = False

    @property
    def minimum(self) -> float:
        return min(self.times_ms)

    @property
    def median(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def p95(self) -> float:
        if len(self.times_ms) < 2:
            return self.times_ms[0]
        return statistics.quantiles(self.times_ms, n=20, method="inclusive")[18]


@dataclass
class Measured:
    label: str
    timings: dict[str, Timing] = field(default_factory=dict)


def logged_in_client() -> Any:
    from django.conf import settings
    from django.contrib.auth import get_user_model
    from django.test import Client

    if "testserver" not in settings.ALLOWED_HOSTS:
        settings.ALLOWED_HOSTS = [*settings.ALLOWED_HOSTS, "testserver"]
    client = Client()
    client.force_login(get_user_model().objects.get(username="bench-admin"))
    return client


def measure_round(measured: Measured, requests: int) -> None:
    """``requests`` timed GETs of each page, after WARM_UP untimed; the first round also counts
    each page's queries."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = logged_in_client()
    for name, url in pages().items():
        for _ in range(WARM_UP):
            client.get(url)
        with CaptureQueriesContext(connection) as captured:
            response = client.get(url)
        # Now: the next request's start empties the log the capture reads from.
        queries = len(captured)
        if response.status_code != 200:
            raise SystemExit(f"{name}: GET {url} answered {response.status_code}")
        timing = measured.timings.setdefault(name, Timing(queries=queries, times_ms=[]))
        timing.error_note |= b'class="errornote"' in response.content
        for _ in range(requests):
            started = time.perf_counter()
            client.get(url)
            timing.times_ms.append((time.perf_counter() - started) * 1000)


# --- EXPLAIN ------------------------------------------------------------------------------------


@dataclass
class Explained:
    sql: str
    total_ms: float = 0.0
    buffers: int = 0
    # "table (rows in the table, rows read)" for each sequential scan of a table > SEQ_SCAN_ROWS.
    big_seq_scans: list[str] = field(default_factory=list)
    error: str = ""


def short_sql(text: str, width: int = 150) -> str:
    """The statement on one line, the select list of a leading SELECT elided."""
    text = re.sub(r"\s+", " ", text).strip()
    if text.startswith("SELECT "):
        depth = 0
        for position, character in enumerate(text):
            depth += {"(": 1, ")": -1}.get(character, 0)
            if depth == 0 and text.startswith(" FROM ", position):
                text = "SELECT ..." + text[position:]
                break
    return text if len(text) <= width else text[: width - 3] + "..."


def _table_rows() -> dict[str, float]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, reltuples FROM pg_class WHERE relkind = 'r'"
            " AND relnamespace = 'public'::regnamespace"
        )
        return {name: float(rows) for name, rows in cursor.fetchall()}


def _seq_scans(plan: dict[str, Any], tables: dict[str, float]) -> list[str]:
    found = []
    if plan.get("Node Type") == "Seq Scan":
        table = str(plan.get("Relation Name", "?"))
        rows = tables.get(table, 0.0)
        if rows > SEQ_SCAN_ROWS:
            read = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * plan.get(
                "Actual Loops", 1
            )
            found.append(f"{table} ({rows:,.0f} rows, {read:,.0f} read)")
    for child in plan.get("Plans", []):
        found.extend(_seq_scans(child, tables))
    return found


def explain(statements: list[str]) -> list[Explained]:
    """Each SELECT of ``statements`` again, under EXPLAIN (ANALYZE, BUFFERS)."""
    from django.db import DatabaseError, connection

    tables = _table_rows()
    explained = []
    for statement in statements:
        head = statement.lstrip().upper()
        if not head.startswith(("SELECT", "WITH")) or "SET_CONFIG" in head[:40]:
            continue
        result = Explained(statement)
        try:
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement)
                (document,) = cursor.fetchone()
        except DatabaseError as error:
            result.error = f"{type(error).__name__}: {str(error).splitlines()[0]}"
            explained.append(result)
            continue
        top = (json.loads(document) if isinstance(document, str) else document)[0]
        result.total_ms = float(top.get("Planning Time", 0.0)) + float(top["Execution Time"])
        plan = top["Plan"]
        result.buffers = int(plan.get("Shared Hit Blocks", 0)) + int(
            plan.get("Shared Read Blocks", 0)
        )
        result.big_seq_scans = _seq_scans(plan, tables)
        explained.append(result)
    return explained


def captured_statements(url: str) -> list[str]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    client = logged_in_client()
    client.get(url)
    with CaptureQueriesContext(connection) as captured:
        client.get(url)
    return [str(query["sql"]) for query in captured.captured_queries]  # before the next request


def every_page_reads(item: Explained) -> bool:
    """The session and the user, which every admin page reads."""
    return "django_session" in item.sql or 'FROM "auth_user"' in item.sql


def print_explained(title: str, explained: list[Explained]) -> None:
    print(f"  {title}:")
    for item in explained:
        if every_page_reads(item):
            continue
        if item.error:
            print(f"    could not EXPLAIN ({item.error}): {short_sql(item.sql)}")
            continue
        flag = "  SEQ SCAN " + "; ".join(item.big_seq_scans) if item.big_seq_scans else ""
        print(f"    {item.total_ms:8.2f} ms {item.buffers:>7,} buffers{flag}")
        print(f"        {short_sql(item.sql)}")


def explain_pages() -> list[Explained]:
    """The dashboard's statements, every one, then the lists'; returns the dashboard's."""
    urls = pages()
    print("== EXPLAIN (ANALYZE, BUFFERS) on the large database, planning included")
    dashboard: list[Explained] = []
    seen: set[str] = set()
    for name in ("dashboard", "dashboard ?span=day"):
        statements = [sql for sql in captured_statements(urls[name]) if sql not in seen]
        seen.update(statements)
        explained = [item for item in explain(statements) if not every_page_reads(item)]
        dashboard.extend(explained)
        print_explained(f"{name} ({len(explained)} SELECTs not seen above)", explained)
    for name, url in urls.items():
        if name.startswith("dashboard") or name.startswith("password"):
            continue
        print_explained(name, explain(captured_statements(url)))
    return dashboard


# --- Report -------------------------------------------------------------------------------------


def report(small: Measured, large: Measured, dashboard: list[Explained], requests: int) -> None:
    print()
    print(f"== results: ms over {requests} warm requests a page; queries per request")
    print(f"   baseline: {small.label}; large: {large.label}")
    print(
        f"  {'page':<28}{'queries':>9}{'base min':>10}{'median':>8}{'large min':>11}"
        f"{'median':>8}{'p95':>8}{'large/base':>12}"
    )
    for name, timing in large.timings.items():
        base = small.timings[name]
        queries = (
            f"{timing.queries}"
            if timing.queries == base.queries
            else f"{base.queries}->{timing.queries}"
        )
        note = "  (error note)" if timing.error_note or base.error_note else ""
        print(
            f"  {name:<28}{queries:>9}{base.minimum:>10.1f}{base.median:>8.1f}"
            f"{timing.minimum:>11.1f}{timing.median:>8.1f}{timing.p95:>8.1f}"
            f"{timing.median / base.median:>11.1f}x{note}"
        )
    trivial = large.timings["password change (trivial)"].median
    board = large.timings["dashboard"]
    print(f"  dashboard / trivial admin page on the large database: x{board.median / trivial:.1f}")
    slow = sorted((item for item in dashboard if not item.error), key=lambda i: -i.total_ms)[:3]
    print("  the dashboard's slowest statements:")
    for item in slow:
        print(f"    {item.total_ms:8.2f} ms  {short_sql(item.sql, 110)}")
    scans = [scan for item in dashboard for scan in item.big_seq_scans]
    print(
        "  the dashboard's sequential scans of tables over "
        f"{SEQ_SCAN_ROWS:,} rows: {'; '.join(scans) if scans else 'none'}"
    )
    worst = max(board.p95, large.timings["dashboard ?span=day"].p95)
    verdict = "meets" if worst <= TARGET_MS and not board.error_note else "MISSES"
    print(
        f"VERDICT: the dashboard renders in {board.median:.0f} ms (median), p95 {worst:.0f} ms "
        f"with {large.label}: {verdict} the {TARGET_MS:.0f} ms target"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="10,000 threads, 100,000 entries")
    parser.add_argument("--requests", type=int, help="timed requests a page (30; 10 with --quick)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating databases")
    parser.add_argument("--reseed", action="store_true", help="seed the databases again")
    parser.add_argument("--drop", action="store_true", help="drop the bench databases and exit")
    options = parser.parse_args()
    if options.drop:
        seed.drop_databases()
        return
    size = seed.QUICK if options.quick else seed.FULL
    requests = options.requests or (10 if options.quick else 30)
    print(f"{os.cpu_count()} CPUs; each page {requests} times in {options.rounds} rounds")
    print(f"baseline database: {seed.SMALL.describe()}")
    small_name = seed.bench_database(seed.SMALL, reseed=options.reseed)
    print(f"large database: {size.describe()}")
    large_name = seed.bench_database(size, reseed=options.reseed)
    small = Measured(f"{seed.SMALL.threads:,} threads")
    large = Measured(f"{size.threads:,} threads / {size.entries:,} entries")
    # Rounds alternate between the two databases, so a burst of load elsewhere on the machine
    # lands on both sides of the ratio.
    per_round = max(1, -(-requests // options.rounds))
    for number in range(options.rounds):
        for name, measured in ((small_name, small), (large_name, large)):
            seed.use(name)
            measure_round(measured, per_round)
        board = large.timings["dashboard"].times_ms[-per_round:]
        print(
            f"  round {number + 1}: dashboard median {statistics.median(board):.1f} ms "
            "on the large database",
            flush=True,
        )
    dashboard = explain_pages()
    report(small, large, dashboard, per_round * options.rounds)


if __name__ == "__main__":
    main()
