"""Every write of the conversations app.

Names follow the house style (``<noun>_<verb>``); DESIGN.md's names map as follows:
``get_or_create_conversation`` -> ``conversation_get_or_create``, ``handle_user_message`` ->
``message_handle``, ``claim_thread`` -> ``thread_claim``, ``renew_lease`` ->
``thread_lease_renew``, ``take_inbox`` -> ``thread_inbox_take``, ``record_thread_outcome`` ->
``thread_outcome_record``, ``clear_conversation`` -> ``conversation_clear``,
``start_new_conversation`` -> ``conversation_start_new``; ``list_conversations`` is the selector
``conversations.selectors.conversation_list``.

Locking policy (parents before children, one short transaction per call, nothing slow inside):
1. the conversation row, ``FOR NO KEY UPDATE`` (plain ``FOR UPDATE`` would also block the
   foreign-key ``KEY SHARE`` locks that inserting entries and threads takes);
2. then thread rows, ``FOR NO KEY UPDATE``;
3. then entry rows (updated or deleted).
Thread-only operations (claim, heartbeat, inbox, sweeper) start at step 2 and never wait for a
conversation, so no cycle exists. Every wait is bounded by ``SET LOCAL lock_timeout`` from
``CONVERSATION_LOCK_TIMEOUT_MS``; exceeding it is ``ConversationBusy`` (HTTP 409).
"""

from __future__ import annotations

import datetime
import re
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Literal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q
from django.db.models.functions import Coalesce, Now
from django.utils import timezone
from procrastinate.contrib.django import app as procrastinate_app
from procrastinate.exceptions import AlreadyEnqueued

from accounts.tenancy import user_id_problem
from conversations import selectors
from conversations.errors import (
    ConversationBusy,
    ConversationNotFound,
    InvalidThreadTransition,
    LeaseNotHeld,
    MessageRejected,
    MessageTooLarge,
    OutcomeAlreadyRecorded,
    ThreadBusy,
    ThreadNotClaimable,
)
from conversations.models import (
    LIVE_STATES,
    BusyPolicy,
    ChannelUserIndex,
    Conversation,
    ConversationEntry,
    EntrySender,
    Thread,
    ThreadKind,
    ThreadState,
)
from ironclaw_site.db import bounded_transaction, violated_constraint
from ironclaw_site.errors import Conflict, InvalidInput
from ironclaw_site.text import has_control_characters

CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_SCOPE_LENGTH = 128
MAX_WORKER_ID_LENGTH = 255

# The task conversations.tasks registers to run a thread; THREAD_RUNNER says what it runs.
RUN_THREAD_TASK = "conversations.tasks.run_thread"
RUN_THREAD_QUEUE = "threads"

Action = Literal["spawned", "injected", "resumed", "queued"]
OutcomeKind = Literal["completed", "stopped", "max_iterations", "failed", "gate_paused"]
OUTCOME_KINDS: tuple[OutcomeKind, ...] = (
    "completed",
    "stopped",
    "max_iterations",
    "failed",
    "gate_paused",
)
_OUTCOME_STATE = {
    "completed": ThreadState.COMPLETED,
    "stopped": ThreadState.STOPPED,
    "max_iterations": ThreadState.STOPPED,
    "failed": ThreadState.FAILED,
    "gate_paused": ThreadState.WAITING,
}


# --- Results ---------------------------------------------------------------------------------


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


# --- Validation ------------------------------------------------------------------------------


def _check_user_id(user_id: str) -> None:
    problem = user_id_problem(user_id)
    if problem:
        raise InvalidInput(f"user_id {problem}.", details={"user_id": [problem]})


def channel_key(channel: str, scope: str | None = None) -> str:
    """The conversation key of a channel: ``web``, or ``web:<scope>`` for a scoped conversation."""
    if not CHANNEL_PATTERN.fullmatch(channel or ""):
        problem = "must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        raise InvalidInput(f"channel {problem}.", details={"channel": [problem]})
    if scope is None:
        return channel
    _check_label("scope", scope, max_length=MAX_SCOPE_LENGTH, allow_surrounding_whitespace=False)
    return f"{channel}:{scope}"


