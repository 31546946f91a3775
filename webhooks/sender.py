"""One delivery attempt over HTTP: resolve, check, connect to the checked address, POST, classify.

The standard library's ``http.client`` is used so the connection goes to the address that was
checked (``addresses``), with TLS verified against the URL's host name (SNI and certificate).
The whole attempt, from resolving to the last byte read, is bounded by one deadline: a watchdog
shuts the socket down when it passes, so a receiver that trickles bytes cannot hold a worker.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit

from webhooks.addresses import address_is_public, parse_address
from webhooks.models import AttemptResult

USER_AGENT = "IronClaw-Webhooks/1.0"
# What is read of an answer (the rest is never read), and what of it is kept for the operator.
MAX_RESPONSE_BYTES = 64 * 1024
EXCERPT_CHARS = 1024
# 307 and 308 to the same scheme, host and port are followed this many times at most.
MAX_REDIRECTS = 3
# Worth another attempt later: the receiver is overloaded, rate limiting or briefly broken.
RETRYABLE_STATUSES = frozenset({408, 429})
GONE = 410


@dataclass(frozen=True)
class SendResult:
    result: AttemptResult
    status_code: int | None = None
    error: str = ""
    response_excerpt: str = ""
    duration_ms: int = 0
    # Worth retrying later (timeouts, connection errors, 408, 429, 5xx).
    retryable: bool = False
    # 410 Gone: the receiver says it will never want deliveries again.
    gone: bool = False


class _Refused(Exception):
    def __init__(self, message: str, status_code: int | None = None):
        super().__init__(message)
        self.status_code = status_code


class _DeadlinePassed(Exception):
    pass


def _getaddrinfo(host: str, port: int, deadline: float) -> list[Any]:
    """``socket.getaddrinfo`` bounded by the deadline: the resolver's own timeouts are longer. On
    a timeout its thread is left to finish by itself; nothing waits for it."""
    answer: list[Any] = []
    failure: list[BaseException] = []

    def resolve() -> None:
        try:
            answer.extend(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError) as error:
            failure.append(error)

    resolver = threading.Thread(target=resolve, name="webhook-resolve", daemon=True)
    resolver.start()
    resolver.join(_remaining(deadline))
    if resolver.is_alive():
        raise _DeadlinePassed()
    if failure:
        raise OSError(f"cannot resolve {host}: {failure[0]}")
    return answer


def _resolve(
    host: str, port: int, *, deadline: float, allow_private: bool
) -> list[tuple[Any, ...]]:
    """Every address ``host`` resolves to; any non-public one refuses the whole attempt (a name
    with one private address among public ones could still be steered to it)."""
    found = _getaddrinfo(host, port, deadline)
    if not allow_private:
        for _family, _type, _proto, _name, sockaddr in found:
            address = parse_address(str(sockaddr[0]))
            if address is None or not address_is_public(address):
                raise _Refused(f"{host} resolves to {sockaddr[0]}, a non-public address")
    return [(family, sockaddr) for family, _type, _proto, _name, sockaddr in found]


class _PinnedConnection(http.client.HTTPConnection):
    """An HTTP(S) connection to an address resolved and checked beforehand, whose ``Host``
    header, SNI and certificate check use the URL's host name."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        addresses: list[tuple[Any, ...]],
        tls: ssl.SSLContext | None,
        deadline: float,
    ):
        super().__init__(host, port, timeout=_remaining(deadline))
        self.default_port = 443 if tls is not None else 80
        self._addresses = addresses
        self._tls = tls
        self._deadline = deadline

    def connect(self) -> None:
        last_error: OSError = OSError("no address")
        for family, sockaddr in self._addresses:
            raw = socket.socket(family, socket.SOCK_STREAM)
            # Set before connecting, so the watchdog can shut a slow handshake down too.
            self.sock = raw
            try:
                raw.settimeout(_remaining(self._deadline))
                raw.connect(sockaddr)
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self._tls is not None:
                    self.sock = self._tls.wrap_socket(raw, server_hostname=self.host)
                return
            except OSError as error:
                raw.close()
                last_error = error
                if time.monotonic() >= self._deadline:
                    break
        raise last_error

    def shut_down(self) -> None:
        if self.sock is not None:
            with suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise _DeadlinePassed()
    return left


