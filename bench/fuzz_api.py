"""Long API fuzz run: schemathesis over every operation of a live server, thousands of cases.

The same runs as the suite's ``tests/operations/test_api_fuzz.py`` (a tenant key; a service
key acting for a tenant; a service key serving every tenant on ``threads/next``), with many more
examples per operation, random seeds (printed, so a failure can be replayed with ``--seed``) and
two concurrent schemathesis workers, against the web server on a scratch database (created, migrated
and dropped). It prints the cases each run executed and its failures, and exits 1 on any.

    .venv/bin/python bench/fuzz_api.py                      # >= 5,000 cases, a few minutes
    .venv/bin/python bench/fuzz_api.py --max-examples 500   # longer
"""

from __future__ import annotations

import argparse
import random
import sys
import time

from scratch_database import scratch_database


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-examples", type=int, default=150, help="per operation, tenant run")
    parser.add_argument("--seed", type=int, default=None, help="replay a run (default: random)")
    parser.add_argument("--workers", type=int, default=2, help="concurrent schemathesis workers")
    parser.add_argument("--min-cases", type=int, default=5000, help="fail a run with fewer")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)

    with scratch_database("bench_fuzz"):
        from django.db import connection

        from accounts.services import api_key_create
        from tests.support.api_fuzz import fuzz_server_env, run_schemathesis
        from tests.support.servers import app_server, database_url

        tenant_key = api_key_create(name="fuzz", user_id="fuzz-tenant", is_service=False).raw_key
        service_key = api_key_create(name="fuzz-engine", user_id=None, is_service=True).raw_key
        env = fuzz_server_env(database_url(connection.settings_dict))
        started = time.monotonic()
        with app_server(env, threads=8) as base:
            runs = [
                ("tenant key", {"Authorization": f"Bearer {tenant_key}"}, args.max_examples, ()),
                (
                    "service key acting for a tenant",
                    {"Authorization": f"Bearer {service_key}", "X-User-Id": "fuzz-service"},
                    max(1, args.max_examples // 3),
                    (),
                ),
                (
                    "service key serving every tenant",
                    {"Authorization": f"Bearer {service_key}"},
                    args.max_examples,
                    ("thread_next", "me"),
                ),
            ]
            reports = []
            for offset, (label, headers, examples, operation_ids) in enumerate(runs):
                report = run_schemathesis(
                    base,
                    label=label,
                    headers=headers,
                    max_examples=examples,
                    operation_ids=operation_ids,
                    seed=seed + offset,
                    workers=args.workers,
                )
                print(report.summary(), flush=True)
                reports.append(report)
        elapsed = time.monotonic() - started

    cases = sum(report.cases for report in reports)
    failing = sum(report.failed_cases for report in reports)
    errors = sum(len(report.errors) for report in reports)
    print(
        f"total: {cases} cases in {elapsed:.0f} s ({cases / elapsed:.0f}/s), "
        f"{failing} failing, {errors} errors, seed {seed}"
    )
    for report in reports:
        if not report.ok:
            print(f"\n{report.explain()}", file=sys.stderr)
    if cases < args.min_cases:
        print(f"fewer cases than --min-cases {args.min_cases}", file=sys.stderr)
        return 1
    return 0 if all(report.ok for report in reports) else 1


if __name__ == "__main__":
    sys.exit(main())
