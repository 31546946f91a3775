"""Every write of the webhooks app.

Locking policy: a delivery's attempts run one at a time (its jobs share the Procrastinate lock
``webhook-delivery-<id>``, and a queueing lock of the same name keeps at most one waiting). No
transaction is open while a receiver is called; the attempt's outcome is then recorded in one
short transaction that locks the webhook, then the delivery (parents before children, as the
delete of a webhook, which cascades to its deliveries, does).
"""

from webhooks.services.delivery import (
    DELIVER_TASK,
    DeliveryOutcome,
    retry_delay,
    webhook_delivery_attempt,
    webhook_delivery_redeliver,
)
from webhooks.services.events import webhook_event_emit
from webhooks.services.hygiene import (
    STRANDED_AFTER,
    webhook_deliveries_prune,
    webhook_deliveries_requeue_stranded,
)
from webhooks.services.webhooks import (
    UNSET,
    CreatedWebhook,
    webhook_create,
    webhook_delete,
    webhook_update,
)

__all__ = [
    "DELIVER_TASK",
    "STRANDED_AFTER",
    "UNSET",
    "CreatedWebhook",
    "DeliveryOutcome",
    "retry_delay",
    "webhook_create",
    "webhook_delete",
    "webhook_deliveries_prune",
    "webhook_deliveries_requeue_stranded",
    "webhook_delivery_attempt",
    "webhook_delivery_redeliver",
    "webhook_event_emit",
    "webhook_update",
]