def _check_content(content: str) -> None:
    if not content or not content.strip():
        raise InvalidInput("content must not be empty.", details={"content": ["must not be empty"]})
    limit = settings.CONVERSATION_MAX_MESSAGE_BYTES
    size = len(content.encode("utf-8", errors="surrogatepass"))
    if size > limit:
        problem = f"is {size} bytes; the limit is {limit} bytes (CONVERSATION_MAX_MESSAGE_BYTES)"
        raise MessageTooLarge(f"content {problem}.", details={"content": [problem]})


def _check_worker_id(worker_id: str) -> None:
    # Control characters would make two lease owners that print alike but never match.
    _check_label(
        "worker_id", worker_id, max_length=MAX_WORKER_ID_LENGTH, allow_surrounding_whitespace=True
    )


def _check_label(
    name: str, value: str, *, max_length: int, allow_surrounding_whitespace: bool
) -> None:
    """Refuse an identifier-like text that is blank, too long or holds control characters."""
    trimmed = value.strip()
    if (
        not trimmed
        or (value != trimmed and not allow_surrounding_whitespace)
        or len(value) > max_length
        or has_control_characters(value)
    ):
        problem = f"must be 1-{max_length} characters without control characters"
        if not allow_surrounding_whitespace:
            problem += " or surrounding whitespace"
        raise InvalidInput(f"{name} {problem}.", details={name: [problem]})


def _lease_duration(lease_seconds: int | None) -> datetime.timedelta:
    seconds = settings.THREAD_DEFAULT_LEASE_SECONDS if lease_seconds is None else lease_seconds
    maximum = settings.THREAD_MAX_LEASE_SECONDS
    if not 1 <= seconds <= maximum:
        problem = f"must be between 1 and {maximum}"
        raise InvalidInput(f"lease_seconds {problem}.", details={"lease_seconds": [problem]})
    return datetime.timedelta(seconds=seconds)


# --- Transactions and locks ------------------------------------------------------------------


def _locked_transaction(
    busy: type[Conflict] = ConversationBusy,
) -> AbstractContextManager[None]:
    """One transaction whose every lock wait is bounded by ``CONVERSATION_LOCK_TIMEOUT_MS``;
    a wait past it raises ``busy`` (the row the caller waits for: conversation or thread)."""
    return bounded_transaction(lock_timeout_ms=settings.CONVERSATION_LOCK_TIMEOUT_MS, busy=busy)


def _conversation_lock(conversation_id: uuid.UUID) -> Conversation:
    # NO KEY UPDATE: serialises writers of this conversation but lets other transactions insert
    # rows that reference it (their FK check takes KEY SHARE, which FOR UPDATE would block).
    return Conversation.objects.for_update().get(pk=conversation_id)


def _thread_lock(thread_id: uuid.UUID) -> Thread:
    return Thread.objects.for_update().get(pk=thread_id)


def _thread_run_enqueue(thread_id: uuid.UUID) -> None:
    """Enqueue the thread's run in the surrounding transaction (so it exists iff we commit)."""
    # By name: conversations.tasks imports the services, so the services cannot import it.
    run = procrastinate_app.configure_task(
        name=RUN_THREAD_TASK, queue=RUN_THREAD_QUEUE, queueing_lock=f"thread-run:{thread_id}"
    )
    try:
        # Own savepoint: a duplicate queueing lock is a unique violation that must not abort
        # the caller's transaction.
        with transaction.atomic():
            run.defer(thread_id=str(thread_id))
    except AlreadyEnqueued:
        # A run of this thread is already waiting for a worker; one is enough.
        pass


class _EntryWriter:
    """Allocates gap-free seqs under the conversation lock and writes entries in one statement."""

    def __init__(self, conversation: Conversation):
        self.conversation = conversation
        self.entries: list[ConversationEntry] = []

    def add(
        self,
        sender: EntrySender,
        content: str,
        *,
        thread: Thread | None = None,
        delivered_at: datetime.datetime | None = None,
    ) -> ConversationEntry:
        entry = ConversationEntry(
            conversation=self.conversation,
            user_id=self.conversation.user_id,
            seq=self.conversation.last_seq + len(self.entries) + 1,
            sender=sender,
            content=content,
            thread=thread,
            delivered_at=delivered_at,
        )
        self.entries.append(entry)
        return entry

    def flush(self) -> list[ConversationEntry]:
        if not self.entries:
            return []
        ConversationEntry.objects.bulk_create(self.entries)
        # We hold the row lock, so last_seq read with it is current; F() keeps the update
        # correct even if that ever stopped being true (the unique (conversation, seq) backs it).
        Conversation.objects.filter(pk=self.conversation.pk).update(
            last_seq=F("last_seq") + len(self.entries), updated_at=timezone.now()
        )
        self.conversation.last_seq += len(self.entries)
        written, self.entries = self.entries, []
        return written


