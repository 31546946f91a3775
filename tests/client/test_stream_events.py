"""``stream_events`` against a real ``manage.py serve``: its embedded PostgreSQL, two web
processes sharing the port, and its own engine answering with the echo model, slowly enough
that token deltas flow (two model steps of 0.7 s a turn). A web process serving a stream is
SIGKILLed, another SIGSTOPped, and the client resumes each time with nothing durable missed or
repeated."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from ironclaw_client import AsyncClient, Client, DeltaText, NotFound, RetryPolicy, StreamEvent

from tests.support.metrics import metric_sample
from tests.support.serve import (
    ServeProcess,
    call,
    embedded_serve_env,
    manage,
    post_message,
    postgres_stop,
    processes_kill,
    serve_process,
)
from tests.support.servers import http_request

SERVE_ENV = {
    "WEB_CONCURRENCY": "2",
    "ENGINE_MODEL": "echo",
    "ENGINE_ECHO_LATENCY_MS": "700",
    "ENGINE_ECHO_STEPS": "2",
    # A keep-alive every second, so a client may take 3 s of silence for a dead connection.
    "STREAM_KEEPALIVE_SECONDS": "1",
    # The shortest lifetime: the witness stream is ended by the server while the tests run.
    "STREAM_MAX_SECONDS": "10",
}
QUICK = RetryPolicy(max_attempts=4, max_seconds=10, base_delay=0.05, max_delay=0.5)
TURN_TIMEOUT = 20
WITNESS_IP = "127.0.0.2"


@dataclass
class Witness:
    """A stream opened as the server is ready and left open while the other tests run: the
    server ends it for its lifetime meanwhile."""

    conversation_id: str
    reader: Reader
    port: int
    since: float


@dataclass
class Served:
    serve: ServeProcess
    alice: str
    bob: str
    witness: Witness | None = None

    @property
    def url(self) -> str:
        return self.serve.base_url

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def web_processes(self) -> list[psutil.Process]:
        return [
            child for child in self.serve.children() if "serve_web" in " ".join(child.cmdline())
        ]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    var_dir = Path(tmp_path_factory.mktemp("ev"))
    env = embedded_serve_env(var_dir, SERVE_ENV)
    manage(env, "migrate", "--noinput", "-v", "0")
    keys = manage(
        env,
        "shell",
        "-c",
        "from accounts.services import api_key_create as make; "
        "print(make(name='t', user_id='alice').raw_key, make(name='t', user_id='bob').raw_key)",
    ).split()
    started: list[psutil.Process] = []
    try:
        with serve_process(env) as serve:
            started = serve.descendants()
            served = Served(serve, keys[-2], keys[-1])
            # Its connections come from an address of their own: the tests tell theirs apart.
            transport = httpx.HTTPTransport(local_address=WITNESS_IP)
            with (
                httpx.Client(transport=transport) as http,
                Client(served.url, served.alice, retry=QUICK, http=http) as client,
            ):
                conversation_id = new_conversation(served, "w")
                reader = Reader(client.stream_events(conversation_id, after="0"), agent_entry)
                _wait(lambda: len(_client_ports(served.port, WITNESS_IP)) == 1)
                port = _client_stream_port(served.port, WITNESS_IP)
                served.witness = Witness(conversation_id, reader, port, time.monotonic())
                yield served
            started += serve.descendants()
    finally:
        processes_kill(started)
        postgres_stop(var_dir / "pgdata")


class Reader:
    """Iterates ``events`` on a thread of its own, keeping what comes, until ``until`` holds for
    one of them or the iterator ends."""

    def __init__(
        self,
        events: Generator[StreamEvent, None, None],
        until: Callable[[StreamEvent], bool] = lambda event: False,
    ):
        self.events: list[StreamEvent] = []
        self.error: Exception | None = None
        self._iterator, self._until = events, until
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for event in self._iterator:
                self.events.append(event)
                if self._until(event):
                    return
        except Exception as error:  # its client closed under it at the end of the module
            self.error = error
        finally:
            self._iterator.close()

    def result(self, timeout: float = TURN_TIMEOUT) -> list[StreamEvent]:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still reading after {timeout} s: {self.events}"
        assert self.error is None
        return self.events

    def wait_for(self, condition: Callable[[StreamEvent], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not any(condition(event) for event in list(self.events)):
            assert time.monotonic() < deadline, f"not seen in {timeout} s: {self.events}"
            time.sleep(0.02)


def agent_entry(event: StreamEvent) -> bool:
    return event.event == "entry" and event.data["sender"] == "agent"


def durable(events: list[StreamEvent]) -> list[tuple[str, str | None, dict[str, Any]]]:
    return [(event.event, event.id, event.data) for event in events if event.id is not None]


def durable_after(
    client: Client, conversation_id: str, after: str, until_id: str
) -> list[tuple[str, str | None, dict[str, Any]]]:
    """The durable events a new stream from ``after`` sends, up to the one with ``until_id``."""
    reader = Reader(
        client.stream_events(conversation_id, after=after),
        lambda event: event.id == until_id,
    )
    return durable(reader.result(10))


def turn(served: Served, channel: str, content: str) -> dict[str, Any]:
    status, sent = post_message(served.url, served.alice, content, channel=channel)
    assert status == 202, sent
    return dict(sent)


def new_conversation(served: Served, channel: str) -> str:
    status, conversation = call(
        served.url, served.alice, "POST", "/api/v1/conversations/new", {"channel": channel}
    )
    assert status == 201, conversation
    return str(conversation["id"])


def assert_one_whole_turn(events: list[StreamEvent], thread_id: str, content: str) -> None:
    """The turn's durable events, each once and in order: its entries (the message, "Thread
    started", the reply) and its thread's events from spawned to completed."""
    entries = [e.data["seq"] for e in events if e.event == "entry" and e.id is not None]
    assert entries == list(range(entries[0], entries[0] + 3))
    thread = [e.data for e in events if e.event == "thread"]
    assert [t["seq"] for t in thread] == list(range(1, len(thread) + 1))
    assert {t["thread_id"] for t in thread} == {thread_id}
    assert [t["type"] for t in thread] == ["spawned", "claimed", "step", "step", "completed"]
    assert [e.data["content"] for e in events if agent_entry(e)] == [f"echo: {content}"]
    ids = [e.id for e in events if e.id is not None]
    assert len(ids) == len(set(ids))


