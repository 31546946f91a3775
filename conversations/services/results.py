"""What the conversation services take and return."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
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
