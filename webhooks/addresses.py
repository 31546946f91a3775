"""Which addresses a webhook may reach: public ones only, unless ``WEBHOOK_ALLOW_PRIVATE``.

A receiver URL is checked twice: its host as written when the webhook is saved (a literal private
address or ``localhost`` is a 400), and every address its name resolves to before each attempt,
which then connects to that very address, so a name that changes its answer between the check
and the connection (DNS rebinding) cannot point the request inward.
"""

from __future__ import annotations

import ipaddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def address_is_public(address: IPAddress) -> bool:
    """False for private, loopback, link-local, multicast, reserved, unspecified and every other
    non-global address, including IPv4 ones carried in IPv6 (mapped, 6to4, Teredo)."""
    if isinstance(address, ipaddress.IPv6Address):
        # An IPv4 address carried inside IPv6 (mapped, 6to4, Teredo's client) is judged as
        # itself, and the site-local range (deprecated, still routed inward by some) is refused.
        if address.is_site_local:
            return False
        teredo = address.teredo
        carried = [address.ipv4_mapped, address.sixtofour, teredo[1] if teredo else None]
        if any(inner is not None and not address_is_public(inner) for inner in carried):
            return False
        if address.ipv4_mapped is not None:
            address = address.ipv4_mapped
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def parse_address(text: str) -> IPAddress | None:
    """``text`` as an IP address (an IPv6 zone such as ``%eth0`` dropped), or None for a name."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def host_is_private_literal(host: str) -> bool:
    """The host as written is a non-public IP address or a loopback name: refused at once,
    before any resolution (names that resolve to private addresses are refused when sent)."""
    name = host.strip("[]").rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = parse_address(name)
    return address is not None and not address_is_public(address)