def test_a_reply_streams_as_deltas_then_its_entry_and_every_id_resumes_exactly(
    served: Served,
) -> None:
    conversation_id = new_conversation(served, "a")
    with Client(served.url, served.alice, retry=QUICK) as client:
        reader = Reader(client.stream_events(conversation_id, after="0"), agent_entry)
        time.sleep(0.5)  # the stream is open before the model starts
        sent = turn(served, "a", "hello stream")
        events = reader.result()
        assert_one_whole_turn(events, sent["thread_id"], "hello stream")

        texts, grown = DeltaText(), []
        for event in events:
            if event.event == "delta":
                grown.append(texts.add(event))
        assert len(grown) >= 4
        # The final step's text, delta by delta, is the reply; the entry comes after it.
        assert texts.text(sent["thread_id"], 2) == "echo: hello stream"
        assert texts.text(sent["thread_id"], 1).startswith("working step 1")
        last_delta = max(i for i, e in enumerate(events) if e.event == "delta")
        assert last_delta < next(i for i, e in enumerate(events) if agent_entry(e))

        seen = durable(events)
        last_id = seen[-1][1]
        assert last_id is not None
        for n, (_, event_id, _) in enumerate(seen[:-1]):
            assert event_id is not None
            assert durable_after(client, conversation_id, event_id, last_id) == seen[n + 1 :]
        assert durable_after(client, conversation_id, "0", last_id) == seen
        # After the last id, the next message is the next thing sent: nothing came between.
        reader = Reader(client.stream_events(conversation_id, after=last_id), lambda e: True)
        time.sleep(0.3)
        turn(served, "a", "sentinel")
        (first,) = reader.result()
        assert (first.event, first.data["content"]) == ("entry", "sentinel")

    with Client(served.url, served.bob) as bob, pytest.raises(NotFound):
        next(iter(bob.stream_events(conversation_id)))


