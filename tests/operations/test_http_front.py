"""The HTTP front as hostile and unusual clients meet it: raw sockets against a real server."""

from __future__ import annotations

import http.client
import io
import json
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from django.db import connection

from accounts.services import CreatedApiKey
from conversations.models import ConversationEntry
from tests.support.metrics import metric_sample
from tests.support.servers import app_server, database_url, http_request
from workspace.models import Document
from workspace.paths import MAX_PATH_BYTES

REQUEST_TIMEOUT = 3


@dataclass
class Front:
    base_url: str
    port: int
    log_file: Path


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: Any


@pytest.fixture(scope="module")
def front(
    django_db_setup: None, django_db_blocker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Front]:
    log_file = tmp_path_factory.mktemp("front") / "server.log"
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "DATABASE_POOL_SIZE": "4",
        "WEB_REQUEST_TIMEOUT": str(REQUEST_TIMEOUT),
    }
    with app_server(env, threads=4, log_file=log_file) as base_url:
        port = urlsplit(base_url).port
        assert port is not None
        yield Front(base_url, port, log_file)


def connect(front: Front) -> socket.socket:
    return socket.create_connection(("127.0.0.1", front.port), timeout=10)


def read_response(sock: socket.socket, *, timeout: float = 10) -> RawResponse:
    sock.settimeout(timeout)
    response = http.client.HTTPResponse(sock)
    response.begin()
    raw = response.read()
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw.decode(errors="replace")
    return RawResponse(response.status, dict(response.getheaders()), body)


def exchange(front: Front, request: bytes) -> RawResponse:
    with connect(front) as sock:
        sock.sendall(request)
        return read_response(sock)


