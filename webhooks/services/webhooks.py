"""A tenant's webhooks: create (the secret is returned this once), change, delete."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from django.conf import settings
from django.db import connection, transaction

from core.errors import InvalidInput
from webhooks.addresses import host_is_private_literal
from webhooks.errors import WebhookNotFound
from webhooks.models import Webhook, WebhookEvent
from webhooks.signing import secret_generate

MAX_URL_LENGTH = 2048


class _Unset(Enum):
    UNSET = "unset"


# A field webhook_update leaves as it is.
UNSET: Final = _Unset.UNSET


@dataclass(frozen=True)
class CreatedWebhook:
    webhook: Webhook
    # The signing secret, shown to the tenant in the creation's answer only.
    secret: str


def _invalid(field: str, message: str) -> InvalidInput:
    return InvalidInput(f"Invalid input: {field}.", details={field: [message]})


def checked_url(url: str) -> str:
    """``url`` if a webhook may post to it, else a 400 naming ``url``."""
    if len(url) > MAX_URL_LENGTH:
        raise _invalid("url", f"Ensure this field has no more than {MAX_URL_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        # Reading the port raises ValueError when it is not a number from 0 to 65535.
        port_valid = parts.port != 0
    except ValueError:
        port_valid = False
    if not port_valid:
        raise _invalid("url", "Enter a valid URL (its port is not one).")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _invalid("url", "Enter an http or https URL with a host.")
    if parts.username is not None or parts.password is not None:
        raise _invalid("url", "A webhook URL may not carry a user name or password.")
    if any(character.isspace() for character in url):
        raise _invalid("url", "Enter a valid URL.")
    # HTTP's request line and Host header are ASCII: a URL that is not could never be sent.
    if not url.isascii() or not url.isprintable():
        raise _invalid(
            "url",
            "Enter the URL in ASCII: a host name in its IDNA form (xn--...), other characters "
            "percent-encoded.",
        )
    if not settings.WEBHOOK_ALLOW_PRIVATE and host_is_private_literal(parts.hostname):
        raise _invalid(
            "url",
            f"{parts.hostname} is a private, loopback or otherwise non-public address "
            "(WEBHOOK_ALLOW_PRIVATE is off).",
        )
    return url


def checked_events(events: Sequence[str]) -> list[str]:
    """``events`` if each is known and none repeats, else a 400 naming ``events``."""
    if not events:
        raise _invalid("events", "Name at least one event.")
    unknown = [event for event in events if event not in WebhookEvent.values]
    if unknown:
        known = ", ".join(WebhookEvent.values)
        raise _invalid("events", f"Unknown event {unknown[0]!r}; known: {known}.")
    if len(set(events)) != len(events):
        raise _invalid("events", "An event is listed twice.")
    return list(events)


def webhook_create(
    *, user_id: str, url: str, events: Sequence[str], description: str = ""
) -> CreatedWebhook:
    """Create a webhook with a new signing secret. At most WEBHOOK_MAX_PER_TENANT per tenant: a
    transaction-scoped advisory lock per tenant serialises creates, so two at once cannot both
    pass the count."""
    url = checked_url(url)
    events = checked_events(events)
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", [f"webhooks:{user_id}"]
            )
        if Webhook.objects.filter(user_id=user_id).count() >= settings.WEBHOOK_MAX_PER_TENANT:
            raise _invalid(
                "url",
                f"This tenant has {settings.WEBHOOK_MAX_PER_TENANT} webhooks already, the most "
                "WEBHOOK_MAX_PER_TENANT allows; delete one first.",
            )
        secret = secret_generate()
        webhook = Webhook.objects.create(
            user_id=user_id, url=url, events=events, description=description, secret=secret
        )
    return CreatedWebhook(webhook=webhook, secret=secret)


def webhook_update(
    *,
    user_id: str,
    webhook_id: uuid.UUID,
    url: str | Literal[_Unset.UNSET] = UNSET,
    events: Sequence[str] | Literal[_Unset.UNSET] = UNSET,
    description: str | Literal[_Unset.UNSET] = UNSET,
    enabled: bool | Literal[_Unset.UNSET] = UNSET,
) -> Webhook:
    """Change what is given, under the webhook's row lock. Enabling it clears the failure counts,
    the receiver's pause and the reason it was disabled, so failures are counted from zero; a
    new URL ends the pause too."""
    changes: dict[str, Any] = {}
    if url is not UNSET:
        changes["url"] = checked_url(url)
        # Another receiver: the old one's failures say nothing about it.
        changes |= {"failing_attempts": 0, "paused_until": None}
    if events is not UNSET:
        changes["events"] = checked_events(events)
    if description is not UNSET:
        changes["description"] = description
    if enabled is not UNSET:
        changes["enabled"] = enabled
        # Enabled again: counted from zero. Disabled by the tenant: no service reason applies.
        changes["disabled_reason"] = ""
        if enabled:
            changes |= {"consecutive_failures": 0, "failing_attempts": 0, "paused_until": None}
    with transaction.atomic():
        # The row lock orders this change with a delivery recording its outcome (which counts a
        # failure or disables the webhook under the same lock): neither overwrites the other.
        webhook = (
            Webhook.objects.select_for_update(no_key=True, of=("self",))
            .filter(user_id=user_id, pk=webhook_id)
            .first()
        )
        if webhook is None:
            raise WebhookNotFound()
        for field, value in changes.items():
            setattr(webhook, field, value)
        if changes:
            webhook.save(update_fields=[*changes, "updated_at"])
    return webhook


def webhook_delete(*, user_id: str, webhook_id: uuid.UUID) -> None:
    """Delete a webhook; the database deletes its deliveries and their attempts (ON DELETE
    CASCADE). A job still queued for one of them finds nothing and ends."""
    deleted, _ = Webhook.objects.filter(user_id=user_id, pk=webhook_id).delete()
    if not deleted:
        raise WebhookNotFound()
