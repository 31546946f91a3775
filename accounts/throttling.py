"""The API's rate limits as a DRF throttle: per key and per tenant, shared by every process."""

from __future__ import annotations

from typing import Any

from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle

from accounts.authentication import ApiPrincipal
from accounts.services import rate_limit_take
from core.errors import RateLimited


class ApiKeyRateThrottle(BaseThrottle):
    """Refuse a request over ``RATE_LIMIT_PER_MINUTE`` (per key) or ``RATE_LIMIT_TENANT_PER_MINUTE``
    (per tenant) with 429 ``rate_limited`` and ``Retry-After``; costs one SQL statement."""

    def allow_request(self, request: Request, view: Any) -> bool:
        principal = request.user
        if not isinstance(principal, ApiPrincipal):
            # Views without a key (the schema, the docs, the /api/ catch-all) are not limited.
            return True
        denial = rate_limit_take(
            api_key_id=principal.api_key_id,
            user_id=principal.user_id,
            is_service=principal.is_service,
        )
        if denial is None:
            return True
        # Raised rather than returned as False so the answer can say which limit was hit.
        whose = "this key" if denial.scope == "key" else "this tenant"
        raise RateLimited(
            f"Rate limit of {denial.per_minute} requests per minute for {whose} exceeded; "
            f"retry in {denial.retry_after} s.",
            retry_after=denial.retry_after,
            details={
                "scope": denial.scope,
                "per_minute": denial.per_minute,
                "retry_after": denial.retry_after,
            },
        )
