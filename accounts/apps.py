from __future__ import annotations

from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "API keys"

    def ready(self) -> None:
        # Registers the OpenAPI security scheme for bearer keys with drf-spectacular.
        from accounts import schema  # noqa: F401
