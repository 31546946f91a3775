"""The event streams' hub behind the real web server: a Django view hands its connection over,
the hub serves it on real sockets, woken by real NOTIFYs (tests.support.event_streams)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from django.db import connection
from django.test import Client, override_settings
from prometheus_client import REGISTRY

from core import notify
from core.notify import EVENTS_CHANNEL
from core.streams import Hub
from tests.support.event_streams import (
    GATES,
    PAGE_BYTES,
    REPLAY,
    SUBSCRIPTIONS,
    URLCONF,
    StreamClient,
    eventually,
    notify_events,
)
from tests.support.servers import BASE_DIR, database_url, free_port

pytestmark = pytest.mark.django_db(transaction=True)
# A web process serving the view, as serve_web would (the module imports the app: setup first).
SERVE_EVENT_STREAMS = (
    "import django; django.setup(); from tests.support.event_streams import main; main()"
)


def closed(reason: str) -> float:
    return REGISTRY.get_sample_value("ironclaw_streams_closed_total", {"reason": reason}) or 0.0


def test_the_head_and_the_replay_come_at_once_then_each_notification(
    stream_port: int, make_hub: Callable[..., Hub], listener_up: None
) -> None:
    hub = make_hub()
    started = time.monotonic()
    client = StreamClient(stream_port, key="alice", topic="first")
    client.read_head()
    replay = client.read_chunk()
    elapsed = time.monotonic() - started

    assert client.status == 200
    assert client.headers["Content-Type"] == "text/event-stream"
    assert client.headers["Cache-Control"] == "no-cache"
    assert client.headers["X-Accel-Buffering"] == "no"
    assert client.headers["Transfer-Encoding"] == "chunked"
    assert client.headers["Connection"] == "close"
    assert "Content-Length" not in client.headers
    # The middleware's headers are kept: the response passed Django whole.
    assert client.headers["X-Request-Id"]
    assert replay == REPLAY
    assert elapsed < 2
    eventually(lambda: hub.open_count == 1)

    notify_events('first {"n": 1}')
    assert b'data: {"n": 1}\n\n' in client.read_until(b'"n": 1')
    # A payload without data: the source reads (a real statement on a read thread).
    notify_events("first")
    client.read_until(b"data: read 1\n\n")
    notify_events('other {"n": 2}')
    notify_events('first {"n": 3}')
    assert b'"n": 2' not in client.read_until(b'"n": 3')
    client.close()


def test_an_http_1_0_stream_ends_with_the_connection(
    stream_port: int, make_hub: Callable[..., Hub], listener_up: None
) -> None:
    make_hub()
    client = StreamClient(stream_port, version="1.0", topic="old")
    client.read_head()

    assert client.status == 200
    assert "Transfer-Encoding" not in client.headers
    assert client.headers["Connection"] == "close"
    assert client.read_until(b": replay\n\n") == REPLAY
    notify_events('old {"n": 1}')
    client.read_until(b'data: {"n": 1}\n\n')
    client.close()


def test_an_idle_stream_gets_keep_alive_comments(
    stream_port: int, make_hub: Callable[..., Hub]
) -> None:
    make_hub(keepalive=0.2)
    client = StreamClient(stream_port, topic="quiet")
    client.read_head()
    client.read_chunk()
    started = time.monotonic()

    assert client.read_chunk(timeout=2) == b": keep-alive\n\n"
    assert client.read_chunk(timeout=2) == b": keep-alive\n\n"
    assert 0.3 < time.monotonic() - started < 1.5
    client.close()


def test_a_stream_ends_cleanly_after_its_lifetime(
    stream_port: int, make_hub: Callable[..., Hub]
) -> None:
    hub = make_hub(lifetime=1.0)
    before = closed("lifetime")
    client = StreamClient(stream_port, topic="short")
    client.read_head()
    client.read_chunk()
    started = time.monotonic()

    # The last chunk, then the connection's end, after 0.9 to 1 s.
    assert client.read_chunk(timeout=5) is None
    assert 0.8 < time.monotonic() - started < 1.5
    assert client.at_eof()
    assert closed("lifetime") == before + 1
    assert hub.open_count == 0
    assert hub.admitted("key") == 0


def test_a_source_that_is_done_ends_its_stream(
    stream_port: int, make_hub: Callable[..., Hub], listener_up: None
) -> None:
    make_hub()
    before = closed("done")
    client = StreamClient(stream_port, topic="once", done_after="1")
    client.read_head()
    client.read_chunk()

    notify_events('once {"last": true}')

    client.read_until(b'"last": true')
    assert client.read_chunk() is None
    assert client.at_eof()
    eventually(lambda: closed("done") == before + 1)


def test_a_key_holds_at_most_its_cap_and_a_client_that_hangs_up_frees_its_slot(
    stream_port: int, make_hub: Callable[..., Hub]
) -> None:
    hub = make_hub(per_key=2)
    before = closed("client")
    first = StreamClient(stream_port, key="capped", topic="gone")
    second = StreamClient(stream_port, key="capped", topic="stays")
    for client in (first, second):
        client.read_head()
        assert client.status == 200
    refused = StreamClient(stream_port, key="capped")
    refused.read_head()
    other_key = StreamClient(stream_port, key="another")
    other_key.read_head()

    assert refused.status == 429
    assert other_key.status == 200
    eventually(lambda: hub.open_count == 3)
    assert hub.admitted("capped") == 2

    first.close()

    eventually(lambda: hub.admitted("capped") == 1)
    assert hub.open_count == 2
    assert closed("client") == before + 1
    # Its subscription went with it.
    assert (EVENTS_CHANNEL, "gone") not in notify._listener._subscribers
    again = StreamClient(stream_port, key="capped")
    again.read_head()
    assert again.status == 200
    for client in (second, refused, other_key, again):
        client.close()


def test_a_client_that_does_not_read_is_cut_off_past_the_buffer_limit(
    stream_port: int, make_hub: Callable[..., Hub], listener_up: None
) -> None:
    hub = make_hub(buffer_bytes=65_536)
    before = closed("slow")
    client = StreamClient(stream_port, topic="slow", receive_buffer=4096)
    client.read_head()
    eventually(lambda: hub.open_count == 1)

    # Half a megabyte a notification, never read: the kernel's buffers fill, then the hub's.
    for _ in range(100):
        notify_events('slow {"size": 500000}')
        if closed("slow") > before:
            break
        time.sleep(0.05)

    assert closed("slow") == before + 1
    assert hub.open_count == 0
    assert hub.admitted("key") == 0
    client.close()


def test_a_client_catching_up_on_a_backlog_gets_it_a_page_at_a_time_and_is_not_cut_off(
    stream_port: int, make_hub: Callable[..., Hub], listener_up: None
) -> None:
    """Twenty pages of 256 KiB, the hub's buffer 512 KiB: the next page is read only once the
    client has taken the last (asyncio's pause and resume of writing), so a client reading
    steadily, if slowly, gets them all; queued at once, they were cut off as a slow reader."""
    hub = make_hub(buffer_bytes=512 * 1024)
    before = closed("slow")
    client = StreamClient(stream_port, topic="backlog", pages="20", receive_buffer=4096)
    client.read_head()
    received = 0
    pages = 0
    while pages < 20:
        chunk = client.read_chunk(timeout=20)
        assert chunk is not None, "the stream ended before its backlog"
        received += len(chunk)
        pages += chunk.count(b"data: page ")
        time.sleep(0.002)
    assert received >= 20 * PAGE_BYTES
    assert closed("slow") == before
    assert hub.open_count == 1
    client.close()


def test_a_client_that_keeps_sending_is_cut_off(
    stream_port: int, make_hub: Callable[..., Hub], listener_up: None
) -> None:
    hub = make_hub()
    client = StreamClient(stream_port, topic="chatty")
    client.read_head()
    eventually(lambda: hub.open_count == 1)
    with contextlib.suppress(OSError):
        for _ in range(64):
            client.sock.sendall(b"x" * 4096)
    eventually(lambda: hub.open_count == 0)
    client.close()


def test_every_stream_reads_again_when_the_listener_reconnects(
    stream_port: int, make_hub: Callable[..., Hub], listener_up: None
) -> None:
    make_hub()
    clients = [StreamClient(stream_port, topic=f"lost-{n}") for n in range(3)]
    for client in clients:
        client.read_head()
        client.read_chunk()

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND query LIKE 'LISTEN %%' "
            "AND pid <> pg_backend_pid()"
        )
        assert cursor.fetchall() == [(True,)]

    for client in clients:
        client.read_until(b"data: read 1\n\n", timeout=15)
        client.close()


def test_a_stream_asked_to_reads_once_more_after_it_opens_without_a_notification(
    stream_port: int, make_hub: Callable[..., Hub], listener_up: None
) -> None:
    make_hub()
    late = StreamClient(stream_port, topic="late", read_after="0.3")
    plain = StreamClient(stream_port, topic="plain")
    for client in (late, plain):
        client.read_head()
        client.read_chunk()

    late.read_until(b"data: read 1\n\n", timeout=5)
    with pytest.raises(AssertionError, match="nothing arrived"):
        plain.read_chunk(timeout=1)  # not asked to: no read without a notification
    late.close()
    plain.close()


def test_a_notification_between_the_replay_and_the_hand_off_is_kept(
    stream_port: int, make_hub: Callable[..., Hub], listener_up: None
) -> None:
    make_hub()
    GATES["gated"] = threading.Event()
    client = StreamClient(stream_port, topic="gated")
    eventually(lambda: "gated" in SUBSCRIPTIONS)

    # The view has read its replay and not handed off yet: the hub keeps this for the source.
    notify_events('gated {"meanwhile": true}')
    eventually(lambda: bool(SUBSCRIPTIONS["gated"]._pending))
    GATES["gated"].set()

    client.read_head()
    assert client.read_chunk() == REPLAY
    client.read_until(b'"meanwhile": true')
    client.close()


def test_a_failing_source_ends_its_own_stream_only(
    stream_port: int, make_hub: Callable[..., Hub], listener_up: None
) -> None:
    hub = make_hub()
    before = closed("error")
    failing = StreamClient(stream_port, topic="fails")
    healthy = StreamClient(stream_port, topic="fine")
    for client in (failing, healthy):
        client.read_head()
        client.read_chunk()

    notify_events('fails {"fail": true}')

    assert failing.read_chunk() is None
    eventually(lambda: closed("error") == before + 1)
    notify_events('fine {"still": true}')
    healthy.read_until(b'"still": true')
    assert hub.open_count == 1
    healthy.close()


def test_a_closing_hub_ends_its_streams_cleanly(
    stream_port: int, make_hub: Callable[..., Hub]
) -> None:
    hub = make_hub()
    before = closed("shutdown")
    client = StreamClient(stream_port, topic="stopping")
    client.read_head()
    client.read_chunk()
    eventually(lambda: hub.open_count == 1)

    hub.close()

    assert client.read_chunk() is None
    assert client.at_eof()
    assert closed("shutdown") == before + 1


def test_a_head_request_gets_headers_only_and_its_subscription_goes(
    stream_port: int, make_hub: Callable[..., Hub]
) -> None:
    hub = make_hub()
    client = StreamClient(stream_port, method="HEAD", topic="head")
    client.read_head()

    assert client.status == 200
    assert client.buffer == b""
    eventually(lambda: hub.admitted("key") == 0)
    assert hub.open_count == 0
    assert (EVENTS_CHANNEL, "head") not in notify._listener._subscribers
    client.close()


def test_without_the_web_server_the_view_answers_its_replay(make_hub: Callable[..., Hub]) -> None:
    hub = make_hub()
    with override_settings(ROOT_URLCONF=URLCONF):
        response = Client().get("/events", {"topic": "plain"})

    assert response.status_code == 200
    assert response.content == REPLAY
    assert hub.admitted("key") == 0
    assert (EVENTS_CHANNEL, "plain") not in notify._listener._subscribers


def test_a_web_process_told_to_stop_ends_its_streams_at_once(
    transactional_db: None, tmp_path: Path
) -> None:
    port = free_port()
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_EVENT_STREAMS, str(port)],
        cwd=BASE_DIR,
        env={
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "ironclaw_site.settings",
            "DATABASE_URL": database_url(connection.settings_dict),
            "LOG_LEVEL": "WARNING",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def serving() -> bool:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            try:
                StreamClient(port, method="HEAD").read_head()
            except OSError:
                return False
            return True

        eventually(serving, timeout=30)
        client = StreamClient(port, topic="stopping")
        client.read_head()
        assert client.read_chunk() == REPLAY

        started = time.monotonic()
        process.send_signal(signal.SIGTERM)

        assert client.read_chunk(timeout=5) is None
        assert time.monotonic() - started < 1
        assert client.at_eof()
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        log.close()


def test_a_web_process_may_open_as_many_files_as_its_hard_limit_allows() -> None:
    script = (
        "import resource; from operations.web_server import open_files_limit_raise; "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, 4096)); open_files_limit_raise(); "
        "print(resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {script}"],
        cwd=BASE_DIR,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "ironclaw_site.settings"},
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "(4096, 4096)"