# --- Conversations ---------------------------------------------------------------------------


def _conversation_resolve(user_id: str, key: str) -> uuid.UUID:
    found = (
        ChannelUserIndex.objects.filter(user_id=user_id, channel=key)
        .values_list("conversation_id", flat=True)
        .first()
    )
    if found is not None:
        return found
    try:
        # Savepoint: if another transaction wins the unique (user_id, channel) index, our
        # conversation row is rolled back with our index row, so no orphan is left behind.
        with transaction.atomic():
            conversation = Conversation.objects.create(user_id=user_id, channel=key)
            ChannelUserIndex.objects.create(user_id=user_id, channel=key, conversation=conversation)
        return conversation.id
    except IntegrityError as error:
        if violated_constraint(error) != "channel_user_index_unique_pair":
            raise
    # Our insert waited on the index until the winner committed, so its row is visible now.
    return ChannelUserIndex.objects.values_list("conversation_id", flat=True).get(
        user_id=user_id, channel=key
    )


def conversation_get_or_create(
    *, user_id: str, channel: str, scope: str | None = None
) -> Conversation:
    """The current conversation of (channel, user), created race-free through the unique index."""
    _check_user_id(user_id)
    key = channel_key(channel, scope)
    with _locked_transaction():
        conversation_id = _conversation_resolve(user_id, key)
    return Conversation.objects.get(pk=conversation_id)


def conversation_start_new(*, user_id: str, channel: str, scope: str | None = None) -> Conversation:
    """A fresh conversation for (channel, user); the index is re-pointed, the old one kept."""
    _check_user_id(user_id)
    key = channel_key(channel, scope)
    with _locked_transaction():
        conversation = Conversation.objects.create(user_id=user_id, channel=key)
        # One upsert: racing with a first message's get-or-create on the same pair cannot fail.
        ChannelUserIndex.objects.bulk_create(
            [ChannelUserIndex(user_id=user_id, channel=key, conversation=conversation)],
            update_conflicts=True,
            unique_fields=["user_id", "channel"],
            update_fields=["conversation", "updated_at"],
        )
    return conversation


def conversation_busy_policy_set(
    *, user_id: str, conversation_id: uuid.UUID, busy_policy: str | None
) -> Conversation:
    """Set (or with None, reset to the setting's default) the conversation's busy policy."""
    if busy_policy is not None and busy_policy not in BusyPolicy.values:
        problem = f"must be one of {', '.join(BusyPolicy.values)} or null"
        raise InvalidInput(f"busy_policy {problem}.", details={"busy_policy": [problem]})
    with _locked_transaction():
        # The UPDATE waits for the row lock like a message does, so it is bounded the same way.
        updated = Conversation.objects.filter(pk=conversation_id, user_id=user_id).update(
            busy_policy=busy_policy, updated_at=timezone.now()
        )
    if not updated:
        raise ConversationNotFound()
    return Conversation.objects.get(pk=conversation_id)


def conversation_clear(*, user_id: str, conversation_id: uuid.UUID) -> ClearResult:
    """Under the conversation lock: untrack and cancel its threads, then delete its entries.

    A message racing with it either lands before (and is cleared) or after (and starts fresh).
    Seqs are never reused, so ``after_seq`` cursors stay valid.
    """
    with _locked_transaction():
        conversation = selectors.conversation_get_for_update(
            user_id=user_id, conversation_id=conversation_id
        )
        untracked = []
        # Threads before entries: take_inbox locks a thread and then its entries.
        for thread_id in (
            conversation.threads.filter(tracked=True).order_by("pk").values_list("pk", flat=True)
        ):
            thread = _thread_lock(thread_id)
            _thread_cancel(thread, reason="conversation cleared")
            untracked.append(thread.id)
        deleted, _ = conversation.entries.all().delete()
        Conversation.objects.filter(pk=conversation.pk).update(updated_at=timezone.now())
    conversation.refresh_from_db()
    return ClearResult(
        conversation=conversation, deleted_entries=deleted, untracked_thread_ids=untracked
    )


# --- Messages --------------------------------------------------------------------------------


