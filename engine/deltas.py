"""Token deltas: a model step's text as it is produced, published with ``NOTIFY ironclaw_deltas``
and never stored.

A notification's payload is ``"<conversation_id> <thread_id> <json>"`` (``-`` for a thread
without a conversation), the JSON being ``{"thread_id", "step", "offset", "text", "at"}``: the
step's text from character ``offset`` on (Unicode code points), produced at ``at`` (Unix
seconds). A listener keeps one buffer per thread and step and applies ``buf = buf[:offset] +
text``, so a delta sent again, or one that starts earlier than the listener's buffer ends, is
harmless. Offset 0 carries the whole text so far, as long as the payload stays within
``MAX_PAYLOAD_BYTES`` (PostgreSQL refuses one of 8,000 bytes or more); past that, only what the
listener lacks, split into as many notifications as it takes.

Nothing here may fail a turn: the text is also in the step's reply, which the checkpoint and the
outcome record as before. A listener that missed deltas (it connected late, the database
restarted) sees the whole reply in the conversation's entries anyway.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Sequence

from django.conf import settings

from conversations.errors import ThreadNotFound
from conversations.models import Thread
from conversations.services import lease_check
from core.db import server_bound_cursor
from core.delta_watch import tenant_followed
from core.notify import DELTAS_CHANNEL, notify_many
from engine.delta_sender import delta_sender

logger = logging.getLogger(__name__)

# PostgreSQL's limit is 8,000 bytes; the rest is headroom.
MAX_PAYLOAD_BYTES = 7_900
# An external engine's delta: the thread's lease, read in one indexed statement.
_LEASE_SQL = (
    "SELECT conversation_id, state, lease_owner, claim_count FROM conversations_thread"
    " WHERE id = %s AND user_id = %s"
)


def _json_text(text: str) -> int:
    """The UTF-8 size of ``text`` as a JSON string's content (without its quotes)."""
    return len(json.dumps(text, ensure_ascii=False).encode()) - 2


