"""A turn's checkpoint: what the runner writes into the tenant's workspace after every step,
and reads back to resume the turn on another worker."""

from __future__ import annotations

import json
import uuid
from contextlib import nullcontext
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

import orjson
from django.db import connection, transaction
from django.utils import timezone
from psycopg.types.json import Jsonb

from conversations.services import (
    LEASE_FENCE_SQL,
    STEP_EVENT_SQL,
    STEP_FENCE_SQL,
    ThreadUsage,
    lease_fence_params,
)
from core.db import server_bound_cursor
from core.delta_watch import tenant_followed
from workspace.services import WriteFence, document_write
from workspace.services.content import check_size

CHECKPOINT_VERSION = 1
# The folders of the checkpoints, one document per thread and per conversation, named by its id.
# Retention (engine.retention) and its indexes (migration 0001) know them by these prefixes.
THREAD_CHECKPOINTS = "engine/.runtime/threads/"
CONVERSATION_CHECKPOINTS = "engine/.runtime/conversations/"


def thread_checkpoint_path(thread_id: uuid.UUID | str) -> str:
    return f"{THREAD_CHECKPOINTS}{thread_id}.json"


def conversation_checkpoint_path(conversation_id: uuid.UUID | str) -> str:
    return f"{CONVERSATION_CHECKPOINTS}{conversation_id}.json"


def now_iso() -> str:
    return timezone.now().isoformat()


@dataclass
class TurnState:
    """What a checkpoint holds; enough to resume the turn on another worker."""

    thread_id: str
    conversation_id: str | None
    user_id: str
    started_at: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    status: str = "running"
    # Index of the first message of this run: replies before it were recorded by an earlier run
    # of the same thread (one that paused or was suspended) and are context, not the answer.
    reply_from: int = 0
    # Likewise for steps: usage is reported per run, and earlier runs reported theirs.
    steps_from: int = 0

    def to_json(self) -> str:
        # orjson: a step encodes the whole growing state, and the standard library took 127 us
        # for a 50 KB one against 15 us. Text stays as it is (no \u escapes), as before.
        return orjson.dumps({"version": CHECKPOINT_VERSION, **self.__dict__}).decode()

    @classmethod
    def from_json(cls, text: str) -> TurnState | None:
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
            return None
        data.pop("version")
        try:
            return cls(**data)
        except TypeError:
            return None

    def event(self, kind: str, **detail: Any) -> None:
        self.events.append({"at": now_iso(), "kind": kind, **detail})

    @property
    def working_steps(self) -> int:
        """Working steps since the last user message or final reply."""
        count = 0
        for message in reversed(self.messages):
            if message["role"] == "assistant" and not message.get("final", True):
                count += 1
            else:
                break
        return count

    @property
    def needs_step(self) -> bool:
        """The model owes a reply: the last message is a user's, or a working step."""
        if not self.messages:
            return False
        last = self.messages[-1]
        return last["role"] == "user" or not last.get("final", True)

    @property
    def response(self) -> str:
        finals = [
            message["content"]
            for message in self.messages[self.reply_from :]
            if message["role"] == "assistant" and message["final"]
        ]
        return "\n\n".join(finals)

    def response_at_limit(self, limit: str) -> str:
        """The reply of a turn that a limit ends: its answers so far and, when it still owed one,
        its last working output and a sentence naming ``limit``. Never empty."""
        parts = [self.response] if self.response else []
        if self.needs_step or not parts:
            last = self.messages[-1] if len(self.messages) > self.reply_from else {}
            if last.get("role") == "assistant" and not last["final"] and last["content"]:
                parts.append(last["content"])
            parts.append(f"I stopped before I could finish: {limit}.")
        return "\n\n".join(parts)

    def usage(self) -> ThreadUsage:
        steps = self.steps[self.steps_from :]
        return ThreadUsage(
            steps=len(steps),
            input_tokens=sum(step["input_tokens"] for step in steps),
            output_tokens=sum(step["output_tokens"] for step in steps),
            cost_usd=sum((Decimal(str(step["cost_usd"])) for step in steps), Decimal(0)),
            model_ms=sum(step["model_ms"] for step in steps),
            model_calls=[
                {"step": s["n"], "started_at": s["started_at"], "ended_at": s["ended_at"]}
                for s in steps
            ],
        )