def _exchange(
    url: str, body: bytes, headers: dict[str, str], *, deadline: float, allow_private: bool
) -> tuple[int, str | None, bytes]:
    """POST once; the status, the Location header and at most MAX_RESPONSE_BYTES of the body."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = _resolve(host, port, deadline=deadline, allow_private=allow_private)
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    connection = _PinnedConnection(host, port, addresses=addresses, tls=tls, deadline=deadline)
    watchdog = threading.Timer(_remaining(deadline), connection.shut_down)
    watchdog.daemon = True
    watchdog.start()
    try:
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("POST", path, body=body, headers=headers)
        if connection.sock is not None:
            connection.sock.settimeout(_remaining(deadline))
        response = connection.getresponse()
        content = response.read(MAX_RESPONSE_BYTES)
        return response.status, response.getheader("location"), content
    finally:
        watchdog.cancel()
        connection.close()


def _same_origin(first: str, second: str) -> bool:
    a, b = urlsplit(first), urlsplit(second)
    default = {"http": 80, "https": 443}
    return (a.scheme, a.hostname, a.port or default.get(a.scheme)) == (
        b.scheme,
        b.hostname,
        b.port or default.get(b.scheme),
    )


def _post_following(
    url: str, body: bytes, headers: dict[str, str], *, deadline: float, allow_private: bool
) -> tuple[int, bytes]:
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        status, location, content = _exchange(
            current, body, headers, deadline=deadline, allow_private=allow_private
        )
        if not 300 <= status < 400:
            return status, content
        target = urljoin(current, location or "")
        # Only a 307/308 keeps the method and body; another host is never followed, so a
        # receiver cannot bounce a signed request somewhere the check did not see.
        if status not in (307, 308) or not location or not _same_origin(url, target):
            raise _Refused(f"redirect to {target or 'nowhere'} not followed", status)
        current = target
    raise _Refused(f"more than {MAX_REDIRECTS} redirects, the last to {current}", status)


def _unsendable(error: Exception, duration_ms: int) -> SendResult:
    """A URL http.client cannot put in a request (not ASCII, control characters), the
    webhook's or a redirect's: sending again would fail again."""
    return SendResult(
        AttemptResult.REFUSED,
        error=f"the URL cannot be sent: {type(error).__name__}: {error}"[:500],
        duration_ms=duration_ms,
    )


def post_signed(
    *, url: str, body: bytes, headers: dict[str, str], timeout: float, allow_private: bool
) -> SendResult:
    """POST ``body`` with ``headers`` to ``url`` within ``timeout`` seconds, and say how it went.
    Never raises for what the network or the receiver does."""
    started = time.monotonic()
    deadline = started + timeout
    all_headers = {"content-type": "application/json", "user-agent": USER_AGENT, **headers}

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        status, content = _post_following(
            url, body, all_headers, deadline=deadline, allow_private=allow_private
        )
    except _Refused as refused:
        return SendResult(
            AttemptResult.REFUSED,
            status_code=refused.status_code,
            error=str(refused),
            duration_ms=elapsed_ms(),
        )
    except (_DeadlinePassed, TimeoutError) as error:
        return SendResult(
            AttemptResult.TIMEOUT,
            error=f"no answer within {timeout:g} s ({type(error).__name__})",
            duration_ms=elapsed_ms(),
            retryable=True,
        )
    except http.client.InvalidURL as error:
        return _unsendable(error, elapsed_ms())
    except (OSError, http.client.HTTPException) as error:
        # A shut-down socket surfaces as a reset or an incomplete answer: the deadline did it.
        timed_out = time.monotonic() >= deadline
        return SendResult(
            AttemptResult.TIMEOUT if timed_out else AttemptResult.CONNECTION_ERROR,
            error=(f"no answer within {timeout:g} s" if timed_out else "")
            or f"{type(error).__name__}: {error}"[:500],
            duration_ms=elapsed_ms(),
            retryable=True,
        )
    except ValueError as error:
        # After OSError: a certificate that does not verify is both, and a connection error.
        return _unsendable(error, elapsed_ms())
    excerpt = content[: EXCERPT_CHARS * 4].decode("utf-8", errors="replace")[:EXCERPT_CHARS]
    if 200 <= status < 300:
        return SendResult(
            AttemptResult.SUCCESS,
            status_code=status,
            response_excerpt=excerpt,
            duration_ms=elapsed_ms(),
        )
    return SendResult(
        AttemptResult.HTTP_ERROR,
        status_code=status,
        error=f"the receiver answered {status}",
        response_excerpt=excerpt,
        duration_ms=elapsed_ms(),
        retryable=status in RETRYABLE_STATUSES or status >= 500,
        gone=status == GONE,
    )
