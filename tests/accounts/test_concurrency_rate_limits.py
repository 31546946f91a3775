"""Rate limits under real concurrency: threads racing for one bucket, and two server processes."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import connection
from django.test import override_settings

from accounts.models import RateLimitBucket
from accounts.services import CreatedApiKey, RateLimitDenial, rate_limit_take
from tests.support.concurrency import run_together_or_raise
from tests.support.servers import app_server, database_url, http_request

pytestmark = pytest.mark.django_db(transaction=True)


@override_settings(RATE_LIMIT_PER_MINUTE=5, RATE_LIMIT_TENANT_PER_MINUTE=8)
def test_racing_requests_never_take_more_tokens_than_the_bucket_holds() -> None:
    def request_for(user_id: str) -> Callable[[], RateLimitDenial | None]:
        return lambda: rate_limit_take(api_key_id=1, user_id=user_id, is_service=True)

    # Ten requests for each of two tenants through one service key, all at once: every request
    # races the others of its tenant for both its (key, tenant) bucket and its tenant bucket.
    outcomes = run_together_or_raise([request_for(f"tenant-{n % 2}") for n in range(20)])

    allowed = [outcome for outcome in outcomes if outcome is None]
    assert len(allowed) == 10  # 5 per (key, tenant) bucket
    assert all(outcome.scope == "key" for outcome in outcomes if outcome is not None)
    # Each tenant bucket paid for the 5 requests let through, not for the 5 refused.
    for tenant in ("tenant-0", "tenant-1"):
        assert 3 <= RateLimitBucket.objects.get(bucket=f"tenant:{tenant}").tokens < 3.5


def test_two_server_processes_share_one_limit(make_api_key: Callable[..., CreatedApiKey]) -> None:
    key = make_api_key("alice")
    headers = {"Authorization": f"Bearer {key.raw_key}"}
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "RATE_LIMIT_PER_MINUTE": "6",
        "RATE_LIMIT_TENANT_PER_MINUTE": "0",
    }

    with app_server(env) as first, app_server(env) as second:
        statuses = [
            http_request(f"{base_url}/api/v1/me", headers=headers).status
            for base_url in [first, second] * 3
        ]
        refused = [http_request(f"{base}/api/v1/me", headers=headers) for base in (first, second)]

    assert statuses == [200] * 6
    assert [result.status for result in refused] == [429, 429]
    assert all(result.body["error"]["code"] == "rate_limited" for result in refused)
    assert all(1 <= int(result.headers["Retry-After"]) <= 10 for result in refused)
