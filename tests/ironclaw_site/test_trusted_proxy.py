"""Behind a TLS proxy: the web server takes the scheme and client address from WEB_TRUSTED_PROXY
only, so HTTPS requests are served (no redirect loop), a client cannot claim HTTPS by itself, and
/metrics sees the proxy's clients as the remote clients they are."""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from urllib.parse import urlsplit

import pytest
from django.db import connection

from tests.support.servers import app_server, database_url

pytestmark = pytest.mark.django_db(transaction=True)

HTTPS_ONLY = {
    "SECURE_SSL_REDIRECT": "true",
    "SECURE_PROXY_SSL_HEADER": "HTTP_X_FORWARDED_PROTO,https",
    "METRICS_TOKEN": "metrics-token",
}


def _get(base_url: str, path: str, headers: Mapping[str, str]) -> tuple[int, str]:
    """One GET that does not follow redirects: the status and the Location header."""
    address = urlsplit(base_url)
    conn = http.client.HTTPConnection(address.hostname or "", address.port, timeout=10)
    try:
        conn.request("GET", path, headers=dict(headers))
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("Location", "")
    finally:
        conn.close()


def test_behind_the_trusted_proxy_https_is_served_and_its_clients_are_remote() -> None:
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        **HTTPS_ONLY,
        "WEB_TRUSTED_PROXY": "127.0.0.1",
    }
    with app_server(env) as base:
        over_tls = _get(base, "/admin/login/", {"X-Forwarded-Proto": "https"})
        plain = _get(base, "/admin/login/", {})
        forwarded_scrape = _get(
            base, "/metrics", {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9"}
        )
        local_scrape = _get(base, "/metrics", {"X-Forwarded-Proto": "https"})

    assert over_tls[0] == 200
    assert plain[0] == 301
    assert plain[1].startswith("https://")
    # The proxy's client is the request's address: no loopback pass for it.
    assert forwarded_scrape[0] == 403
    assert local_scrape[0] == 200


def test_without_a_trusted_proxy_a_client_cannot_claim_https() -> None:
    env = {"DATABASE_URL": database_url(connection.settings_dict), **HTTPS_ONLY}
    with app_server(env) as base:
        claimed = _get(base, "/admin/login/", {"X-Forwarded-Proto": "https"})

    assert claimed[0] == 301
    assert claimed[1].startswith("https://")
