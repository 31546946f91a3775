"""Which hosts a webhook may reach with WEBHOOK_ALLOW_PRIVATE off."""

from __future__ import annotations

import pytest

from webhooks.addresses import address_is_public, host_is_private_literal, parse_address


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "10.0.0.8",
        "172.16.4.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "240.0.0.1",
        "::1",
        "::",
        "fe80::1%eth0",
        "fc00::1",
        "ff02::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
        # 6to4 of 10.0.0.1, Teredo with client 192.168.1.1 (stored inverted), site-local.
        "2002:a00:1::1",
        "2001:0:4136:e378:8000:63bf:3f57:fefe",
        "fec0::1",
    ],
)
def test_non_public_addresses_are_refused(text: str) -> None:
    address = parse_address(text)

    assert address is not None
    assert not address_is_public(address)


@pytest.mark.parametrize("text", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"])
def test_public_addresses_pass(text: str) -> None:
    address = parse_address(text)

    assert address is not None
    assert address_is_public(address)


@pytest.mark.parametrize(
    ("host", "refused"),
    [
        ("localhost", True),
        ("LOCALHOST.", True),
        ("api.localhost", True),
        ("[::1]", True),
        ("10.1.2.3", True),
        ("hooks.example.com", False),
        ("1.1.1.1", False),
    ],
)
def test_a_literal_host_is_judged_before_any_resolution(host: str, refused: bool) -> None:
    assert host_is_private_literal(host) is refused
