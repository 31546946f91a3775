"""Standard Webhooks signatures: what a receiver checks with the ``standardwebhooks`` package.

The signed content is ``"{webhook-id}.{webhook-timestamp}.{body}"``; the key is the secret's
bytes (base64 after the ``whsec_`` prefix); the header is ``v1,<base64 HMAC-SHA256>``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32


def secret_generate() -> str:
    """A new signing secret: ``whsec_`` and the base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def payload_body(payload: Any) -> bytes:
    """The bytes sent and signed: the stored payload as compact JSON, the same on every attempt
    (jsonb gives its keys back in one order)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def signature(*, secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one attempt."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(*, secret: str, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(
            secret=secret, message_id=message_id, timestamp=timestamp, body=body
        ),
    }
