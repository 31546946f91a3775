"""Verifying the webhooks the service sends, per the Standard Webhooks specification.

Every delivery carries ``webhook-id`` (the same on each retry of one event: keep the ids you have
handled and ignore a repeat), ``webhook-timestamp`` (unix seconds of the attempt) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`` keyed by the
secret the API returned when the webhook was created (``whsec_<base64>``)::

    event = verify_webhook(secret, request.headers, request.body)

Pass the body exactly as received (bytes): re-encoded JSON would not verify.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from ironclaw_client.errors import IronclawError

SECRET_PREFIX = "whsec_"
# How far a delivery's timestamp may be from the receiver's clock: an older one is a replay.
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerificationError(IronclawError):
    """The delivery is not from the holder of the secret, or is too old (or too new) to trust."""


def _key(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        key = secret
    else:
        encoded = secret.removeprefix(SECRET_PREFIX)
        try:
            key = base64.b64decode(encoded + "==", validate=False)
        except (binascii.Error, ValueError) as error:
            raise WebhookVerificationError("the webhook secret is not base64") from error
    if not key:
        raise WebhookVerificationError("the webhook secret is empty")
    return key


def sign_webhook(secret: str | bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value the service sends for ``body`` (``v1,<base64>``)."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify_webhook(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes | str,
    *,
    tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> Any:
    """The delivery's JSON body (``{"type", "timestamp", "data"}``) once its signature and
    timestamp check out; raises ``WebhookVerificationError`` otherwise."""
    lowered = {name.lower(): value for name, value in headers.items()}
    webhook_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (webhook_id and timestamp_text and signatures):
        raise WebhookVerificationError(
            "missing webhook-id, webhook-timestamp or webhook-signature header"
        )
    try:
        timestamp = int(timestamp_text)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not unix seconds") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_seconds:
        raise WebhookVerificationError(
            f"webhook-timestamp is {int(current - timestamp)} s from now, more than "
            f"{tolerance_seconds} s"
        )
    raw = body.encode() if isinstance(body, str) else bytes(body)
    expected = sign_webhook(secret, webhook_id, timestamp, raw)
    # Several space-separated signatures are allowed (a receiver mid-way through a secret
    # rotation); any one that matches will do.
    if not any(hmac.compare_digest(expected, given) for given in signatures.split(" ")):
        raise WebhookVerificationError("no signature matches the secret")
    return json.loads(raw)
