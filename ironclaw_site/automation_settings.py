"""Settings of routines (the scheduler) and webhooks (outbound deliveries), read from the
environment like the rest of ``ironclaw_site.settings``, which imports them."""

from __future__ import annotations

from pathlib import Path

from ironclaw_site.env import env_bool, env_float, env_int, env_optional_str

__all__ = [
    "ROUTINE_CATCH_UP_MINUTES",
    "ROUTINE_CLOCK_FILE",
    "ROUTINE_FIRING_RETENTION_DAYS",
    "ROUTINE_MAX_PER_TENANT",
    "ROUTINE_TICK_SECONDS",
    "WEBHOOK_ALLOW_PRIVATE",
    "WEBHOOK_CONCURRENCY",
    "WEBHOOK_DELIVERY_RETENTION_DAYS",
    "WEBHOOK_DISABLE_AFTER_FAILURES",
    "WEBHOOK_MAX_PER_TENANT",
    "WEBHOOK_RETRY_BASE_SECONDS",
    "WEBHOOK_RETRY_HOURS",
    "WEBHOOK_TIMEOUT_SECONDS",
]

# A slot missed by more than this (the service was down) is recorded as skipped, not fired late.
ROUTINE_CATCH_UP_MINUTES = env_int("ROUTINE_CATCH_UP_MINUTES", 10, minimum=0, maximum=10_080)
# How often each background worker looks for due routines: a slot fires within about this long.
ROUTINE_TICK_SECONDS = env_float("ROUTINE_TICK_SECONDS", 1.0, minimum=0.05, maximum=60.0)
ROUTINE_MAX_PER_TENANT = env_int("ROUTINE_MAX_PER_TENANT", 100, minimum=1, maximum=100_000)
# For tests and rehearsals only: a file holding the time (ISO 8601) the scheduler takes as now.
_clock_file = env_optional_str("ROUTINE_CLOCK_FILE")
ROUTINE_CLOCK_FILE = Path(_clock_file) if _clock_file else None
# Firings older than this are deleted, hourly (0 keeps them).
ROUTINE_FIRING_RETENTION_DAYS = env_int(
    "ROUTINE_FIRING_RETENTION_DAYS", 90, minimum=0, maximum=36_500
)

# Deliveries to private, loopback and link-local addresses are refused unless this is set.
WEBHOOK_ALLOW_PRIVATE = env_bool("WEBHOOK_ALLOW_PRIVATE", False)
# Deliveries each background worker attempts at once, in a pool of their own beside indexing's.
WEBHOOK_CONCURRENCY = env_int("WEBHOOK_CONCURRENCY", 8, minimum=1, maximum=256)
# One attempt's bound, from connecting to the last byte of the receiver's answer.
WEBHOOK_TIMEOUT_SECONDS = env_float("WEBHOOK_TIMEOUT_SECONDS", 10.0, minimum=0.1, maximum=120.0)
# Retries: the first after about WEBHOOK_RETRY_BASE_SECONDS, doubling (with jitter, at most an
# hour apart), for WEBHOOK_RETRY_HOURS after the event; then the delivery has failed.
WEBHOOK_RETRY_BASE_SECONDS = env_float(
    "WEBHOOK_RETRY_BASE_SECONDS", 5.0, minimum=0.01, maximum=3600.0
)
WEBHOOK_RETRY_HOURS = env_float("WEBHOOK_RETRY_HOURS", 24.0, minimum=0.0, maximum=720.0)
# A webhook whose deliveries failed this many times in a row is disabled, with the reason.
WEBHOOK_DISABLE_AFTER_FAILURES = env_int(
    "WEBHOOK_DISABLE_AFTER_FAILURES", 10, minimum=1, maximum=100_000
)
WEBHOOK_MAX_PER_TENANT = env_int("WEBHOOK_MAX_PER_TENANT", 10, minimum=1, maximum=1000)
# Ended deliveries (delivered or failed) and their attempts are deleted this long after they
# ended, hourly (0 keeps them); pending ones are never.
WEBHOOK_DELIVERY_RETENTION_DAYS = env_int(
    "WEBHOOK_DELIVERY_RETENTION_DAYS", 30, minimum=0, maximum=36_500
)