def request_bytes(
    method: str, target: str, headers: Mapping[str, bytes | str] | None = None, body: bytes = b""
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    for name, value in (headers or {}).items():
        lines.append(
            name.encode() + b": " + (value if isinstance(value, bytes) else value.encode())
        )
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def assert_json_error(response: RawResponse, status: int, code: str) -> None:
    assert response.status == status, response.body
    assert response.headers["Content-Type"] == "application/json"
    assert response.body["error"]["code"] == code
    assert response.body["error"]["message"]
    assert response.body["error"]["details"] == {}


def test_twenty_slow_bodies_leave_healthz_answering_and_each_gets_a_json_408(
    front: Front,
) -> None:
    slow = [connect(front) for _ in range(20)]
    for sock in slow:
        sock.sendall(
            request_bytes(
                "POST",
                "/api/v1/messages",
                {"Content-Type": "application/json", "Content-Length": "1000"},
                b"{",
            )
        )
    healthz = []
    started = time.monotonic()

    # Every slow client keeps trickling (so no idle timeout saves the server) while /healthz is
    # asked, on a server with 4 request threads.
    while time.monotonic() - started < REQUEST_TIMEOUT - 1:
        for sock in slow:
            sock.sendall(b" ")
        healthz.append(http_request(f"{front.base_url}/healthz", timeout=2))
        time.sleep(0.2)
    answers = [read_response(sock, timeout=REQUEST_TIMEOUT + 5) for sock in slow]
    for sock in slow:
        sock.close()

    assert len(healthz) >= 3
    assert all(result.status == 200 and result.elapsed < 1 for result in healthz)
    for answer in answers:
        assert_json_error(answer, 408, "request_timeout")


@pytest.mark.django_db(transaction=True)
def test_chunked_json_body_is_read_like_one_with_a_content_length(
    front: Front, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    key = make_api_key("alice").raw_key
    payload = json.dumps({"channel": "web", "content": "hello in chunks"}).encode()
    chunks = [payload[:10], payload[10:25], payload[25:]]
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"

    response = exchange(
        front,
        request_bytes(
            "POST",
            "/api/v1/messages",
            {
                "Authorization": f"Bearer {key}",
                "Content-Type": "application/json",
                "Transfer-Encoding": "chunked",
            },
            body,
        ),
    )

    assert response.status == 202, response.body
    assert ConversationEntry.objects.filter(content="hello in chunks", sender="user").count() == 1


def test_malformed_chunked_body_is_a_json_400(front: Front) -> None:
    response = exchange(
        front,
        request_bytes(
            "POST",
            "/api/v1/messages",
            {"Transfer-Encoding": "chunked", "Content-Type": "application/json"},
            b"zz\r\nnot hex\r\n0\r\n\r\n",
        ),
    )

    assert_json_error(response, 400, "bad_request")


@pytest.mark.django_db(transaction=True)
def test_utf8_user_id_reaches_its_own_tenant(
    front: Front, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    key = make_api_key(service=True).raw_key

    response = exchange(
        front,
        request_bytes(
            "GET",
            "/api/v1/me",
            {"Authorization": f"Bearer {key}", "X-User-Id": "josé".encode()},
        ),
    )

    assert response.status == 200, response.body
    assert response.body["user_id"] == "josé"


@pytest.mark.django_db(transaction=True)
def test_user_id_that_is_not_utf8_is_a_400_saying_to_send_utf8(
    front: Front, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    key = make_api_key(service=True).raw_key

    response = exchange(
        front,
        request_bytes(
            "GET",
            "/api/v1/me",
            {"Authorization": f"Bearer {key}", "X-User-Id": b"jos\xe9"},
        ),
    )

    assert response.status == 400, response.body
    assert response.body["error"]["code"] == "invalid_user_id"
    assert "X-User-Id" in response.body["error"]["message"]
    assert "UTF-8" in response.body["error"]["message"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("service", [True, False], ids=["service-key", "tenant-key"])
def test_two_user_id_headers_are_a_400_naming_the_header(
    front: Front, make_api_key: Callable[..., CreatedApiKey], service: bool
) -> None:
    key = make_api_key("alice", service=service).raw_key
    # The web server joins repeated headers with ", " (RFC 9110 5.3): "bob, alice" reaches Django.
    request = request_bytes(
        "GET", "/api/v1/me", {"Authorization": f"Bearer {key}", "X-User-Id": "bob"}
    ).replace(b"X-User-Id: bob\r\n", b"X-User-Id: bob\r\nX-User-Id: alice\r\n")

    response = exchange(front, request)

    assert response.status == 400, response.body
    assert response.body["error"]["code"] == "invalid_user_id"
    assert "X-User-Id" in response.body["error"]["message"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("character", ["文", "😀", "é"], ids=["cjk", "emoji", "latin"])
def test_longest_workspace_path_of_any_script_fits_the_request_line(
    front: Front, make_api_key: Callable[..., CreatedApiKey], character: str
) -> None:
    key = make_api_key("alice").raw_key
    path = character * (MAX_PATH_BYTES // len(character.encode()))
    target = f"/api/v1/workspace/documents/{quote(path)}/versions/1/restore?x=1"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = json.dumps({"content": "long"}).encode()

    written = exchange(
        front,
        request_bytes(
            "PUT",
            f"/api/v1/workspace/documents/{quote(path)}",
            {**headers, "Content-Length": str(len(body))},
            body,
        ),
    )
    restore = exchange(front, request_bytes("POST", target, headers))

    assert len(target) > 4 * 1024
    assert written.status == 200, written.body
    assert written.body["path"] == path
    assert restore.status == 404
    assert restore.body["error"]["code"] == "version_not_found"


class _Recorded:
    """Bytes already read from a socket, for http.client to parse as if it read them."""

    def __init__(self, data: bytes):
        self.data = data

    def makefile(self, mode: str) -> io.BytesIO:
        return io.BytesIO(self.data)


def head_then_get(
    front: Front, target: str, headers: Mapping[str, str] | None = None
) -> tuple[RawResponse, bytes]:
    """HEAD then GET ``target`` on one keep-alive connection, the GET sent only once the HEAD's
    headers have arrived; the HEAD's status and headers, and every byte the server sent after
    them (the GET's response, nothing before it)."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    with connect(front) as sock:
        sock.sendall(f"HEAD {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed after {received!r}"
            received += chunk
        head_block, rest = received.split(b"\r\n\r\n", 1)
        sock.sendall(
            f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{extra}\r\n".encode()
        )
        while chunk := sock.recv(65536):
            rest += chunk
    head = http.client.HTTPResponse(_Recorded(head_block + b"\r\n\r\n"), method="HEAD")  # type: ignore[arg-type]
    head.begin()
    return RawResponse(head.status, dict(head.getheaders()), None), rest


def parse_response(data: bytes) -> RawResponse:
    response = http.client.HTTPResponse(_Recorded(data))  # type: ignore[arg-type]
    response.begin()
    return RawResponse(response.status, dict(response.getheaders()), json.loads(response.read()))


def test_head_answers_headers_only_so_the_next_request_on_the_connection_is_read_right(
    front: Front,
) -> None:
    head, after_head = head_then_get(front, "/healthz")

    assert after_head.startswith(b"HTTP/1.1 200 OK\r\n"), after_head[:80]
    get = parse_response(after_head)
    assert get.body == {"status": "ok"}
    assert head.status == 200
    # The Content-Length the GET has (RFC 9110 9.3.2), though no body follows it.
    assert head.headers["Content-Length"] == get.headers["Content-Length"]


@pytest.mark.django_db(transaction=True)
def test_head_of_an_api_endpoint_sends_no_body(
    front: Front, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    key = make_api_key("alice").raw_key

    head, after_head = head_then_get(front, "/api/v1/me", {"Authorization": f"Bearer {key}"})

    assert after_head.startswith(b"HTTP/1.1 200 OK\r\n"), after_head[:80]
    get = parse_response(after_head)
    assert get.body["user_id"] == "alice"
    assert (head.status, head.headers["Content-Type"]) == (200, "application/json")
    assert head.headers["Content-Length"] == get.headers["Content-Length"]


@pytest.mark.django_db(transaction=True)
def test_head_of_an_error_sends_no_body(front: Front) -> None:
    head, after_head = head_then_get(front, "/api/v1/me")

    assert after_head.startswith(b"HTTP/1.1 401 "), after_head[:80]
    assert parse_response(after_head).body["error"]["code"] == "not_authenticated"
    assert head.status == 401


def test_head_the_web_server_refuses_itself_gets_headers_only(front: Front) -> None:
    with connect(front) as sock:
        sock.sendall(request_bytes("HEAD", "/api/v1/messages", {"Content-Length": str(10**12)}))
        received = b""
        while chunk := sock.recv(65536):
            received += chunk

    assert received.startswith(b"HTTP/1.1 413 ")
    assert received.endswith(b"\r\n\r\n"), received


DOCUMENTS = "/api/v1/workspace/documents"


def document_put(front: Front, key: str, path: str) -> RawResponse:
    body = json.dumps({"content": "x"}).encode()
    headers = {
        "Authorization": f"Bearer {key}",
        "Content-Type": "application/json",
        "Content-Length": str(len(body)),
    }
    return exchange(front, request_bytes("PUT", f"{DOCUMENTS}/{path}", headers, body))


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "path",
    ["a%FFb", "notes/%C3", "%ED%A0%80.md", "%C0%AF.md", "a%FF/append", "a%FF/versions/1"],
    ids=["invalid-byte", "truncated", "surrogate", "overlong", "action", "version"],
)
def test_a_document_path_that_is_not_utf8_is_a_400_naming_path(
    front: Front, make_api_key: Callable[..., CreatedApiKey], path: str
) -> None:
    key = make_api_key("alice").raw_key

    written = document_put(front, key, path)
    read = exchange(
        front,
        request_bytes("GET", f"{DOCUMENTS}/{path}", {"Authorization": f"Bearer {key}"}),
    )

    for response in (written, read):
        assert response.status == 400, response.body
        assert response.body["error"]["code"] == "invalid_path"
        assert "path" in response.body["error"]["details"]
    assert not Document.objects.exists()


@pytest.mark.django_db(transaction=True)
def test_a_percent_sign_escaped_in_a_document_path_is_a_name_of_its_own(
    front: Front, make_api_key: Callable[..., CreatedApiKey]
) -> None:
    key = make_api_key("alice").raw_key

    escaped = document_put(front, key, "a%25FFb")
    not_utf8 = document_put(front, key, "a%FFb")

    assert escaped.status == 200, escaped.body
    assert escaped.body["path"] == "a%FFb"
    assert not_utf8.status == 400, not_utf8.body
    assert list(Document.objects.values_list("path", "content")) == [("a%FFb", "x")]


def test_malformed_request_line_is_a_json_400(front: Front) -> None:
    response = exchange(front, b"NOT AN HTTP REQUEST\r\n\r\n")

    assert_json_error(response, 400, "bad_request")


def test_headers_over_the_limit_are_a_json_431(front: Front) -> None:
    response = exchange(front, request_bytes("GET", "/healthz", {"X-Big": "a" * 70_000}))

    assert_json_error(response, 431, "request_header_too_large")


def test_body_over_the_limit_is_refused_from_its_content_length_as_json_413(
    front: Front,
) -> None:
    response = exchange(
        front,
        request_bytes("POST", "/api/v1/messages", {"Content-Length": str(10**12)}),
    )

    assert_json_error(response, 413, "payload_too_large")


def test_unknown_host_is_a_json_400_logged_in_one_line(front: Front) -> None:
    request = request_bytes("GET", "/api/v1/unknown-host-probe").replace(
        b"Host: 127.0.0.1", b"Host: attacker.example"
    )

    response = exchange(front, request)

    assert_json_error(response, 400, "unknown_host")
    time.sleep(0.2)
    log = front.log_file.read_text()
    assert "Traceback" not in log
    lines = [
        line
        for line in log.splitlines()
        if "attacker.example" in line or "unknown-host-probe" in line
    ]
    assert len(lines) == 1
    assert " WARNING " in lines[0]


def test_unknown_route_outside_the_api_is_json(front: Front) -> None:
    response = exchange(front, request_bytes("GET", "/no-such-page"))

    assert_json_error(response, 404, "not_found")


@pytest.mark.django_db(transaction=True)
def test_requests_the_web_server_refuses_itself_are_logged_and_counted(tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "LOG_LEVEL": "INFO",
        "LOG_FORMAT": "json",
    }
    with app_server(env, threads=2, log_file=log_file) as base_url:
        port = urlsplit(base_url).port
        assert port is not None
        refused = Front(base_url, port, log_file)
        malformed = exchange(refused, b"NOT AN HTTP REQUEST\r\n\r\n")
        too_large = exchange(
            refused, request_bytes("POST", "/api/v1/messages", {"Content-Length": str(10**12)})
        )
        scrape = exchange(refused, request_bytes("GET", "/metrics")).body

    assert (malformed.status, too_large.status) == (400, 413)
    lines = [json.loads(line) for line in log_file.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line.get("route") == "refused"]
    assert sorted(line["status"] for line in access) == [400, 413]
    assert all(line["logger"] == "ironclaw_site.access" for line in access)
    for status in ("400", "413"):
        count = metric_sample(
            scrape,
            "ironclaw_http_request_duration_seconds_count",
            route="refused",
            method="other",
            status=status,
        )
        assert count == 1