def message_handle(
    *, user_id: str, channel: str, content: str, scope: str | None = None
) -> MessageResult:
    """Append a user message and spawn, inject into, resume or queue behind a thread.

    Locks the conversation row (bounded by the lock timeout: ConversationBusy). A spawned or
    resumed thread's run is enqueued in the same transaction, so it is visible to workers exactly
    when the message is.
    """
    _check_user_id(user_id)
    key = channel_key(channel, scope)
    _check_content(content)
    try:
        with _locked_transaction():
            conversation = _conversation_lock(_conversation_resolve(user_id, key))
            return _message_apply(conversation, content)
    except IntegrityError as error:
        # The one-tracked-foreground-thread index refused a second thread: only reachable if a
        # writer skipped the conversation lock. The database kept the invariant; tell the
        # client to retry instead of failing with a 500.
        if violated_constraint(error) == "thread_one_tracked_foreground_per_conversation":
            raise ConversationBusy() from None
        raise


def _message_apply(conversation: Conversation, content: str) -> MessageResult:
    writer = _EntryWriter(conversation)
    live = Thread.objects.tracked_foreground().filter(conversation=conversation).live().first()
    policy = conversation.effective_busy_policy

    if live is None:
        thread, entry = _thread_spawn(conversation, writer, new_message=content)
        writer.flush()
        return MessageResult(conversation.id, thread.id, "spawned", entry.seq)

    if policy == BusyPolicy.REJECT:
        raise MessageRejected(details={"thread_id": str(live.id)})

    if policy == BusyPolicy.QUEUE:
        # No target thread: it becomes part of the next thread's goal when this one ends.
        entry = writer.add(EntrySender.USER, content)
        writer.flush()
        return MessageResult(conversation.id, live.id, "queued", entry.seq)

    if policy == BusyPolicy.INTERRUPT:
        interrupted = _thread_lock(live.id)
        _thread_cancel(interrupted, reason="interrupted by a new message")
        writer.add(EntrySender.SYSTEM, "Thread interrupted", thread=interrupted)
        # Messages injected into the interrupted thread that it never took (sent while the
        # policy was still inject) would otherwise never reach any thread: its later outcome
        # adds nothing. They join the new goal with any queued ones, in seq order.
        unread = ConversationEntry.objects.undelivered_for(interrupted)
        queued = conversation.entries.queued()
        carried = sorted([*unread, *queued], key=lambda earlier: earlier.seq)
        thread, entry = _thread_spawn(conversation, writer, new_message=content, carried=carried)
        writer.flush()
        return MessageResult(
            conversation.id, thread.id, "spawned", entry.seq, interrupted_thread_id=interrupted.id
        )

    entry = writer.add(EntrySender.USER, content, thread=live)
    if live.state == ThreadState.SUSPENDED:
        writer.add(EntrySender.SYSTEM, "Thread resumed", thread=live)
        writer.flush()
        _thread_run_enqueue(live.id)
        return MessageResult(conversation.id, live.id, "resumed", entry.seq)
    writer.flush()
    if live.state == ThreadState.WAITING:
        # Paused on a gate with nobody running it: this message may resolve the gate.
        _thread_run_enqueue(live.id)
    return MessageResult(conversation.id, live.id, "injected", entry.seq)


def _thread_spawn(
    conversation: Conversation,
    writer: _EntryWriter,
    *,
    new_message: str | None = None,
    carried: list[ConversationEntry] | None = None,
) -> tuple[Thread, ConversationEntry]:
    """Create a tracked foreground thread whose goal is the carried and/or new user messages.

    Caller holds the conversation lock and flushes ``writer``. Returns the thread and the last
    user entry of its goal.
    """
    now = timezone.now()
    # Messages queued behind a thread that is gone (policy changed, thread interrupted) join the
    # next goal rather than waiting forever.
    earlier = (
        carried if carried is not None else list(conversation.entries.queued().order_by("seq"))
    )
    if earlier:
        ConversationEntry.objects.filter(pk__in=[entry.pk for entry in earlier]).update(
            delivered_at=now
        )
    thread = Thread(
        user_id=conversation.user_id,
        conversation=conversation,
        kind=ThreadKind.FOREGROUND,
        tracked=True,
    )
    goal = list(earlier)
    if new_message is not None:
        goal.append(writer.add(EntrySender.USER, new_message, thread=thread, delivered_at=now))
    thread.goal = "\n\n".join(entry.content for entry in goal)
    thread.metadata = {"goal_entry_seqs": [entry.seq for entry in goal]}
    thread.save(force_insert=True)
    writer.add(EntrySender.SYSTEM, "Thread started", thread=thread)
    _thread_run_enqueue(thread.id)
    return thread, goal[-1]


