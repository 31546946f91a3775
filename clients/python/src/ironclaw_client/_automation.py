"""Routines and webhooks: their calls (as ``_operations`` describes the rest) and the methods
``Client`` and ``AsyncClient`` get from them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ironclaw_client import models
from ironclaw_client._core import API, Call
from ironclaw_client._operations import Pages, compact, new_key

T = TypeVar("T")
Json = dict[str, Any]
DELETED = frozenset({204})


def create_routine(
    name: str,
    cron: str,
    message: str,
    *,
    timezone: str | None,
    channel: str | None,
    scope: str | None,
    enabled: bool | None,
) -> Call[models.Routine]:
    body = compact(
        {
            "name": name,
            "cron": cron,
            "message": message,
            "timezone": timezone,
            "channel": channel,
            "scope": scope,
            "enabled": enabled,
        }
    )
    return Call("POST", f"{API}/routines", idempotent=False, body=body, idempotency_key=new_key())


def routines(*, page_size: int | None) -> Pages[models.Routine]:
    params = compact({"limit": page_size})
    return Pages(Call("GET", f"{API}/routines", idempotent=True, params=params))


def get_routine(routine_id: str) -> Call[models.Routine]:
    return Call("GET", f"{API}/routines/{routine_id}", idempotent=True)


def update_routine(routine_id: str, changes: Json) -> Call[models.Routine]:
    # Setting fields to values is the same however often it is done.
    return Call("PATCH", f"{API}/routines/{routine_id}", idempotent=True, body=changes)


def delete_routine(routine_id: str) -> Call[None]:
    url = f"{API}/routines/{routine_id}"
    return Call("DELETE", url, idempotent=True, expected_empty=DELETED)


def routine_firings(routine_id: str, *, page_size: int | None) -> Pages[models.Firing]:
    params = compact({"limit": page_size})
    url = f"{API}/routines/{routine_id}/firings"
    return Pages(Call("GET", url, idempotent=True, params=params))


def create_webhook(
    url: str, events: Sequence[str], *, description: str | None
) -> Call[models.WebhookCreateOutput]:
    # Under its idempotency key, a repeat answers with the first answer: the same secret.
    body = compact({"url": url, "events": list(events), "description": description})
    return Call("POST", f"{API}/webhooks", idempotent=False, body=body, idempotency_key=new_key())


def webhooks(*, page_size: int | None) -> Pages[models.Webhook]:
    params = compact({"limit": page_size})
    return Pages(Call("GET", f"{API}/webhooks", idempotent=True, params=params))


def get_webhook(webhook_id: str) -> Call[models.Webhook]:
    return Call("GET", f"{API}/webhooks/{webhook_id}", idempotent=True)


def update_webhook(webhook_id: str, changes: Json) -> Call[models.Webhook]:
    return Call("PATCH", f"{API}/webhooks/{webhook_id}", idempotent=True, body=changes)


def delete_webhook(webhook_id: str) -> Call[None]:
    url = f"{API}/webhooks/{webhook_id}"
    return Call("DELETE", url, idempotent=True, expected_empty=DELETED)


def webhook_deliveries(webhook_id: str, *, page_size: int | None) -> Pages[models.Delivery]:
    params = compact({"limit": page_size})
    url = f"{API}/webhooks/{webhook_id}/deliveries"
    return Pages(Call("GET", url, idempotent=True, params=params))


def get_webhook_delivery(webhook_id: str, delivery_id: str) -> Call[models.DeliveryDetail]:
    url = f"{API}/webhooks/{webhook_id}/deliveries/{delivery_id}"
    return Call("GET", url, idempotent=True)


def redeliver_webhook(webhook_id: str, delivery_id: str) -> Call[models.Delivery]:
    # A repeat without the key would send the event once more.
    url = f"{API}/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"
    return Call("POST", url, idempotent=False, idempotency_key=new_key())


OPERATIONS: dict[tuple[str, str], str] = {
    ("GET", "/api/v1/routines"): "routines",
    ("POST", "/api/v1/routines"): "create_routine",
    ("GET", "/api/v1/routines/{routine_id}"): "get_routine",
    ("PATCH", "/api/v1/routines/{routine_id}"): "update_routine",
    ("DELETE", "/api/v1/routines/{routine_id}"): "delete_routine",
    ("GET", "/api/v1/routines/{routine_id}/firings"): "routine_firings",
    ("GET", "/api/v1/webhooks"): "webhooks",
    ("POST", "/api/v1/webhooks"): "create_webhook",
    ("GET", "/api/v1/webhooks/{webhook_id}"): "get_webhook",
    ("PATCH", "/api/v1/webhooks/{webhook_id}"): "update_webhook",
    ("DELETE", "/api/v1/webhooks/{webhook_id}"): "delete_webhook",
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries"): "webhook_deliveries",
    ("GET", "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}"): "get_webhook_delivery",
    (
        "POST",
        "/api/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    ): "redeliver_webhook",
}


class AutomationMethods:
    """``Client``'s routines and webhooks."""

    if TYPE_CHECKING:  # the client's own

        def _send(self, call: Call[T]) -> T: ...

        def _items(self, stream: Pages[T]) -> Iterator[T]: ...

    def create_routine(
        self,
        name: str,
        cron: str,
        message: str,
        *,
        timezone: str | None = None,
        channel: str | None = None,
        scope: str | None = None,
        enabled: bool | None = None,
    ) -> models.Routine:
        """A routine: ``message`` at each slot of ``cron`` in ``timezone`` (UTC by default),
        into ``channel``'s conversation, or with no channel as a thread of its own."""
        return self._send(
            create_routine(
                name,
                cron,
                message,
                timezone=timezone,
                channel=channel,
                scope=scope,
                enabled=enabled,
            )
        )

    def routines(self, *, page_size: int | None = None) -> Iterator[models.Routine]:
        """Every routine of the tenant, across pages."""
        return self._items(routines(page_size=page_size))

    def get_routine(self, routine_id: str) -> models.Routine:
        return self._send(get_routine(routine_id))

    def update_routine(self, routine_id: str, **changes: Any) -> models.Routine:
        """Change fields (``cron=``, ``enabled=False``, ...); the next slot is computed again."""
        return self._send(update_routine(routine_id, changes))

    def delete_routine(self, routine_id: str) -> None:
        """Delete it and its firings; a retry after one that took effect raises ``NotFound``."""
        return self._send(delete_routine(routine_id))

    def routine_firings(
        self, routine_id: str, *, page_size: int | None = None
    ) -> Iterator[models.Firing]:
        """What each slot did, newest first, with its thread's state and outcome."""
        return self._items(routine_firings(routine_id, page_size=page_size))

    def create_webhook(
        self, url: str, events: Sequence[str], *, description: str | None = None
    ) -> models.WebhookCreateOutput:
        """A webhook; the answer's ``secret`` (for ``verify_webhook``) is shown only here."""
        return self._send(create_webhook(url, events, description=description))

    def webhooks(self, *, page_size: int | None = None) -> Iterator[models.Webhook]:
        return self._items(webhooks(page_size=page_size))

    def get_webhook(self, webhook_id: str) -> models.Webhook:
        return self._send(get_webhook(webhook_id))

    def update_webhook(self, webhook_id: str, **changes: Any) -> models.Webhook:
        """Change ``url``, ``events``, ``description``; ``enabled=True`` re-enables it."""
        return self._send(update_webhook(webhook_id, changes))

    def delete_webhook(self, webhook_id: str) -> None:
        return self._send(delete_webhook(webhook_id))

    def webhook_deliveries(
        self, webhook_id: str, *, page_size: int | None = None
    ) -> Iterator[models.Delivery]:
        """The webhook's deliveries, newest first."""
        return self._items(webhook_deliveries(webhook_id, page_size=page_size))

    def get_webhook_delivery(self, webhook_id: str, delivery_id: str) -> models.DeliveryDetail:
        """One delivery with its attempts."""
        return self._send(get_webhook_delivery(webhook_id, delivery_id))

    def redeliver_webhook(self, webhook_id: str, delivery_id: str) -> models.Delivery:
        """Send a delivered or failed delivery again (same ``webhook-id``)."""
        return self._send(redeliver_webhook(webhook_id, delivery_id))


