"""The streams benchmark's client (see bench/streams.py): SSE streams on real TCP connections to
serve's public port, each on its own socket, all in one asyncio loop in a process of its own, so
its receive times are not delayed by the tenants' threads in the driver (another interpreter
lock) and its CPU is measured apart.

The driver talks to it through a pipe: ``plain`` GETs each stream's conversation once, as
many at a time as the opens will be (the control: the request threads, and the database
connections their pools open for them, that so many requests at once take), ``open`` opens every
stream (at most ``concurrency`` at
a time; each is open once its response's head arrives), ``take`` hands over and forgets what
the active streams received since the last ``take`` (each delta's lag: the receive time minus
the delta's ``at``, when the engine had the text), ``close`` hangs up on all and ends the
process. A stream the server ends (its lifetime) is opened again with its Last-Event-ID, as a
browser's EventSource would.
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any


@dataclass(frozen=True)
class Watch:
    key: str
    conversation_id: str
    active: bool  # a conversation whose tenant runs turns: its deltas are timed


@dataclass
class Opened:
    seconds: float  # until every stream was open
    each: list[float]  # connect -> response head, per stream
    failures: list[str]


@dataclass
class Received:
    lags: list[float] = field(default_factory=list)  # seconds, every delta on an active stream
    first_lags: list[float] = field(default_factory=list)  # the first delta of each step
    deltas_idle: int = 0  # deltas on idle streams: there should be none
    frames: int = 0  # every other event (entries, thread events)
    keepalives: int = 0
    reopened: int = 0  # streams the server ended, opened again


def _request(watch: Watch, host: str, last_id: str | None, *, plain: bool = False) -> bytes:
    """The stream's request, or with ``plain`` a GET of the conversation (the control)."""
    path = f"/api/v1/conversations/{watch.conversation_id}"
    lines = [
        f"GET {path if plain else path + '/events'} HTTP/1.1",
        f"Host: {host}",
        f"Authorization: Bearer {watch.key}",
        "Connection: close" if plain else "Accept: text/event-stream",
    ]
    if last_id is not None:
        lines.append(f"Last-Event-ID: {last_id}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class Stream(asyncio.Protocol):
    """One stream: the response's head, then its chunks, then its events."""

    def __init__(self, client: Client, watch: Watch):
        self.client = client
        self.watch = watch
        self.head: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.last_id: str | None = None
        self.steps: set[tuple[str, int]] = set()
        self._raw = b""
        self._chunk_left = 0  # bytes of the current chunk still to come; -2: its CRLF
        self._events = b""
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(_request(self.watch, self.client.host, self.last_id))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self._raw += data
        if not self.head.done():
            end = self._raw.find(b"\r\n\r\n")
            if end < 0:
                return
            status = int(self._raw.split(b" ", 2)[1])
            self._raw = self._raw[end + 4 :]
            self.head.set_result(status)
            if status != 200:
                self.closing = True
                assert self.transport is not None
                self.transport.close()
                return
        self._dechunk()
        while (end := self._events.find(b"\n\n")) >= 0:
            block, self._events = self._events[:end], self._events[end + 2 :]
            self._event(block, now)

    def _dechunk(self) -> None:
        while self._raw:
            if self._chunk_left < 0:  # the CRLF after a chunk
                if len(self._raw) < 2:
                    return
                self._raw, self._chunk_left = self._raw[2:], 0
            elif self._chunk_left > 0:
                take = min(self._chunk_left, len(self._raw))
                self._events += self._raw[:take]
                self._raw = self._raw[take:]
                self._chunk_left -= take
                if self._chunk_left == 0:
                    self._chunk_left = -2
            else:
                end = self._raw.find(b"\r\n")
                if end < 0:
                    return
                self._chunk_left = int(self._raw[:end].split(b";")[0], 16)
                self._raw = self._raw[end + 2 :]
                if self._chunk_left == 0:  # the last chunk: the server ends the stream
                    self._raw = b""
                    return

    def _event(self, block: bytes, now: float) -> None:
        received = self.client.received
        if block.startswith(b":"):
            received.keepalives += 1
            return
        kind, data = "", b""
        for line in block.split(b"\n"):
            name, _, value = line.partition(b": ")
            if name == b"event":
                kind = value.decode()
            elif name == b"data":
                data = value
            elif name == b"id":
                self.last_id = value.decode()
        if kind != "delta":
            received.frames += 1
            return
        if not self.watch.active:
            received.deltas_idle += 1
            return
        delta: dict[str, Any] = json.loads(data)
        lag = now - float(delta["at"])
        received.lags.append(lag)
        step = (str(delta["thread_id"]), int(delta["step"]))
        if step not in self.steps:
            self.steps.add(step)
            received.first_lags.append(lag)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(exc or ConnectionError("closed before the response's head"))
        elif not self.closing and not self.client.closing:
            self.client.reopen(self)


class Client:
    def __init__(self, host: str, port: int, watches: list[Watch], concurrency: int):
        self.host, self.port = host, port
        self.watches = watches
        self.concurrency = concurrency
        self.streams: list[Stream] = []
        self.received = Received()
        self.closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def _connect(self, stream: Stream) -> float:
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        await loop.create_connection(lambda: stream, self.host, self.port)
        status = await stream.head
        if status != 200:
            raise ConnectionError(f"HTTP {status}")
        return time.perf_counter() - started

    async def _plain(self, watch: Watch) -> float:
        """GET the conversation and read the whole response (the control for the opens)."""
        started = time.perf_counter()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        writer.write(_request(watch, self.host, None, plain=True))
        answer = await reader.read()
        writer.close()
        status = int(answer.split(b" ", 2)[1]) if answer else 0
        if status != 200:
            raise ConnectionError(f"HTTP {status}")
        return time.perf_counter() - started

    async def _each(self, call: Callable[[Watch], Awaitable[float]]) -> Opened:
        """``call`` for every watch, ``concurrency`` at a time."""
        gate = asyncio.Semaphore(self.concurrency)
        failures: list[str] = []

        async def one(watch: Watch) -> float | None:
            async with gate:
                try:
                    return await call(watch)
                except OSError as error:
                    failures.append(f"{watch.conversation_id}: {error!r}")
                    return None

        started = time.perf_counter()
        each = await asyncio.gather(*(one(watch) for watch in self.watches))
        return Opened(time.perf_counter() - started, [s for s in each if s is not None], failures)

    async def open(self) -> Opened:
        async def one(watch: Watch) -> float:
            stream = Stream(self, watch)
            seconds = await self._connect(stream)
            self.streams.append(stream)
            return seconds

        return await self._each(one)

    def reopen(self, ended: Stream) -> None:
        self.received.reopened += 1
        self.streams.remove(ended)
        stream = Stream(self, ended.watch)
        stream.last_id, stream.steps = ended.last_id, ended.steps

        async def again() -> None:
            try:
                await self._connect(stream)
                self.streams.append(stream)
            except OSError:
                pass  # counted as reopened, not open: the figures say how many are open

        task = asyncio.get_running_loop().create_task(again())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def take(self) -> Received:
        taken, self.received = self.received, Received()
        return taken

    def close(self) -> None:
        self.closing = True
        for stream in self.streams:
            if stream.transport is not None:
                stream.transport.close()


async def _serve(pipe: Connection, client: Client) -> None:
    loop = asyncio.get_running_loop()
    while True:
        command = await loop.run_in_executor(None, pipe.recv)
        if command == "open":
            pipe.send(await client.open())
        elif command == "plain":
            pipe.send(await client._each(client._plain))
        elif command == "take":
            pipe.send((client.take(), len(client.streams)))
        elif command == "close":
            client.close()
            await asyncio.sleep(0.5)  # the FINs leave before the loop ends
            pipe.send(client.take())
            return


def run(pipe: Connection, host: str, port: int, watches: list[Watch], concurrency: int) -> None:
    """The client process's body (multiprocessing's target)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = len(watches) + 256
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    asyncio.run(_serve(pipe, Client(host, port, watches, concurrency)))