def _thread_cancel(thread: Thread, *, reason: str) -> None:
    """Untrack a locked thread; stop it now unless a worker holds it (then ask it to stop)."""
    now = timezone.now()
    thread.tracked = False
    thread.cancel_requested = True
    if thread.state in LIVE_STATES and thread.state != ThreadState.RUNNING:
        # Nobody runs it: stop it here, and a pending run's claim will be refused.
        thread.state = ThreadState.STOPPED
        thread.outcome = {"kind": "stopped", "reason": reason}
        thread.finished_at = now
    thread.save(
        update_fields=[
            "tracked",
            "cancel_requested",
            "state",
            "outcome",
            "finished_at",
            "updated_at",
        ]
    )


# --- Threads: lease, inbox, outcome ----------------------------------------------------------


def thread_claim(
    *, user_id: str, thread_id: uuid.UUID, worker_id: str, lease_seconds: int | None = None
) -> Thread:
    """Take the thread's lease (compare-and-set; one of racing claimers wins, others get 409).

    Claimable: created, waiting, suspended, or running with an expired lease or the same owner.
    """
    _check_worker_id(worker_id)
    duration = _lease_duration(lease_seconds)
    # Lease times come from the database clock, so web and worker machines whose clocks
    # disagree still agree on who holds a lease.
    claimable = (
        Q(state__in=[ThreadState.CREATED, ThreadState.WAITING, ThreadState.SUSPENDED])
        | Q(state=ThreadState.RUNNING, lease_expires_at__lt=Now())
        | Q(state=ThreadState.RUNNING, lease_owner=worker_id)
    )
    with _locked_transaction(busy=ThreadBusy):
        claimed = Thread.objects.filter(
            claimable, pk=thread_id, user_id=user_id, cancel_requested=False
        ).update(
            state=ThreadState.RUNNING,
            lease_owner=worker_id,
            lease_expires_at=Now() + duration,
            claim_count=F("claim_count") + 1,
            started_at=Coalesce(F("started_at"), Now()),
            updated_at=Now(),
        )
    thread = selectors.thread_get(user_id=user_id, thread_id=thread_id)
    if not claimed:
        raise ThreadNotClaimable(
            f"The thread is {thread.state}"
            + (", cancelled" if thread.cancel_requested else "")
            + (f", leased by {thread.lease_owner!r}" if thread.lease_owner else "")
            + "; it cannot be claimed.",
            details={"state": thread.state, "cancel_requested": thread.cancel_requested},
        )
    return thread


def thread_lease_renew(
    *, user_id: str, thread_id: uuid.UUID, worker_id: str, lease_seconds: int | None = None
) -> Thread:
    """Extend the lease (compare-and-set on the holder). The result shows ``cancel_requested``,
    which is how a running engine learns it was interrupted."""
    _check_worker_id(worker_id)
    duration = _lease_duration(lease_seconds)
    # Owner and state are the whole check: the sweeper and other claimers change both, so a
    # match means nobody took the thread over, even if the lease lapsed a moment ago.
    # In a lock-timeout transaction like claim: the UPDATE waits for the thread row while an
    # outcome, inbox take or interrupt holds it, and that wait must be bounded too.
    with _locked_transaction(busy=ThreadBusy):
        renewed = Thread.objects.filter(
            pk=thread_id, user_id=user_id, state=ThreadState.RUNNING, lease_owner=worker_id
        ).update(lease_expires_at=Now() + duration, updated_at=Now())
    thread = selectors.thread_get(user_id=user_id, thread_id=thread_id)
    if not renewed:
        raise LeaseNotHeld(details={"state": thread.state})
    return thread


