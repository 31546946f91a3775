"""The HTTP front: waitress, with request deadlines and the API's JSON error shape.

Waitress reads every request whole (headers and body, de-chunking ``Transfer-Encoding: chunked``)
in its I/O thread before an application thread sees it, so a client that trickles its body costs a
buffer, not a request thread. Three things are added here: a deadline for receiving a request (a
request still incomplete after ``WEB_REQUEST_TIMEOUT`` seconds is answered 408, however steadily it
trickles), the server's own error answers (400, 408, 413, 431, 500) in the JSON shape every
other error has, and HEAD responses without a body, whatever the application returned.

An event stream's view hands its connection over instead of keeping a thread (``core.streams``):
waitress then writes nothing of the response and forgets the connection, and the hub serves it.
"""

from __future__ import annotations

import json
import logging
import resource
import signal
import socket
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, Task, ThreadedTaskDispatcher, WSGITask
from waitress.utilities import BadRequest

from core import stream_handoff, streams
from core.api.exceptions import error_body
from core.metrics import REQUEST_DURATION

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("ironclaw_site.access")
# The route label of requests the web server answered itself (malformed, too large, too slow).
REFUSED_ROUTE = "refused"

# The server's own errors, by status, as the API names them.
ERROR_CODES = {
    400: "bad_request",
    408: "request_timeout",
    413: "payload_too_large",
    431: "request_header_too_large",
    500: "internal_error",
}


class RequestTimeout(BadRequest):
    code = 408
    reason = "Request Timeout"


class HeadersOnlyForHead(Task):
    """Send a HEAD request's response headers and nothing after them.

    Django serves HEAD with the view's GET and returns the GET's body, and waitress writes it:
    on a keep-alive connection the client then reads that body as the start of the next response.
    Dropping it here, where every response passes, means no view has to get HEAD right. The
    headers stay the GET's, Content-Length included (RFC 9110 section 9.3.2)."""

    @property
    def is_head(self) -> bool:
        # A request refused before its request line was parsed has no command.
        return getattr(self.request, "command", None) == "HEAD"

    def write(self, data: bytes) -> None:
        # Still called with the body's first chunk: that writes the headers, whose Content-Length
        # waitress may have just taken from it.
        super().write(b"" if self.is_head else data)

    def finish(self) -> None:
        if not self.is_head:
            super().finish()
        elif not self.wrote_header:
            # An empty body: the headers still go. A response without a Content-Length is
            # announced chunked, as the GET's would be, but gets no terminating chunk either.
            self.write(b"")