def checkpoint_load(*, user_id: str, thread_id: uuid.UUID | str) -> TurnState | None:
    """The thread's last checkpoint (None when it has none, or one this version cannot read)."""
    with server_bound_cursor() as cursor:
        cursor.execute(
            "SELECT content FROM workspace_document WHERE user_id = %s AND path = %s",
            [user_id, thread_checkpoint_path(thread_id)],
        )
        row = cursor.fetchone()
    return TurnState.from_json(row[0]) if row and row[0] else None


def checkpoint_save(
    state: TurnState,
    *,
    user_id: str,
    changed_by: str,
    conversation_too: bool = False,
    lease_epoch: int | None = None,
    step: dict[str, Any] | None = None,
) -> None:
    """Write the turn's state into ``user_id``'s workspace (one upsert per document: runtime
    paths are never indexed). A step's checkpoint alone is one statement, in autocommit.

    ``lease_epoch``: the thread's ``claim_count`` when this worker claimed it. The write is
    then fenced (``WriteFenced``) once anyone has claimed the thread since, in the same
    statement: a worker that was paused past its lease cannot overwrite its successor's state.
    ``step`` (with ``lease_epoch``): the model step this checkpoint records, which becomes the
    thread's ``step`` event in the same statement; fenced too once the thread no longer runs (a
    stop or a requeue takes no new claim, and the event would follow the thread's final one).
    """
    fence = None
    if lease_epoch is not None:
        params = lease_fence_params(state.thread_id, lease_epoch, user_id=user_id)
        fence = (
            WriteFence(LEASE_FENCE_SQL, params)
            if step is None
            else WriteFence(
                STEP_FENCE_SQL,
                {
                    **params,
                    "fence_step": Jsonb(step),
                    "fence_unfollowed": _unfollowed(user_id, conversation_too=conversation_too),
                },
                effect=STEP_EVENT_SQL,
            )
        )
    # user_id is the thread's owner, never state.user_id: a checkpoint's content is only JSON in
    # a workspace document, and must not choose whose workspace the next write lands in.
    # savepoint=False: inside a caller's transaction (the inbox take, a wrapper's lock) the
    # writes commit or roll back with it, and a savepoint would only add round trips.
    content = state.to_json()
    # Refused before the atomic block: raised inside it, the error would mark a caller's
    # transaction (the outcome's, for the final checkpoint) for rollback too.
    check_size(content)
    with transaction.atomic(savepoint=False) if conversation_too else nullcontext():
        document_write(
            user_id=user_id,
            path=thread_checkpoint_path(state.thread_id),
            content=content,
            changed_by=changed_by,
            fence=fence,
        )
        if conversation_too and state.conversation_id:
            document_write(
                user_id=user_id,
                path=conversation_checkpoint_path(state.conversation_id),
                content=json.dumps(
                    {
                        "conversation_id": state.conversation_id,
                        "thread_id": state.thread_id,
                        "status": state.status,
                        "steps": len(state.steps),
                        "updated_at": now_iso(),
                    }
                ),
                changed_by=changed_by,
                fence=fence,
            )


def _unfollowed(user_id: str, *, conversation_too: bool) -> str:
    """'on' when nobody follows ``user_id`` live (core.delta_watch): the step's event is then
    recorded without a notification. Never inside a transaction (a caller's, or the one
    ``conversation_too`` opens), whose other events must still notify: the setting lasts until
    its commit."""
    quiet = not conversation_too and not connection.in_atomic_block and not tenant_followed(user_id)
    return "on" if quiet else "off"


class CheckpointSave(Protocol):
    """How a turn writes its checkpoints: ``checkpoint_save``, or a wrapper around it (the turns
    benchmark's baseline takes a global lock first)."""

    def __call__(
        self,
        state: TurnState,
        *,
        user_id: str,
        changed_by: str,
        conversation_too: bool = False,
        lease_epoch: int | None = None,
        step: dict[str, Any] | None = None,
    ) -> None: ...
