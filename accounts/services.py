from __future__ import annotations

import hashlib
import math
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db import connection
from django.db.models import DateTimeField, ExpressionWrapper
from django.db.models.functions import Now
from django.utils import timezone

from accounts.models import ApiKey, RateLimitBucket
from accounts.tenancy import user_id_problem
from core.db import server_bound_cursor
from core.errors import InvalidInput, NotFound

KEY_PREFIX = "ick_"


def hash_api_key(raw_key: str) -> str:
    return hashlib.sha256(raw_key.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedApiKey:
    api_key: ApiKey
    raw_key: str


def api_key_create(
    *, name: str, user_id: str | None = None, is_service: bool = False
) -> CreatedApiKey:
    """Create a key and return it with its only plain-text copy (the database keeps the hash)."""
    name = name.strip()
    if not name:
        raise InvalidInput("A key needs a name.", details={"name": ["must not be empty"]})
    if is_service:
        if user_id:
            raise InvalidInput(
                "A service key acts for any tenant named in X-User-Id; it takes no user_id.",
                details={"user_id": ["must be empty for a service key"]},
            )
        user_id = ""
    else:
        problem = user_id_problem(user_id or "")
        if problem:
            raise InvalidInput(f"user_id {problem}.", details={"user_id": [problem]})
    raw_key = KEY_PREFIX + secrets.token_urlsafe(32)
    api_key = ApiKey.objects.create(
        name=name,
        user_id=user_id or "",
        is_service=is_service,
        prefix=raw_key[: len(KEY_PREFIX) + 6],
        key_hash=hash_api_key(raw_key),
    )
    return CreatedApiKey(api_key=api_key, raw_key=raw_key)


def api_key_revoke(*, api_key_id: int) -> ApiKey:
    """Revoke a key: requests with it get 401 from then on. Revoking twice keeps the first time."""
    ApiKey.objects.filter(pk=api_key_id, revoked_at__isnull=True).update(revoked_at=timezone.now())
    try:
        return ApiKey.objects.get(pk=api_key_id)
    except ApiKey.DoesNotExist:
        raise NotFound(f"No API key with id {api_key_id}.") from None


# A key's last use is kept to the minute: authentication runs on every API request, and a write
# per request would turn a read of the key into a row update (and WAL) each time.
API_KEY_USE_PRECISION_SECONDS = 60
# Key id -> time.monotonic() when this process last wrote the key's last_used_at. Monotonic, so
# neither a clock step nor a skew between this host and the database's makes it write more often.
_api_key_use_written: dict[int, float] = {}
# Conditional, so processes writing the same minute's use leave the first one's time in place.
_API_KEY_MARK_USED_SQL = f"""
    UPDATE accounts_apikey SET last_used_at = now()
    WHERE id = %s AND (
        last_used_at IS NULL
        OR last_used_at < now() - interval '{API_KEY_USE_PRECISION_SECONDS} seconds'
    )
"""


def api_key_mark_used(*, api_key: ApiKey) -> bool:
    """Record that ``api_key`` authenticated a request: one conditional UPDATE (autocommit),
    skipped when the row read by authentication or this process's own write is less than a
    minute old. Returns whether the statement was issued."""
    written = _api_key_use_written.get(api_key.pk)
    if written is not None and time.monotonic() - written < API_KEY_USE_PRECISION_SECONDS:
        return False
    last_used_at = api_key.last_used_at
    if last_used_at is not None and (
        timezone.now() - last_used_at < timedelta(seconds=API_KEY_USE_PRECISION_SECONDS)
    ):
        # Another process wrote it this minute (the row was read just now).
        return False
    with connection.cursor() as cursor:
        cursor.execute(_API_KEY_MARK_USED_SQL, [api_key.pk])
    _api_key_use_written[api_key.pk] = time.monotonic()
    return True


@dataclass(frozen=True)
class RateLimitDenial:
    """The limit a request ran into: ``scope`` is ``key`` or ``tenant``."""

    scope: str
    per_minute: int
    retry_after: int


# A bucket's tokens after refilling for the time since its last request, capped at its capacity.
# statement_timestamp() moves on between statements even inside one transaction.
_REFILLED = (
    "LEAST(EXCLUDED.capacity, bucket.tokens + GREATEST(0, EXTRACT(EPOCH FROM "
    "EXCLUDED.refilled_at - bucket.refilled_at))::float8 * EXCLUDED.capacity / 60.0)"
)


def _take_token_sql(source: str) -> str:
    """Upsert the buckets ``source`` selects (name, capacity): a missing bucket starts full minus
    this request, an existing one is refilled and pays a token if it has one. The row lock of ON
    CONFLICT serialises racing requests across processes, on the latest row version."""
    return f"""
        INSERT INTO accounts_ratelimitbucket AS bucket
            (bucket, capacity, tokens, refilled_at, allowed)
        SELECT name, capacity, capacity - 1, statement_timestamp(), true FROM {source}
        ON CONFLICT (bucket) DO UPDATE SET
            capacity = EXCLUDED.capacity,
            tokens = CASE WHEN {_REFILLED} >= 1 THEN {_REFILLED} - 1 ELSE {_REFILLED} END,
            allowed = {_REFILLED} >= 1,
            -- A request that waited for the row lock may carry an earlier timestamp.
            refilled_at = GREATEST(bucket.refilled_at, EXCLUDED.refilled_at)
        RETURNING bucket, capacity, tokens, allowed
    """


_REQUESTED = "(VALUES (%s, %s)) AS requested (name, capacity)"
_REQUESTED_IF_KEY_ALLOWED = (
    "(SELECT %s::text, %s::int FROM key_take WHERE allowed) AS requested (name, capacity)"
)
_TAKE_ONE_SQL = _take_token_sql(_REQUESTED)
# The tenant's bucket pays only for a request its key's bucket let through, so a key over its
# own limit never spends its tenant's (and the tenant's other keys') budget. Every statement
# locks a key's bucket before its tenant's, and a key's bucket belongs to one tenant, so two
# statements never wait for each other in a cycle.
_TAKE_KEY_THEN_TENANT_SQL = f"""
    WITH key_take AS ({_take_token_sql(_REQUESTED)}),
    tenant_take AS ({_take_token_sql(_REQUESTED_IF_KEY_ALLOWED)})
    SELECT * FROM key_take UNION ALL SELECT * FROM tenant_take
"""


def rate_limit_buckets(
    *, api_key_id: int, user_id: str, is_service: bool
) -> list[tuple[str, str, int]]:
    """The buckets a request pays into: (name, scope, per-minute limit), key first; limits of 0
    are off.

    A tenant key pays into its key's bucket; a service key into one bucket per tenant it acts
    for, so one busy tenant behind a bridge never starves the bridge's other tenants. Every
    request for a tenant also pays into the tenant's bucket, shared by all its keys. A service
    key acting for every tenant (``threads/next`` without ``X-User-Id``) has a bucket of its own.
    """
    per_key: int = settings.RATE_LIMIT_PER_MINUTE
    per_tenant: int = settings.RATE_LIMIT_TENANT_PER_MINUTE
    buckets = []
    if per_key:
        name = f"key:{api_key_id}:{user_id}" if is_service and user_id else f"key:{api_key_id}"
        buckets.append((name, "key", per_key))
    if per_tenant and user_id:
        buckets.append((f"tenant:{user_id}", "tenant", per_tenant))
    return buckets


def rate_limit_take(*, api_key_id: int, user_id: str, is_service: bool) -> RateLimitDenial | None:
    """Take a token from the request's key bucket, then its tenant bucket, in one statement
    (autocommit, so the row locks last only that statement); return the limit it ran into, or
    None if the request may go on."""
    buckets = rate_limit_buckets(api_key_id=api_key_id, user_id=user_id, is_service=is_service)
    if not buckets:
        return None
    sql = _TAKE_KEY_THEN_TENANT_SQL if len(buckets) == 2 else _TAKE_ONE_SQL
    # Bound server-side: every request runs it, so each connection prepares it.
    with server_bound_cursor() as cursor:
        cursor.execute(sql, [value for name, _, limit in buckets for value in (name, limit)])
        rows = {name: (capacity, tokens, allowed) for name, capacity, tokens, allowed in cursor}
    for name, scope, _ in buckets:
        capacity, tokens, allowed = rows[name]
        if not allowed:
            # Seconds until the bucket holds a whole token again, at capacity/60 tokens a second.
            retry_after = max(1, math.ceil((1 - tokens) * 60 / capacity))
            return RateLimitDenial(scope=scope, per_minute=capacity, retry_after=retry_after)
    return None


def rate_limit_buckets_purge() -> int:
    """Delete buckets idle for a minute: they have refilled to capacity, exactly like a bucket
    that does not exist yet, so nothing changes for their next request. Returns how many."""
    idle_since = ExpressionWrapper(Now() - timedelta(minutes=1), output_field=DateTimeField())
    deleted, _ = RateLimitBucket.objects.filter(refilled_at__lt=idle_since).delete()
    return deleted