class ApplicationTask(HeadersOnlyForHead, WSGITask):
    """A request for the application, which may hand its connection to the streams' hub.

    The hand-off is offered in the environ (``core.stream_handoff.Handoff``). When the view
    took it and the response that came out of the middleware is a 200, its body (the replay) is
    kept rather than written, and the hub gets a duplicate of the socket with the head built
    here (no Content-Length: chunked for HTTP/1.1, up to the close for 1.0;
    ``Connection: close``).
    Waitress, having written nothing, then closes its own descriptor as after any response with
    ``Connection: close``: a close, never a shutdown, so the connection lives on in the hub's.
    Any other response is written as usual and the stream's subscription cancelled."""

    def __init__(self, channel: HTTPChannel, request: Any):
        super().__init__(channel, request)
        self.handoff = stream_handoff.Handoff()
        self.first_bytes: list[bytes] = []

    def get_environment(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environment()
        if self.is_head:
            # A file response would otherwise be sent by waitress straight from the file.
            environ.pop("wsgi.file_wrapper", None)
        environ[stream_handoff.HANDOFF_ENVIRON_KEY] = self.handoff
        return environ

    @property
    def hands_off(self) -> bool:
        return (
            self.handoff.subscription is not None
            and self.complete
            and self.status.startswith("200 ")
            and not self.is_head
        )

    def service(self) -> None:
        try:
            super().service()
        finally:
            if self.handoff.subscription is not None:
                # Nothing once adopted; otherwise its subscriptions and key slot go.
                self.handoff.subscription.cancel()

    def write(self, data: bytes) -> None:
        if self.hands_off:
            self.first_bytes.append(data)
            # Kept, not written: waitress must not count it against the Content-Length.
            self.content_length = None
        else:
            super().write(data)

    def finish(self) -> None:
        if self.hands_off:
            self.hand_off()
        else:
            super().finish()

    def hand_off(self) -> None:
        subscription = self.handoff.subscription
        assert subscription is not None
        self.remove_content_length_header()
        self.content_length = None
        # Before the head is built: it then says Connection: close, and waitress closes its
        # descriptor (only that) once this task ends.
        self.set_close_on_finish()
        head = self.build_response_header()
        channel = self.channel
        # The I/O thread (which keeps reading the connection, channel_request_lookahead) closes
        # a channel's socket only in handle_close, after marking it unconnected under this lock:
        # a connected channel's descriptor cannot be closed, and reused, while it is duplicated.
        with channel.outbuf_lock:
            if not channel.connected or channel.socket is None:
                return  # the client has gone: service() cancels the subscription
            sock = channel.socket.dup()
        subscription.adopt(sock, head, b"".join(self.first_bytes), chunked=self.chunked_response)


class JsonErrorTask(HeadersOnlyForHead, ErrorTask):
    """Answer waitress's own errors (malformed request, limits, timeouts) as JSON."""

    def execute(self) -> None:
        error = self.request.error
        body = json.dumps(
            error_body(ERROR_CODES.get(error.code, "bad_request"), _sentence(error.body))
        ).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)
        # Refused before the app saw it: the access line and the request series come from here.
        REQUEST_DURATION.labels(
            route=REFUSED_ROUTE, method="other", status=str(error.code)
        ).observe(0.0)
        access_logger.info(
            "refused by the web server: %s %s",
            error.code,
            error.reason,
            extra={
                "route": REFUSED_ROUTE,
                "status": error.code,
                "client": self.channel.addr[0] if self.channel.addr else None,
            },
        )


def _sentence(text: str) -> str:
    text = str(text).strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else f"{text}."


class DeadlineChannel(HTTPChannel):
    """A connection that notes when each request started arriving."""

    task_class = ApplicationTask
    error_task_class = JsonErrorTask
    request: Any = None
    request_started_at = 0.0

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.request_started_at = time.monotonic()
        return bool(super().received(data))

    def is_receiving_past(self, deadline: float) -> bool:
        request = self.request
        return (
            request is not None
            and not request.completed
            and not self.will_close
            and self.request_started_at < deadline
        )

    def answer_request_timeout(self, timeout: float) -> None:
        """Turn the request still arriving into a 408 (runs in the I/O thread, like received)."""
        with self.requests_lock:
            request = self.request
            if request is None or request.completed:
                return
            request.error = RequestTimeout(
                f"the request was not received within {timeout:g} seconds"
            )
            request.completed = True
            self.request = None
            self.requests.append(request)
            if len(self.requests) == 1:
                # As in received(): with no request in service, the I/O thread starts the task.
                self.server.add_task(self)


class LivenessProbe:
    """Shows ``serve`` that this process still serves, by touching ``path``.

    The I/O loop queues the probe every second (from ``maintenance``) and a request thread runs
    it like a request: the file stays fresh only while the loop turns and a request thread gets
    free within a while. A process stopped, deadlocked or with every thread stuck stops touching
    it, and ``serve`` kills it (its share of the port's connections would otherwise hang)."""

    def __init__(self, path: Path):
        self.path = path
        self.queued = False

    def service(self) -> None:
        try:
            self.path.touch()
        finally:
            self.queued = False

    def cancel(self) -> None:
        self.queued = False

    def defer(self) -> None:
        pass


class DeadlineServer(TcpWSGIServer):
    channel_class = DeadlineChannel

    def __init__(
        self,
        *args: Any,
        request_timeout: float,
        liveness: LivenessProbe | None = None,
        **kwargs: Any,
    ):
        self.request_timeout = request_timeout
        self.liveness = liveness
        super().__init__(*args, **kwargs)

    def maintenance(self, now: float) -> None:
        # Before waitress's idle check, which would close a stalled connection without a word.
        deadline = time.monotonic() - self.request_timeout
        for channel in list(self.active_channels.values()):
            if isinstance(channel, DeadlineChannel) and channel.is_receiving_past(deadline):
                channel.answer_request_timeout(self.request_timeout)
        if self.liveness is not None and not self.liveness.queued:
            self.liveness.queued = True
            self.task_dispatcher.add_task(self.liveness)
        super().maintenance(now)


