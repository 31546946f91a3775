"""The client's side of event streams, byte for byte: the WHATWG parsing rules, and reconnecting
with the last id through cut connections, 503s, 429s, silence and a server not up yet, against
a real HTTP server on loopback that sends what the test scripts (``tests.support.sse_server``).
The real server's streams are in test_stream_events.py."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from ironclaw_client import (
    ApiError,
    AsyncClient,
    AuthenticationError,
    Client,
    DeltaText,
    InvalidArgument,
    NotFound,
    RetryPolicy,
    StreamEvent,
    ValidationError,
)
from ironclaw_client._events import SseParser

from tests.support.servers import free_port
from tests.support.sse_server import Answer, SseScript, sse_server

QUICK = RetryPolicy(base_delay=0.01, max_delay=0.05)
THREAD = "7e57ab1e-0000-4000-8000-000000000001"


def frame(event_id: str | None, event: str, data: dict[str, Any], end: str = "\n") -> bytes:
    head = f"id: {event_id}{end}" if event_id is not None else ""
    return f"{head}event: {event}{end}data: {json.dumps(data)}{end}{end}".encode()


def thread_event(seq: int, kind: str) -> bytes:
    return frame(str(seq), "thread", {"thread_id": THREAD, "seq": seq, "type": kind})


# A BOM, CRLF, CR and LF line ends, comments, two data lines, an id kept by the events after it,
# an id with NUL (ignored), fields without a space or a value, a retry that is not digits, an id
# without data (not an event, but the id counts), invalid UTF-8, and an event the end cuts off.
WIRE = (
    b"\xef\xbb\xbf: stream open\r\nretry: 2500\r\n\r\n"
    b'id: 7\revent: entry\rdata: {"a":\r\ndata: 1}\n\n'
    b"data: no type\n\n"
    b"id: bad\x00id\ndata:nospace\n\n"
    b"retry: soon\nevent: thread\nid: 8\n\n"
    b"data\n\n"
    b"data: caf\xc3\xa9 \xff\n\n"
    b"data: cut off"
)
EXPECTED = [
    StreamEvent("entry", {"a": 1}, "7", '{"a":\n1}'),
    StreamEvent("message", {}, None, "no type"),
    StreamEvent("message", {}, None, "nospace"),
    StreamEvent("message", {}, None, ""),
    StreamEvent("message", {}, None, "caf\u00e9 \ufffd"),
]


def _parse(pieces: list[bytes]) -> tuple[list[StreamEvent], SseParser]:
    parser = SseParser()
    events = [event for piece in pieces for event in parser.feed(piece)]
    return events, parser


def test_the_parser_follows_the_whatwg_rules_however_the_bytes_are_cut() -> None:
    whole, parser = _parse([WIRE])
    assert whole == EXPECTED
    assert (parser.last_event_id, parser.retry_ms) == ("8", 2500)
    assert _parse([WIRE[i : i + 1] for i in range(len(WIRE))])[0] == EXPECTED
    rng = random.Random(7)
    for _ in range(200):
        cuts = sorted(rng.sample(range(1, len(WIRE)), rng.randint(1, 12)))
        pieces = [WIRE[a:b] for a, b in zip([0, *cuts], [*cuts, len(WIRE)], strict=True)]
        assert _parse(pieces)[0] == EXPECTED, cuts
    # A CR ending one chunk and the LF opening the next are one line end, not two.
    assert _parse([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"])[0] == [
        StreamEvent("message", {}, None, "a\nb")
    ]


def test_delta_text_applies_offsets_and_skips_a_gap_until_it_can_apply() -> None:
    texts = DeltaText()

    def delta(step: int, offset: int, text: str) -> StreamEvent:
        data = {"thread_id": THREAD, "step": step, "offset": offset, "text": text}
        return StreamEvent("delta", data)

    assert texts.add(delta(1, 0, "Hel")) == "Hel"
    assert texts.add(delta(1, 3, "lo")) == "Hello"
    assert texts.add(delta(1, 3, "lo")) == "Hello"  # a repeat is harmless
    assert texts.add(delta(1, 0, "Hello, wor")) == "Hello, wor"
    assert texts.add(delta(2, 5, "missed the start")) is None
    assert texts.add(delta(2, 0, "Step two")) == "Step two"
    assert texts.text(THREAD, 1) == "Hello, wor"
    final = StreamEvent("thread", {"thread_id": THREAD, "seq": 5, "type": "completed"}, "5")
    assert final.final
    assert texts.add(final) is None
    assert texts.texts == {}


def _take(events: Iterator[StreamEvent], count: int) -> list[StreamEvent]:
    taken = []
    for event in events:
        taken.append(event)
        if len(taken) == count:
            break
    return taken


def test_a_conversation_stream_reconnects_with_the_last_id_through_cuts_refusals_and_silence() -> (
    None
):
    script = SseScript()
    script.add(
        # retry 50 ms; two events with CRLF line ends; the connection cut without its last chunk.
        Answer(
            chunks=[
                b"\xef\xbb\xbfretry: 50\r\n\r\n",
                frame("1", "entry", {"seq": 1}, end="\r\n"),
                frame("1.1:1", "thread", {"seq": 1})[:-1],
                b"\n",
            ],
            end="cut",
        ),
        Answer(status=503, headers={"Retry-After": "0"}),
        Answer(status=429, headers={"Retry-After": "0.3"}),
        # A delta (no id), an event, then silence past the read timeout.
        Answer(
            chunks=[frame(None, "delta", {"text": "x"}), frame("2", "entry", {"seq": 2})],
            end="silent",
        ),
        # The server's end of the stream (its lifetime): reconnected after retry.
        Answer(chunks=[frame("3", "entry", {"seq": 3})]),
        Answer(chunks=[frame("4", "entry", {"seq": 4})], end="silent"),
    )
    with sse_server(script), Client(script.url, "key", retry=QUICK) as client:
        started = time.monotonic()
        events = client.stream_events("c0ffee", read_timeout=0.5)
        taken = _take(events, 6)
        took = time.monotonic() - started
        events.close()
        requests = script.stream_requests()

    assert [(event.event, event.id) for event in taken] == [
        ("entry", "1"),
        ("thread", "1.1:1"),
        ("delta", None),
        ("entry", "2"),
        ("entry", "3"),
        ("entry", "4"),
    ]
    assert script.last_event_ids() == [None, "1.1:1", "1.1:1", "1.1:1", "2", "3"]
    assert all(r.headers["accept"] == "text/event-stream" for r in requests)
    assert requests[0].path == "/api/v1/conversations/c0ffee/events"
    gaps = [b.at - a.at for a, b in itertools.pairwise(requests)]
    # After the 429, never sooner than its Retry-After; after the silence, the read timeout.
    assert gaps[2] >= 0.3
    assert gaps[3] >= 0.5
    assert all(gap >= 0.05 for gap in gaps)
    assert took < 5


def test_a_resumed_stream_sends_the_cursor_it_was_given() -> None:
    script = SseScript()
    script.add(Answer(chunks=[frame("13", "entry", {"seq": 13})], end="silent"))
    with sse_server(script), Client(script.url, "key", retry=QUICK) as client:
        assert [e.id for e in _take(client.stream_events("c0ffee", after=12), 1)] == ["13"]
    assert script.last_event_ids() == ["12"]


@pytest.mark.parametrize(
    ("status", "error"), [(400, ValidationError), (401, AuthenticationError), (404, NotFound)]
)
def test_an_error_other_than_a_refusal_is_raised_typed(status: int, error: type[ApiError]) -> None:
    script = SseScript()
    script.add(Answer(status=status))
    with (
        sse_server(script),
        Client(script.url, "key", retry=QUICK) as client,
        pytest.raises(error) as raised,
    ):
        next(iter(client.stream_events(thread_id=THREAD)))
    assert raised.value.code == f"code_{status}"
    assert len(script.stream_requests()) == 1


def test_a_stream_names_a_conversation_or_a_thread() -> None:
    with Client("http://127.0.0.1:9", "key") as client:
        with pytest.raises(InvalidArgument):
            client.stream_events()
        with pytest.raises(InvalidArgument):
            client.stream_events("c0ffee", thread_id=THREAD)


def test_a_stream_waits_for_a_server_that_is_not_up_yet() -> None:
    port = free_port()
    script = SseScript()
    script.add(Answer(chunks=[frame("1", "entry", {"seq": 1})], end="silent"))
    got: list[StreamEvent] = []
    with Client(f"http://127.0.0.1:{port}", "key", retry=QUICK) as client:
        reader = threading.Thread(
            target=lambda: got.extend(_take(client.stream_events("c0ffee"), 1)), daemon=True
        )
        reader.start()
        time.sleep(0.5)
        assert not got
        with sse_server(script, port=port):
            reader.join(10)
    assert [event.id for event in got] == ["1"]


def test_a_thread_stream_ends_with_its_final_event_whatever_the_connection_does() -> None:
    script = SseScript()
    script.add(Answer(chunks=[thread_event(1, "claimed"), thread_event(2, "failed")], end="silent"))
    with sse_server(script), Client(script.url, "key", retry=QUICK) as client:
        started = time.monotonic()
        events = list(client.stream_events(thread_id=THREAD))
        took = time.monotonic() - started
    assert [(event.id, event.data["type"]) for event in events] == [
        ("1", "claimed"),
        ("2", "failed"),
    ]
    assert took < 1
    assert len(script.requests) == 1


@pytest.mark.parametrize("state", ["completed", "running"])
def test_a_thread_stream_resumed_after_its_end_stops_once_the_thread_is_known_ended(
    state: str,
) -> None:
    """Resumed after its final event, a thread's stream closes with nothing, as one closed for
    its lifetime may: the client asks the thread, and stops after one more empty stream if it
    had ended; a running one's stream goes on."""
    script = SseScript()
    script.thread_state = state
    # The thread known ended, the client reconnects at once, not after retry.
    retry = b"retry: 2000\n\n" if state == "completed" else b"retry: 100\n\n"
    script.add(
        Answer(chunks=[retry]),
        Answer(chunks=[b": stream open\n\n"]),
        Answer(chunks=[thread_event(5, "completed")]),
    )
    with sse_server(script), Client(script.url, "key", retry=QUICK) as client:
        started = time.monotonic()
        events = list(client.stream_events(thread_id=THREAD, after=4))
        took = time.monotonic() - started
    paths = [request.path.rsplit("/", 1)[-1] for request in script.requests]
    if state == "completed":
        assert events == []
        assert paths == ["events", THREAD, "events"]
        assert took < 1
    else:
        assert [event.id for event in events] == ["5"]
        assert paths == ["events", THREAD, "events", THREAD, "events"]
        assert took >= 0.2