class AsyncAutomationMethods:
    """``AsyncClient``'s routines and webhooks: the same methods, awaited."""

    if TYPE_CHECKING:  # the client's own

        async def _send(self, call: Call[T]) -> T: ...

        def _items(self, stream: Pages[T]) -> AsyncIterator[T]: ...

    async def create_routine(
        self,
        name: str,
        cron: str,
        message: str,
        *,
        timezone: str | None = None,
        channel: str | None = None,
        scope: str | None = None,
        enabled: bool | None = None,
    ) -> models.Routine:
        return await self._send(
            create_routine(
                name,
                cron,
                message,
                timezone=timezone,
                channel=channel,
                scope=scope,
                enabled=enabled,
            )
        )

    def routines(self, *, page_size: int | None = None) -> AsyncIterator[models.Routine]:
        return self._items(routines(page_size=page_size))

    async def get_routine(self, routine_id: str) -> models.Routine:
        return await self._send(get_routine(routine_id))

    async def update_routine(self, routine_id: str, **changes: Any) -> models.Routine:
        return await self._send(update_routine(routine_id, changes))

    async def delete_routine(self, routine_id: str) -> None:
        return await self._send(delete_routine(routine_id))

    def routine_firings(
        self, routine_id: str, *, page_size: int | None = None
    ) -> AsyncIterator[models.Firing]:
        return self._items(routine_firings(routine_id, page_size=page_size))

    async def create_webhook(
        self, url: str, events: Sequence[str], *, description: str | None = None
    ) -> models.WebhookCreateOutput:
        return await self._send(create_webhook(url, events, description=description))

    def webhooks(self, *, page_size: int | None = None) -> AsyncIterator[models.Webhook]:
        return self._items(webhooks(page_size=page_size))

    async def get_webhook(self, webhook_id: str) -> models.Webhook:
        return await self._send(get_webhook(webhook_id))

    async def update_webhook(self, webhook_id: str, **changes: Any) -> models.Webhook:
        return await self._send(update_webhook(webhook_id, changes))

    async def delete_webhook(self, webhook_id: str) -> None:
        return await self._send(delete_webhook(webhook_id))

    def webhook_deliveries(
        self, webhook_id: str, *, page_size: int | None = None
    ) -> AsyncIterator[models.Delivery]:
        return self._items(webhook_deliveries(webhook_id, page_size=page_size))

    async def get_webhook_delivery(
        self, webhook_id: str, delivery_id: str
    ) -> models.DeliveryDetail:
        return await self._send(get_webhook_delivery(webhook_id, delivery_id))

    async def redeliver_webhook(self, webhook_id: str, delivery_id: str) -> models.Delivery:
        return await self._send(redeliver_webhook(webhook_id, delivery_id))