def thread_inbox_take(
    *, user_id: str, thread_id: uuid.UUID, worker_id: str
) -> list[ConversationEntry]:
    """Return the thread's undelivered user messages in seq order and mark them delivered.

    Locks the thread row (then its entries), so two takes never return the same message.
    """
    _check_worker_id(worker_id)
    with _locked_transaction(busy=ThreadBusy):
        thread = selectors.thread_get_for_update(user_id=user_id, thread_id=thread_id)
        if thread.state != ThreadState.RUNNING or thread.lease_owner != worker_id:
            raise LeaseNotHeld(details={"state": thread.state})
        entries = list(
            ConversationEntry.objects.for_update().undelivered_for(thread).order_by("seq")
        )
        if entries:
            now = timezone.now()
            ConversationEntry.objects.filter(pk__in=[entry.pk for entry in entries]).update(
                delivered_at=now
            )
            for entry in entries:
                entry.delivered_at = now
    return entries


def _thread_lock_with_conversation(
    user_id: str, thread_id: uuid.UUID
) -> tuple[Conversation | None, Thread]:
    """Lock the tenant's thread's conversation, then the thread (the policy's order)."""
    conversation_id = selectors.thread_get(user_id=user_id, thread_id=thread_id).conversation_id
    conversation = None
    if conversation_id is not None:
        # .first(), not .get(): if the conversation was deleted meanwhile, the thread outlives
        # it (its foreign key is now null) rather than the call failing.
        conversation = Conversation.objects.for_update().filter(pk=conversation_id).first()
    return conversation, _thread_lock(thread_id)


def thread_suspend(*, user_id: str, thread_id: uuid.UUID, worker_id: str) -> Thread:
    """The lease holder parks a running thread; the next user message resumes it.

    Locks the conversation, then the thread: a message injected after the engine's last inbox
    read is either committed before (a run is enqueued to take it, so it is not stranded in a
    parked thread) or sees the thread suspended and resumes it.
    """
    _check_worker_id(worker_id)
    with _locked_transaction():
        _, thread = _thread_lock_with_conversation(user_id, thread_id)
        if thread.state != ThreadState.RUNNING or thread.lease_owner != worker_id:
            raise LeaseNotHeld(details={"state": thread.state})
        thread.state = ThreadState.SUSPENDED
        thread.lease_owner = ""
        thread.lease_expires_at = None
        thread.save(update_fields=["state", "lease_owner", "lease_expires_at", "updated_at"])
        if ConversationEntry.objects.undelivered_for(thread).exists():
            _thread_run_enqueue(thread.id)
    return thread


def _check_outcome(outcome: ThreadOutcome) -> None:
    if outcome.kind not in OUTCOME_KINDS:
        problem = f"must be one of {', '.join(OUTCOME_KINDS)}"
        raise InvalidInput(f"kind {problem}.", details={"kind": [problem]})
    if outcome.kind == "failed" and not (outcome.error and outcome.error.strip()):
        raise InvalidInput(
            "A failed outcome needs an error.", details={"error": ["required for kind failed"]}
        )
    if outcome.kind == "gate_paused" and not (outcome.gate_name and outcome.gate_action):
        raise InvalidInput(
            "A gate_paused outcome needs gate.name and gate.action.",
            details={"gate": ["name and action are required for kind gate_paused"]},
        )
    for name, text in (("response", outcome.response), ("error", outcome.error)):
        if text is not None:
            size = len(text.encode("utf-8", errors="surrogatepass"))
            if size > settings.CONVERSATION_MAX_MESSAGE_BYTES:
                problem = f"is {size} bytes; the limit is {settings.CONVERSATION_MAX_MESSAGE_BYTES}"
                raise MessageTooLarge(f"{name} {problem}.", details={name: [problem]})


def _outcome_entry_text(outcome: ThreadOutcome) -> tuple[EntrySender, str] | None:
    if outcome.kind == "completed":
        return (EntrySender.AGENT, outcome.response) if outcome.response else None
    if outcome.kind == "stopped":
        return EntrySender.SYSTEM, "Thread stopped"
    if outcome.kind == "max_iterations":
        return EntrySender.SYSTEM, "Thread reached max iterations"
    if outcome.kind == "failed":
        return EntrySender.SYSTEM, f"Thread failed: {outcome.error}"
    return (
        EntrySender.SYSTEM,
        f"Gate '{outcome.gate_name}' paused execution of action: {outcome.gate_action}",
    )