def _client_ports(server_port: int, local_ip: str = "127.0.0.1") -> set[int]:
    """The local ports of this process's established connections to the server from
    ``local_ip`` (the witness's come from WITNESS_IP)."""
    return {
        int(c.laddr.port)
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_ESTABLISHED
        and c.raddr
        and c.raddr.port == server_port
        and c.laddr.ip == local_ip
    }


def _client_stream_port(server_port: int, local_ip: str = "127.0.0.1") -> int:
    """The local port of this process's one connection to the server: its stream's."""
    (port,) = _client_ports(server_port, local_ip)
    return port


def _stream_holder(served: Served, client_port: int) -> psutil.Process:
    """The web process at the other end of the client's connection (from 127.0.0.1)."""
    for web in served.web_processes():
        for connection in web.net_connections(kind="tcp"):
            if connection.raddr and connection.raddr == ("127.0.0.1", client_port):
                return web
    raise AssertionError(f"no web process holds the connection from port {client_port}")


def _wait(condition: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.05)


def test_a_stream_resumes_on_the_other_web_process_when_its_own_is_sigkilled_mid_turn(
    served: Served,
) -> None:
    conversation_id = new_conversation(served, "b")
    with Client(served.url, served.alice, retry=QUICK) as client:
        # Read until the message sent once the stream is seen resumed.
        reader = Reader(
            client.stream_events(conversation_id, after="0"),
            lambda e: e.event == "entry" and e.data["content"] == "over",
        )
        sent = turn(served, "b", "survive this")
        reader.wait_for(lambda e: e.event == "delta")
        old_port = _client_stream_port(served.port)
        holder = _stream_holder(served, old_port)
        holder.send_signal(signal.SIGKILL)
        seen_before_kill = len(reader.events)
        # Connected again, to the web process that survived (serve starts another meanwhile).
        _wait(lambda: bool(_client_ports(served.port) - {old_port}))
        new_holder = _stream_holder(served, _client_stream_port(served.port))
        reader.wait_for(agent_entry)
        turn(served, "b", "over")
        events = reader.result()
        # Afterwards, for the comparison: every durable event from the start, read again.
        replayed = durable_after(client, conversation_id, "0", str(events[-1].id))

    assert new_holder.pid != holder.pid
    assert not holder.is_running()
    events = events[: next(i for i, e in enumerate(events) if agent_entry(e)) + 1]
    assert_one_whole_turn(events, sent["thread_id"], "survive this")
    assert durable(events) == replayed[: len(durable(events))]
    # The kill came mid-turn: the turn ended after it, seen through another web process.
    assert any(e.final for e in events[seen_before_kill:])
    _wait(lambda: len(served.web_processes()) == 2)
    assert holder.pid not in {web.pid for web in served.web_processes()}


def test_a_silent_connection_is_replaced_after_the_read_timeout(served: Served) -> None:
    """A web process that stops answering (SIGSTOP: its socket stays open, nothing comes) is
    left after ``read_timeout`` s without a keep-alive; the events meanwhile are replayed."""
    conversation_id = new_conversation(served, "e")
    with Client(served.url, served.alice, retry=QUICK) as client:
        reader = Reader(
            client.stream_events(conversation_id, after="0", read_timeout=3), agent_entry
        )
        sent = turn(served, "e", "are you there")
        reader.wait_for(lambda e: e.event == "thread" and e.data["type"] == "claimed")
        old_port = _client_stream_port(served.port)
        holder = _stream_holder(served, old_port)
        holder.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            # The client gives the silent connection up (its side leaves ESTABLISHED) and
            # connects again, maybe to the stopped process, whose kernel still accepts (it
            # answers once continued), or to the other. The new connection is not what the test
            # waits for: the turn may have ended meanwhile, and the new stream then replays it
            # and closes at once, too soon to be seen established.
            _wait(lambda: old_port not in _client_ports(served.port))
            replaced_after = time.monotonic() - stopped_at
        finally:
            holder.send_signal(signal.SIGCONT)
        events = reader.result()

    assert 2.5 < replaced_after < 6
    assert_one_whole_turn(events, sent["thread_id"], "are you there")


