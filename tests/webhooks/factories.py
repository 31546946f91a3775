from __future__ import annotations

import factory
from factory.django import DjangoModelFactory

from webhooks.models import Webhook
from webhooks.signing import secret_generate


class WebhookFactory(DjangoModelFactory[Webhook]):
    """A webhook written directly, past the API's URL checks (loopback receivers)."""

    class Meta:
        model = Webhook

    user_id = "alice"
    url = "http://127.0.0.1:9/hook"
    events = factory.LazyFunction(lambda: ["thread.completed"])
    secret = factory.LazyFunction(secret_generate)