def thread_outcome_record(
    *, user_id: str, thread_id: uuid.UUID, outcome: ThreadOutcome, worker_id: str | None = None
) -> OutcomeResult:
    """Record how a thread's run ended and write the conversation entries that say so.

    Locks the conversation, then the thread. Undelivered messages for the thread (sent after its
    last inbox read) and queued messages become a follow-up thread in the same transaction.
    """
    _check_outcome(outcome)
    with _locked_transaction():
        conversation, thread = _thread_lock_with_conversation(user_id, thread_id)
        _check_outcome_allowed(thread, outcome, worker_id)
        now = timezone.now()
        recorded = {**outcome.as_json(), "recorded_at": now.isoformat(), "worker_id": worker_id}
        thread.lease_owner = ""
        thread.lease_expires_at = None

        if thread.cancel_requested and not thread.tracked:
            # Interrupted or cleared: the conversation has moved on; the run only ends here.
            thread.state = ThreadState.STOPPED
            thread.outcome = {**recorded, "kind": "stopped", "reported_kind": outcome.kind}
            thread.finished_at = now
            thread.save()
            return OutcomeResult(thread=thread, entries=[])

        was_tracked = thread.tracked
        thread.state = _OUTCOME_STATE[outcome.kind]
        thread.outcome = recorded
        if outcome.kind != "gate_paused":
            thread.tracked = False
            thread.finished_at = now
        # Saved before any follow-up is inserted: the one-tracked-thread index checks each row.
        thread.save()
        if conversation is None:
            return OutcomeResult(thread=thread, entries=[])

        writer = _EntryWriter(conversation)
        text = _outcome_entry_text(outcome)
        if text is not None:
            writer.add(text[0], text[1], thread=thread)

        follow_up = None
        undelivered = list(ConversationEntry.objects.undelivered_for(thread).order_by("seq"))
        if outcome.kind == "gate_paused":
            if undelivered:
                # Messages wait in the paused thread's inbox; a run must pick them up.
                _thread_run_enqueue(thread.id)
        elif was_tracked and thread.kind == ThreadKind.FOREGROUND:
            queued = list(conversation.entries.queued().order_by("seq"))
            carried = sorted(undelivered + queued, key=lambda entry: entry.seq)
            if carried:
                follow_up, _ = _thread_spawn(conversation, writer, carried=carried)
        entries = writer.flush()
    return OutcomeResult(thread=thread, entries=entries, follow_up=follow_up)


def _check_outcome_allowed(thread: Thread, outcome: ThreadOutcome, worker_id: str | None) -> None:
    if thread.is_terminal:
        raise OutcomeAlreadyRecorded(details={"state": thread.state})
    if thread.state == ThreadState.RUNNING:
        if worker_id != thread.lease_owner:
            raise LeaseNotHeld(details={"state": thread.state})
        return
    if outcome.kind not in ("stopped", "failed"):
        raise InvalidThreadTransition(
            f"A {thread.state} thread can only be recorded as stopped or failed; claim it first.",
            details={"state": thread.state},
        )


# --- Lease sweeper ---------------------------------------------------------------------------


def thread_leases_sweep(
    *, now: datetime.datetime | None = None, batch_size: int = 100
) -> SweepResult:
    """Return running threads whose lease expired to ``created`` and enqueue them again.

    A thread that was asked to stop is stopped instead. One transaction per batch; rows locked by
    a live transaction (a heartbeat, an outcome) are skipped and seen by the next sweep.
    """
    expired_before = now or Now()
    result = SweepResult()
    while True:
        with transaction.atomic():
            expired = list(
                Thread.objects.for_update(skip_locked=True)
                .filter(state=ThreadState.RUNNING, lease_expires_at__lt=expired_before)
                .order_by("pk")
                .values_list("pk", "cancel_requested")[:batch_size]
            )
            requeue = [pk for pk, cancelled in expired if not cancelled]
            stop = [pk for pk, cancelled in expired if cancelled]
            if requeue:
                Thread.objects.filter(pk__in=requeue).update(
                    state=ThreadState.CREATED,
                    lease_owner="",
                    lease_expires_at=None,
                    updated_at=Now(),
                )
                for pk in requeue:
                    _thread_run_enqueue(pk)
            if stop:
                Thread.objects.filter(pk__in=stop).update(
                    state=ThreadState.STOPPED,
                    lease_owner="",
                    lease_expires_at=None,
                    outcome={"kind": "stopped", "reason": "lease expired after cancellation"},
                    finished_at=Now(),
                    updated_at=Now(),
                )
        result.requeued.extend(requeue)
        result.stopped.extend(stop)
        if len(expired) < batch_size:
            return result
