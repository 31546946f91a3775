"""HTTPS receivers: the certificate is verified against the URL's host name, though the
connection goes to the address resolved and checked beforehand."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pytest_django.fixtures import Settings as SettingsWrapper

from tests.webhooks.factories import WebhookFactory
from tests.webhooks.helpers import delivery_emitted
from tests.webhooks.receiver import Receiver, receiver_running
from webhooks.models import WebhookAttempt
from webhooks.services import DeliveryOutcome, webhook_delivery_attempt

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]


@pytest.fixture
def certificate(tmp_path: Path) -> Path:
    """A self-signed certificate (and its key, beside it) for the name localhost."""
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem"),
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return tmp_path / "cert.pem"


@pytest.fixture
def tls_receiver(certificate: Path, settings: SettingsWrapper) -> Iterator[Receiver]:
    settings.WEBHOOK_ALLOW_PRIVATE = True
    with receiver_running() as receiver:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(certificate, certificate.parent / "key.pem")
        receiver.server.socket = context.wrap_socket(receiver.server.socket, server_side=True)
        yield receiver


def test_a_certificate_for_the_urls_host_from_a_trusted_issuer_is_accepted(
    tls_receiver: Receiver, certificate: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    WebhookFactory.create(url=f"https://localhost:{tls_receiver.port}/hook")
    delivery = delivery_emitted()

    outcome = webhook_delivery_attempt(delivery_id=delivery.pk)

    assert outcome == DeliveryOutcome.DELIVERED
    assert len(tls_receiver.requests) == 1


def test_a_certificate_not_for_the_urls_host_is_a_connection_error(
    tls_receiver: Receiver, certificate: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate))
    # The same server by address: the certificate names localhost, not 127.0.0.1.
    WebhookFactory.create(url=f"https://127.0.0.1:{tls_receiver.port}/hook")
    delivery = delivery_emitted()

    outcome = webhook_delivery_attempt(delivery_id=delivery.pk)

    assert outcome == DeliveryOutcome.RETRYING
    attempt = WebhookAttempt.objects.get(user_id="alice", delivery=delivery)
    assert attempt.result == "connection_error"
    assert "CERTIFICATE_VERIFY_FAILED" in attempt.error
    assert tls_receiver.requests == []


def test_an_untrusted_certificate_is_a_connection_error(tls_receiver: Receiver) -> None:
    WebhookFactory.create(url=f"https://localhost:{tls_receiver.port}/hook")
    delivery = delivery_emitted()

    webhook_delivery_attempt(delivery_id=delivery.pk)

    attempt = WebhookAttempt.objects.get(user_id="alice", delivery=delivery)
    assert attempt.result == "connection_error"
    assert "CERTIFICATE_VERIFY_FAILED" in attempt.error