def _encodable(text: str) -> str:
    """``text`` with any lone surrogate (a model's broken escape) replaced by "?": one character
    for one, so offsets stay true, and the payload is valid UTF-8, which PostgreSQL requires."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="replace").decode()
    return text


def delta_payloads(
    *,
    conversation_id: uuid.UUID | str | None,
    thread_id: uuid.UUID | str,
    step: int,
    offset: int,
    text: str,
    at: float,
) -> list[str]:
    """The notifications that carry ``text`` from character ``offset`` on: one when it fits in
    ``MAX_PAYLOAD_BYTES``, else consecutive pieces split between characters, each nearly as
    large as fits."""
    prefix = f"{conversation_id or '-'} {thread_id} "
    text = _encodable(text)
    payloads: list[str] = []
    start = 0
    while True:
        body = {
            "thread_id": str(thread_id),
            "step": step,
            "offset": offset + start,
            "text": "",
            "at": at,
        }
        budget = MAX_PAYLOAD_BYTES - len(_payload(prefix, body).encode())
        count = _fitting(text, start, budget)
        body["text"] = text[start : start + count]
        payloads.append(_payload(prefix, body))
        start += count
        if start >= len(text):
            return payloads


def _payload(prefix: str, body: dict[str, object]) -> str:
    # Compact, and UTF-8 as it is: an escaped character would take up to twelve bytes.
    return prefix + json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def _fitting(text: str, start: int, budget: int) -> int:
    """How many characters of ``text`` from ``start`` fit in ``budget`` bytes of JSON string,
    nearly as many as can. A character takes one byte at least (so the first ``budget`` are the
    most that can fit) and six at most (a control character's ``\\u001f``, so a few always do).
    Too many shrink in proportion to the overshoot: two or three encodings for most text, where
    halving would take a dozen."""
    count = min(len(text) - start, budget)
    size = _json_text(text[start : start + count])
    while size > budget:
        count = max(1, min(count - 1, count * budget // size))
        size = _json_text(text[start : start + count])
    return count


def deltas_notify(payloads: Sequence[str]) -> None:
    """Send ``payloads`` on ``ironclaw_deltas``: one statement on this thread's connection,
    delivered when it commits (at once in autocommit, without waiting for the disk)."""
    notify_many(DELTAS_CHANNEL, list(payloads))


class DeltaPace:
    """When a turn last published a delta: shared by the publishers of its steps, so that a turn
    publishes at most one delta every ``ENGINE_DELTA_INTERVAL_MS`` however short its steps are
    (each delta wakes every listening process: eight 125 ms steps published two each)."""

    def __init__(self) -> None:
        self.sent_at: float | None = None


class DeltaPublisher:
    """The deltas of one model step of one thread, fed the text so far as it grows.

    The first delta goes at once; after it, at most one every ``ENGINE_DELTA_INTERVAL_MS``
    (the latest text then; what came meanwhile is coalesced into it), and ``close`` sends the
    last text. A text the listeners already have is not sent again. With a ``pace`` (the turn's)
    the interval runs across the turn's steps: a step's first delta waits for it too, and
    ``close`` sends the last text only once it has run out (the step's entry or its next step
    follows at once). ``feed`` runs on the model call's own thread, which holds no database
    connection: a delta is queued for the process's sender (``engine.delta_sender``), which
    sends it on a connection of its own, so a turn never holds one while its model works, and
    a failure (the database is down) never reaches the turn.
    """

    def __init__(
        self,
        *,
        thread_id: uuid.UUID | str,
        conversation_id: uuid.UUID | str | None,
        step: int,
        interval_ms: int | None = None,
        pace: DeltaPace | None = None,
        user_id: str | None = None,
    ):
        self.thread_id = thread_id
        # Given, the deltas go out only while someone follows the tenant (core.delta_watch).
        self.user_id = user_id
        self.conversation_id = conversation_id
        self.step = step
        interval_ms = settings.ENGINE_DELTA_INTERVAL_MS if interval_ms is None else interval_ms
        # 0 disables deltas.
        self.enabled = interval_ms > 0
        self.interval = interval_ms / 1000
        self.published = 0  # notifications sent
        self._lock = threading.Lock()
        self._closed = False
        # What listeners have (the text last published), and when the last publish was.
        self._sent = ""
        self._pace = pace or DeltaPace()
        self._shared = pace is not None
        self._pending: tuple[str, float] | None = None

    def feed(self, text_so_far: str) -> None:
        """The step's text so far; published now or coalesced into the next delta."""
        if self._closed or not self.enabled:
            return
        with self._lock:
            if self._closed:
                return
            self._pending = (text_so_far, time.time())
            if self._due():
                self._flush()

    def _due(self) -> bool:
        sent_at = self._pace.sent_at
        return sent_at is None or time.monotonic() - sent_at >= self.interval

    def close(self) -> None:
        """The step is over: publish the last text, if the listeners do not have it yet."""
        with self._lock:
            if not self._closed:
                self._closed = True
                if self._due() or not self._shared:
                    self._flush()

    def abandon(self) -> None:
        """The step is over without a reply (interrupted, failed, timed out): nothing more is
        sent, whatever the model call, if it is still running, feeds."""
        self._closed = True

    def _flush(self) -> None:
        if self._pending is None:
            return
        (text, at), self._pending = self._pending, None
        if text == self._sent:
            return
        if self.user_id is not None and not tenant_followed(self.user_id):
            # Nobody follows: once someone does, the text goes out whole again (offset 0).
            self._sent = ""
            return
        if len(text) <= MAX_PAYLOAD_BYTES:
            whole = delta_payloads(
                conversation_id=self.conversation_id,
                thread_id=self.thread_id,
                step=self.step,
                offset=0,
                text=text,
                at=at,
            )
            payloads = whole if len(whole) == 1 else self._rest(text, at)
        else:
            payloads = self._rest(text, at)
        self._pace.sent_at = time.monotonic()
        if self._publish(payloads):
            self._sent = text
            self.published += len(payloads)

    def _rest(self, text: str, at: float) -> list[str]:
        """What the listeners lack of ``text``: from the end of what they have, when ``text``
        goes on from it (as a model's text does), else from where the two part."""
        if text.startswith(self._sent):
            offset = len(self._sent)
        else:
            offset = next(
                (i for i, (a, b) in enumerate(zip(text, self._sent, strict=False)) if a != b),
                min(len(text), len(self._sent)),
            )
        return delta_payloads(
            conversation_id=self.conversation_id,
            thread_id=self.thread_id,
            step=self.step,
            offset=offset,
            text=text[offset:],
            at=at,
        )

    def _publish(self, payloads: list[str]) -> bool:
        # Queued for this process's sender (engine.delta_sender): no statement on this thread,
        # which only the model call's is.
        delta_sender().send(payloads)
        return True


def thread_delta_publish(
    *,
    user_id: str,
    thread_id: uuid.UUID,
    worker_id: str,
    lease_epoch: int,
    step: int,
    offset: int,
    text: str,
) -> int:
    """An external engine's delta: published, as the built-in engine's are, while ``worker_id``
    holds the thread's lease of epoch ``lease_epoch`` (``lease_lost`` otherwise). Two
    statements: the lease check and the notifications. Not coalesced (the engine chooses its
    pace) and not stored. Returns how many notifications carried it (0 with deltas off)."""
    with server_bound_cursor() as cursor:
        cursor.execute(_LEASE_SQL, [thread_id, user_id])
        row = cursor.fetchone()
    if row is None:
        raise ThreadNotFound()
    conversation_id, state, lease_owner, claim_count = row
    lease_check(
        Thread(state=state, lease_owner=lease_owner, claim_count=claim_count),
        worker_id,
        lease_epoch,
    )
    if settings.ENGINE_DELTA_INTERVAL_MS == 0:
        return 0
    payloads = delta_payloads(
        conversation_id=conversation_id,
        thread_id=thread_id,
        step=step,
        offset=offset,
        text=text,
        at=time.time(),
    )
    deltas_notify(payloads)
    return len(payloads)