def listening_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket that other processes of the same user may bind too.

    ``SO_REUSEPORT`` lets ``WEB_CONCURRENCY`` independent web processes share the port; the
    kernel spreads connections over them, and one dying does not stop the others.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind((host.strip("[]"), port))
    return listener


def server_create(
    application: Any,
    listener: socket.socket,
    *,
    threads: int,
    request_timeout: float,
    max_header_bytes: int,
    max_body_bytes: int,
    trusted_proxy: str | None = None,
    trusted_proxy_headers: Sequence[str] = (),
    trusted_proxy_count: int = 1,
    liveness_file: Path | None = None,
) -> DeadlineServer:
    """The server ``serve`` runs, on ``listener`` (tests run it in a thread of their own)."""
    adjustments = Adjustments(
        sockets=[listener],
        threads=threads,
        # A connection that sends nothing for this long is closed (one mid-request gets its 408
        # first); long-polls in service are never cut, whatever their length.
        channel_timeout=request_timeout,
        # How often deadlines are checked: the 408 comes within a second of its deadline.
        cleanup_interval=1,
        # Idle keep-alive connections and slow clients cost a buffer each, not a thread; the
        # default of 100 would let 100 slow clients stop accepting altogether.
        connection_limit=1000,
        # Keep reading a connection while its request is served, so a client that hangs up
        # mid-long-poll is seen (environ["waitress.client_disconnected"]) and its wait ends
        # without claiming a thread for nobody.
        channel_request_lookahead=1,
        # poll(), not select(): the event streams' sockets push this process's descriptors past
        # 1024, which select() cannot watch.
        asyncore_use_poll=True,
        max_request_header_size=max_header_bytes,
        max_request_body_size=max_body_bytes,
        ident="ironclaw_site",
        # Forwarding headers count only from this peer (their client address, scheme and host
        # become the request's); from any other peer they are dropped before the app sees them.
        **(
            {
                "trusted_proxy": trusted_proxy,
                "trusted_proxy_headers": set(trusted_proxy_headers),
                "trusted_proxy_count": trusted_proxy_count,
            }
            if trusted_proxy
            else {}
        ),
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(threads)
    return DeadlineServer(
        application,
        map={},
        _sock=listener,
        dispatcher=dispatcher,
        adj=adjustments,
        bind_socket=False,
        sockinfo=(listener.family, listener.type, listener.proto, listener.getsockname()),
        request_timeout=request_timeout,
        liveness=LivenessProbe(liveness_file) if liveness_file else None,
    )


def open_files_limit_raise() -> None:
    """Let this process open as many descriptors as its hard limit allows.

    Each event stream holds a socket, and the usual soft limit (1024) would refuse connections
    after about a thousand of them; the hard limit is what the administrator meant to allow."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError) as error:
            logger.warning("could not raise the open files limit from %s: %s", soft, error)


def serve(
    application: Any,
    *,
    host: str,
    port: int,
    threads: int,
    request_timeout: float,
    max_header_bytes: int,
    max_body_bytes: int,
    trusted_proxy: str | None = None,
    trusted_proxy_headers: Sequence[str] = (),
    trusted_proxy_count: int = 1,
    liveness_file: Path | None = None,
) -> None:
    """Serve ``application`` until SIGTERM or SIGINT; requests in flight get a few seconds, event
    streams end at once (their clients reconnect to another process)."""
    open_files_limit_raise()
    server = server_create(
        application,
        listening_socket(host, port),
        threads=threads,
        request_timeout=request_timeout,
        max_header_bytes=max_header_bytes,
        max_body_bytes=max_body_bytes,
        trusted_proxy=trusted_proxy,
        trusted_proxy_headers=trusted_proxy_headers,
        trusted_proxy_count=trusted_proxy_count,
        liveness_file=liveness_file,
    )

    def stop(signum: int, frame: FrameType | None) -> None:
        # Started here, not after the requests in flight are done: the streams' last bytes go
        # while waitress waits for its threads.
        streams.shutdown(timeout=0)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    logger.info("serving on http://%s:%s with %s threads", host, port, threads)
    try:
        server.run()
    finally:
        streams.shutdown()
