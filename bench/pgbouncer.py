"""PgBouncer benchmark: a turn's end-to-end time with the web processes behind PgBouncer in
transaction mode, with and without ``DATABASE_DIRECT_URL``, against no pooler, in one run.

Three configurations of ``manage.py serve`` (web, turn worker, background worker) on one scratch
database, each answering ``--turns`` messages one after another with the echo model at
``--latency-ms``; the time is from the POST to the reply seen by the client's long-poll:

- ``direct``: no pooler (the baseline);
- ``pooler only``: ``DATABASE_URL`` at PgBouncer and nothing else (prepared statements off, or
  PgBouncer 1.18 fails them), as a deployment that only swapped the URL would run: every
  process's LISTEN goes through PgBouncer too;
- ``pooler + direct``: ``DATABASE_URL`` at PgBouncer and ``DATABASE_DIRECT_URL`` at PostgreSQL.

Also printed: PostgreSQL's connections to the database while each configuration serves.
Needs Debian's ``pgbouncer`` (``apt-get install pgbouncer``).

    .venv/bin/python bench/pgbouncer.py [--turns 20] [--latency-ms 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

from scratch_database import scratch_database

from tests.support.pgbouncer import pgbouncer, pgbouncer_missing
from tests.support.serve import TEST_DEFAULTS, send_and_await_reply, serve_running
from tests.support.servers import database_url


def connections_to(name: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [name])
        (count,) = cursor.fetchone()
    return int(count)


def run(label: str, env: dict[str, str], *, key: str, turns: int, name: str) -> list[float]:
    with (
        tempfile.TemporaryFile("w+") as log,
        serve_running(env, log=log, ready_timeout=90) as serve,
    ):
        send_and_await_reply(serve.base_url, key, "warm-up")
        times = []
        for number in range(turns):
            started = time.monotonic()
            send_and_await_reply(serve.base_url, key, f"{label} {number}", timeout=60)
            times.append(time.monotonic() - started)
        backends = connections_to(name)
    p50 = statistics.median(times)
    p95 = statistics.quantiles(times, n=20)[18] if len(times) >= 2 else times[0]
    print(
        f"{label:<16} p50 {p50 * 1000:7.0f} ms  p95 {p95 * 1000:7.0f} ms  "
        f"max {max(times) * 1000:7.0f} ms  PostgreSQL connections {backends}",
        flush=True,
    )
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--latency-ms", type=int, default=200)
    options = parser.parse_args()
    if (missing := pgbouncer_missing()) is not None:
        print(f"skipped: {missing}")
        return

    with scratch_database("bench_pgbouncer") as name:
        from django.db import connection

        from accounts.services import api_key_create

        key = api_key_create(name="bench", user_id="alice").raw_key
        server = dict(connection.settings_dict)
        base = {
            **os.environ,
            **TEST_DEFAULTS,
            "SECRET_KEY": os.environ.get("SECRET_KEY", "bench-" + "x" * 50),
            "ENGINE_MODEL": "echo",
            "ENGINE_ECHO_LATENCY_MS": str(options.latency_ms),
        }
        direct = database_url(server)
        with pgbouncer(server_host=server["HOST"], server_port=int(server["PORT"])) as bouncer:
            pooled = bouncer.url(name)
            print(
                f"{options.turns} turns each, one at a time, echo model {options.latency_ms} ms; "
                "PgBouncer 1.18, transaction mode, 4 server connections"
            )
            figures = {
                "direct": run(
                    "direct",
                    {**base, "DATABASE_URL": direct},
                    key=key,
                    turns=options.turns,
                    name=name,
                ),
                "pooler only": run(
                    "pooler only",
                    {**base, "DATABASE_URL": pooled, "DATABASE_PREPARED_STATEMENTS": "false"},
                    key=key,
                    turns=options.turns,
                    name=name,
                ),
                "pooler + direct": run(
                    "pooler + direct",
                    {**base, "DATABASE_URL": pooled, "DATABASE_DIRECT_URL": direct},
                    key=key,
                    turns=options.turns,
                    name=name,
                ),
            }
    baseline = statistics.median(figures["direct"])
    for label, times in figures.items():
        print(f"{label:<16} p50 / direct p50: x{statistics.median(times) / baseline:.2f}")


if __name__ == "__main__":
    main()
