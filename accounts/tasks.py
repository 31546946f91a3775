"""Procrastinate entry points of the accounts app (periodic maintenance, queue ``default``)."""

from __future__ import annotations

import logging

from procrastinate.contrib.django import app

from accounts.idempotency import idempotency_keys_prune
from accounts.services import rate_limit_buckets_purge

logger = logging.getLogger(__name__)


@app.periodic(cron="*/5 * * * *", periodic_id="accounts.purge_rate_limit_buckets")
@app.task(
    name="accounts.tasks.purge_rate_limit_buckets",
    queueing_lock="accounts.purge_rate_limit_buckets",
)
def purge_rate_limit_buckets(timestamp: int) -> None:
    deleted = rate_limit_buckets_purge()
    if deleted:
        logger.info("rate limits: purged %d idle buckets", deleted)


@app.periodic(cron="23 * * * *", periodic_id="accounts.prune_idempotency_keys")
@app.task(
    name="accounts.tasks.prune_idempotency_keys",
    queueing_lock="accounts.prune_idempotency_keys",
)
def prune_idempotency_keys(timestamp: int) -> None:
    deleted = idempotency_keys_prune()
    if deleted:
        logger.info("idempotency: pruned %d expired keys", deleted)