def test_the_async_client_streams_a_reply_and_resumes_from_an_id(served: Served) -> None:
    conversation_id = new_conversation(served, "c")

    async def scenario() -> tuple[list[StreamEvent], list[StreamEvent], str]:
        async with AsyncClient(served.url, served.alice, retry=QUICK) as client:
            events: list[StreamEvent] = []

            async def read(after: str, into: list[StreamEvent], until_id: str | None) -> None:
                async for event in client.stream_events(conversation_id, after=after):
                    into.append(event)
                    if agent_entry(event) if until_id is None else event.id == until_id:
                        return

            reading = asyncio.create_task(read("0", events, None))
            await asyncio.sleep(0.5)
            sent = await client.send_message("c", "hello async")
            await asyncio.wait_for(reading, TURN_TIMEOUT)
            middle = next(e for e in events if e.event == "thread" and e.data["type"] == "claimed")
            resumed: list[StreamEvent] = []
            assert middle.id is not None
            await asyncio.wait_for(read(middle.id, resumed, events[-1].id), 10)
            return events, resumed, sent["thread_id"]

    events, resumed, thread_id = asyncio.run(scenario())
    assert_one_whole_turn(events, thread_id, "hello async")
    texts = DeltaText()
    for event in events:
        if event.event == "delta":
            texts.add(event)
    assert texts.text(thread_id, 2) == "echo: hello async"
    middle = next(i for i, e in enumerate(events) if e.event == "thread" and e.data["seq"] == 2)
    assert durable(resumed) == durable(events[middle + 1 :])


def test_a_thread_stream_ends_by_itself_after_the_threads_final_event(served: Served) -> None:
    sent = turn(served, "d", "the end")
    thread_id = sent["thread_id"]
    url = f"{served.url}/api/v1/threads/{thread_id}/events"
    headers = {"Authorization": f"Bearer {served.alice}", "Last-Event-ID": "0"}
    with Client(served.url, served.alice, retry=QUICK) as client:
        # Ends by itself: no predicate stops it.
        reader = Reader(client.stream_events(thread_id=thread_id, after=0))
        # The server closes the connection after the final event (its last chunk, no error).
        with httpx.stream("GET", url, headers=headers, timeout=TURN_TIMEOUT) as response:
            assert response.status_code == 200
            wire = b"".join(response.iter_bytes()).decode()
        events = reader.result()
        # An ended thread's stream without a cursor says how it ended, and ends.
        (again,) = list(client.stream_events(thread_id=thread_id))
        # Resumed after its final event, it ends with nothing.
        started = time.monotonic()
        assert list(client.stream_events(thread_id=thread_id, after=events[-1].id)) == []
        resumed_took = time.monotonic() - started

    kinds = [e.data["type"] for e in events if e.event == "thread"]
    assert kinds == ["spawned", "claimed", "step", "step", "completed"]
    assert [e.id for e in events if e.id is not None] == ["1", "2", "3", "4", "5"]
    assert events[-1].final
    last_frame = wire.rstrip("\n").rsplit("\n\n", 1)[-1]
    assert last_frame.startswith("id: 5\nevent: thread\ndata: ")
    assert '"type":"completed"' in last_frame
    assert (again.id, again.data["type"]) == ("5", "completed")
    assert resumed_took < 1


def test_a_conversation_stream_the_server_ends_for_its_lifetime_is_resumed(served: Served) -> None:
    """The witness stream, open since the server was ready (the other tests ran meanwhile), is
    ended by the server after STREAM_MAX_SECONDS and resumed on a new connection.

    The other tests kill and stop web processes, which may end the witness's connections before
    their lifetime does; nothing disturbs the one it holds now, so the server ends it within
    STREAM_MAX_SECONDS (10) and the client connects again."""
    witness = served.witness
    assert witness is not None
    _wait(lambda: len(_client_ports(served.port, WITNESS_IP)) == 1)
    held = _client_stream_port(served.port, WITNESS_IP)
    _wait(lambda: bool(_client_ports(served.port, WITNESS_IP) - {held}), timeout=20)
    (port_now,) = _client_ports(served.port, WITNESS_IP) - {held}
    sent = turn(served, "w", "still here")
    events = witness.reader.result()
    metrics = http_request(f"{served.url}/metrics")

    assert port_now != witness.port
    assert metrics.status == 200
    assert metric_sample(metrics.body, "ironclaw_streams_closed_total", reason="lifetime") >= 1
    assert_one_whole_turn(events, sent["thread_id"], "still here")
