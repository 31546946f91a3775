from __future__ import annotations

import pgtrigger
from django.db import models
from django.db.models import Q

from core.db import TenantRow


class ApiKey(models.Model):
    """A bearer key for the REST API. Only the SHA-256 of the key is stored.

    A tenant key acts as its ``user_id``; a service key (engines, bridges) has none and names the
    tenant of each request in the ``X-User-Id`` header.
    """

    name = models.CharField(max_length=100)
    user_id = models.CharField(max_length=255, blank=True, db_index=True)
    is_service = models.BooleanField(default=False)
    # The first characters of the key, shown in the admin so an operator can tell keys apart.
    prefix = models.CharField(max_length=16, editable=False)
    # Keys are 256-bit random tokens, so one SHA-256 round is enough (no stretching needed) and
    # lets authentication look the key up through this unique index.
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # When the key last authenticated a request, to the minute: authentication writes it at most
    # once a minute (``api_key_mark_used``). Not indexed, so that write stays a HOT update.
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name = "API key"
        constraints = [
            models.CheckConstraint(
                name="apikey_tenant_key_has_user_id",
                condition=Q(is_service=True) | ~Q(user_id=""),
            ),
            models.CheckConstraint(
                name="apikey_service_key_has_no_user_id",
                condition=Q(is_service=False) | Q(user_id=""),
            ),
        ]
        triggers = [
            # Ends the key's open event streams in every web process (they authenticated once,
            # when they opened): payload "key:<id>", the name a stream's slot is counted under.
            pgtrigger.Trigger(
                name="apikey_notify_revoked",
                when=pgtrigger.After,
                operation=pgtrigger.Update,
                condition=pgtrigger.Condition(
                    "OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL"
                ),
                func="PERFORM pg_notify('ironclaw_keys', 'key:' || NEW.id); RETURN NULL;",
            ),
            pgtrigger.Trigger(
                name="apikey_notify_deleted",
                when=pgtrigger.After,
                operation=pgtrigger.Delete,
                func="PERFORM pg_notify('ironclaw_keys', 'key:' || OLD.id); RETURN NULL;",
            ),
        ]

    def __str__(self) -> str:
        owner = "service" if self.is_service else self.user_id
        return f"{self.name} ({owner}, {self.prefix}…)"

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


class RateLimitBucket(models.Model):
    """A token bucket of the API rate limits, shared by every process through the database.

    ``bucket`` names what it limits (``key:<id>``, ``key:<id>:<tenant>`` for a service key acting
    for a tenant, ``tenant:<tenant>``). The bucket holds up to ``capacity`` tokens (the per-minute
    limit) and refills at ``capacity`` per minute; each request takes one. The table is unlogged:
    after a database crash the buckets start full again, which only forgives a burst.
    """

    bucket = models.TextField(primary_key=True)
    capacity = models.PositiveIntegerField()
    tokens = models.FloatField()
    refilled_at = models.DateTimeField()
    # Whether the latest request found a token, so the one upsert can tell its caller.
    allowed = models.BooleanField()
    # No index but the primary key, on purpose: every request rewrites refilled_at, and an index
    # on it would turn each of those updates from a HOT update into an index write. The purge
    # scans the table (one row per active key and tenant) every few minutes instead.

    def __str__(self) -> str:
        return f"{self.bucket}: {self.tokens:.1f}/{self.capacity}"


class IdempotencyKey(TenantRow):
    """A client's ``Idempotency-Key`` and the response of the request that first sent it.

    Scoped to the API key and the tenant it acted for (``""`` for a service key acting for no
    tenant). The row is inserted in the same transaction as the request's work, so a crash
    leaves both or neither; a repeat of the key replays ``response_body`` while the row is newer
    than ``IDEMPOTENCY_TTL_HOURS``. ``fingerprint`` is the SHA-256 of the method, the path and
    the body, so the same key with another request is refused rather than replayed.
    """

    # db_index=False: the unique constraint's index leads with api_key already.
    api_key = models.ForeignKey(ApiKey, on_delete=models.CASCADE, related_name="+", db_index=False)
    user_id = models.CharField(max_length=255, blank=True)
    key = models.CharField(max_length=255)
    fingerprint = models.CharField(max_length=64)
    response_status = models.PositiveSmallIntegerField()
    # The response's JSON as rendered (text, not jsonb: a replay keeps its key order).
    response_body = models.TextField(blank=True)
    created_at = models.DateTimeField()

    class Meta:
        verbose_name = "idempotency key"
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "user_id", "key"], name="idempotencykey_unique_per_key_tenant"
            ),
        ]
        # The hourly prune deletes by age.
        indexes = [models.Index(fields=["created_at"], name="idempotencykey_created_idx")]

    def __str__(self) -> str:
        return f"{self.key} ({self.user_id or 'any tenant'}, {self.response_status})"
