"""Schemathesis against the live server, every operation: no 5xx, nothing the schema does not say.

CI-sized (a fixed seed per run, so a failure reproduces); ``bench/fuzz_api.py`` is the long run.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connection

from accounts.services import CreatedApiKey
from tests.support.api_fuzz import fuzz_server_env, run_schemathesis
from tests.support.servers import app_server, database_url, http_request

pytestmark = pytest.mark.django_db(transaction=True)


def test_every_operation_answers_generated_requests_as_its_schema_documents(
    make_api_key: Callable[..., CreatedApiKey],
) -> None:
    tenant_key = make_api_key("fuzz-tenant").raw_key
    service_key = make_api_key(service=True, name="fuzz-engine").raw_key
    env = fuzz_server_env(database_url(connection.settings_dict))

    with app_server(env) as base:
        schema = http_request(f"{base}/api/schema/", headers={"Accept": "application/json"}).body
        reports = [
            run_schemathesis(
                base,
                label="tenant key",
                headers={"Authorization": f"Bearer {tenant_key}"},
                max_examples=25,
                seed=9001,
            ),
            run_schemathesis(
                base,
                label="service key acting for a tenant",
                headers={"Authorization": f"Bearer {service_key}", "X-User-Id": "fuzz-service"},
                max_examples=8,
                seed=9002,
            ),
            run_schemathesis(
                base,
                label="service key serving every tenant",
                headers={"Authorization": f"Bearer {service_key}"},
                max_examples=20,
                operation_ids=["thread_next", "me"],
                seed=9003,
            ),
        ]

    for report in reports:
        print(report.summary())
    failed = [report for report in reports if not report.ok]
    assert not failed, "\n\n".join(report.explain() for report in failed)
    operations = sum(len(item) for item in schema["paths"].values())
    assert [report.operations for report in reports] == [operations, operations, 2]
    assert all(report.cases >= 20 * report.operations for report in reports), reports
