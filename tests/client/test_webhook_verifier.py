"""The client's webhook verifier agrees with the Standard Webhooks reference package both ways,
and refuses what a forger or a replay would send."""

from __future__ import annotations

import base64
import json
import secrets
import time
from datetime import UTC, datetime

import pytest
from ironclaw_client import WebhookVerificationError, sign_webhook, verify_webhook
from standardwebhooks.webhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError as ReferenceError

SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
BODY = json.dumps({"type": "thread.completed", "data": {"thread_id": "t-1"}}).encode()


def _headers(signature: str, *, webhook_id: str = "d-1", timestamp: int | None = None) -> dict:
    sent = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(sent),
        "webhook-signature": signature,
    }


def test_a_delivery_signed_by_the_reference_package_verifies() -> None:
    now = int(time.time())
    signature = Webhook(SECRET).sign("d-1", datetime.fromtimestamp(now, UTC), BODY)

    event = verify_webhook(SECRET, _headers(signature, timestamp=now), BODY)

    assert event == json.loads(BODY)


def test_our_signature_verifies_with_the_reference_package() -> None:
    now = int(time.time())
    headers = {
        "Webhook-Id": "d-1",
        "Webhook-Timestamp": str(now),
        "Webhook-Signature": sign_webhook(SECRET, "d-1", now, BODY),
    }

    assert Webhook(SECRET).verify(BODY, headers) == json.loads(BODY)


def test_one_matching_signature_among_several_is_enough() -> None:
    now = int(time.time())
    good = sign_webhook(SECRET, "d-1", now, BODY)

    event = verify_webhook(SECRET, _headers(f"v1,bm90aXQ= {good}", timestamp=now), BODY)

    assert event["type"] == "thread.completed"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"body": BODY.replace(b"t-1", b"t-2")}, "no signature matches"),
        ({"webhook_id": "d-2"}, "no signature matches"),
        ({"secret": "whsec_" + base64.b64encode(b"x" * 32).decode()}, "no signature matches"),
        ({"age": 600}, "more than 300 s"),
        ({"age": -600}, "more than 300 s"),
    ],
)
def test_a_forged_changed_or_stale_delivery_is_refused(change: dict, message: str) -> None:
    timestamp = int(time.time()) - change.get("age", 0)
    signature = sign_webhook(SECRET, "d-1", timestamp, BODY)
    headers = _headers(signature, webhook_id=change.get("webhook_id", "d-1"), timestamp=timestamp)

    with pytest.raises(WebhookVerificationError, match=message):
        verify_webhook(change.get("secret", SECRET), headers, change.get("body", BODY))
    with pytest.raises(ReferenceError):
        Webhook(change.get("secret", SECRET)).verify(change.get("body", BODY), headers)


def test_missing_headers_are_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="missing webhook-id"):
        verify_webhook(SECRET, {"webhook-id": "d-1"}, BODY)
