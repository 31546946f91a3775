"""System checks of settings that are each valid alone but wrong together in `serve`."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Warning, register


@register()
def proxy_header_reaches_the_app(**kwargs: Any) -> list[Warning]:
    """SECURE_PROXY_SSL_HEADER without WEB_TRUSTED_PROXY: the web server drops the header."""
    header = settings.SECURE_PROXY_SSL_HEADER
    if not header or settings.WEB_TRUSTED_PROXY or not header[0].startswith("HTTP_X_FORWARDED_"):
        return []
    return [
        Warning(
            f"SECURE_PROXY_SSL_HEADER names {header[0]}, but `serve` drops X-Forwarded-* headers "
            "from every peer but WEB_TRUSTED_PROXY, which is unset: every request will look like "
            "plain HTTP (with SECURE_SSL_REDIRECT, a redirect loop).",
            hint="Set WEB_TRUSTED_PROXY to the address the reverse proxy connects from.",
            id="ironclaw_site.W001",
        )
    ]
