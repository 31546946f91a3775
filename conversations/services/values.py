"""The values the conversation services take (an outcome, a usage report) and return (what a
call did: a message's action, a claim, an outcome, a clear, a sweep, an operator's action)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from conversations.models import Conversation, ConversationEntry, Thread

Action = Literal["spawned", "injected", "resumed", "queued"]
OutcomeKind = Literal["completed", "stopped", "max_iterations", "failed", "gate_paused"]
OUTCOME_KINDS: tuple[OutcomeKind, ...] = (
    "completed",
    "stopped",
    "max_iterations",
    "failed",
    "gate_paused",
)


@dataclass(frozen=True)
class MessageResult:
    conversation_id: uuid.UUID
    # The thread that got the message; for "queued", the live thread it waits behind.
    thread_id: uuid.UUID
    action: Action
    seq: int
    interrupted_thread_id: uuid.UUID | None = None


@dataclass(frozen=True)
class ThreadOutcome:
    kind: OutcomeKind
    response: str | None = None
    error: str | None = None
    gate_name: str | None = None
    gate_action: str | None = None

    def as_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        if self.response is not None:
            data["response"] = self.response
        if self.error is not None:
            data["error"] = self.error
        if self.kind == "gate_paused":
            data["gate"] = {"name": self.gate_name, "action": self.gate_action}
        return data


@dataclass(frozen=True)
class ThreadUsage:
    """What a run cost, reported by the engine with its outcome (totals of the run) or with a
    heartbeat (the increase since the previous report); the thread sums them."""

    steps: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    model_ms: float = 0.0
    # One {"step", "started_at", "ended_at"} per model call (outcomes only).
    model_calls: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ClaimedThread:
    """A thread an engine claimed with ``threads/next``, with the messages it must take."""

    thread: Thread
    inbox: list[ConversationEntry]


@dataclass(frozen=True)
class OutcomeResult:
    thread: Thread
    entries: list[ConversationEntry]
    follow_up: Thread | None = None


@dataclass(frozen=True)
class ClearResult:
    conversation: Conversation
    deleted_entries: int
    untracked_thread_ids: list[uuid.UUID]


@dataclass
class SweepResult:
    requeued: list[uuid.UUID] = field(default_factory=list)
    stopped: list[uuid.UUID] = field(default_factory=list)


@dataclass(frozen=True)
class OperatorActionResult:
    """What an operator's action did to one thread; ``done`` is False when it was skipped, and
    ``message`` says what happened or why not. ``state``: the thread's state afterwards."""

    thread_id: uuid.UUID
    done: bool
    message: str
    state: str = ""
