"""Prometheus series of webhook deliveries: each attempt's result, each delivery's end, and how
long after the event the receiver accepted it.

Recorded in memory by the process that recorded the outcome, after its transaction commits (see
``core.metrics`` for how the processes' figures are summed at scrape time): never a database
statement.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

ATTEMPTS = Counter(
    "ironclaw_webhook_attempts",
    "Webhook delivery attempts, by result: success, http_error, timeout, connection_error, "
    "refused.",
    ["result"],
)
DELIVERIES = Counter(
    "ironclaw_webhook_deliveries",
    "Webhook deliveries ended, by result: delivered (a 2xx) or failed (for good).",
    ["result"],
)
DELIVERY_LATENCY = Histogram(
    "ironclaw_webhook_delivery_latency_seconds",
    "From the event to the receiver's 2xx, retries included.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400),
)


def attempt_observe(*, result: str, delivery_ended: str | None, latency: float | None) -> None:
    """Count one attempt and, when it ended its delivery, the delivery (and its latency when
    delivered). Called on commit of the transaction that recorded them."""
    ATTEMPTS.labels(result=result).inc()
    if delivery_ended is not None:
        DELIVERIES.labels(result=delivery_ended).inc()
    if latency is not None:
        DELIVERY_LATENCY.observe(max(0.0, latency))


def delivery_failed_observe() -> None:
    """A delivery failed with no attempt (its webhook was disabled meanwhile)."""
    DELIVERIES.labels(result="failed").inc()