def test_the_async_client_reconnects_and_ends_a_thread_stream_alike() -> None:
    script = SseScript()
    script.add(
        Answer(chunks=[b"retry: 20\n\n", thread_event(1, "claimed")], end="cut"),
        Answer(status=503),
        Answer(chunks=[frame(None, "delta", {"text": "x"}), thread_event(2, "completed")]),
    )

    async def read() -> list[StreamEvent]:
        async with AsyncClient(script.url, "key", retry=QUICK) as client:
            return [event async for event in client.stream_events(thread_id=THREAD)]

    with sse_server(script):
        events = asyncio.run(read())
    assert [(event.event, event.id) for event in events] == [
        ("thread", "1"),
        ("delta", None),
        ("thread", "2"),
    ]
    assert script.last_event_ids() == [None, "1", "1"]


def test_a_204_ends_a_stream_as_the_server_says_nothing_more_will_come() -> None:
    """The server answers 204 to a thread stream resumed at its thread's final event (the SSE
    way to stop a client reconnecting): the client stops, without asking the thread."""
    script = SseScript()
    script.add(Answer(status=204))
    with sse_server(script), Client(script.url, "key", retry=QUICK) as client:
        events = list(client.stream_events(thread_id=THREAD, after=5))
    assert events == []
    assert [request.path.rsplit("/", 1)[-1] for request in script.requests] == ["events"]
