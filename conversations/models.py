"""Conversations, their entries, and the agent threads that work on them.

Invariants live in PostgreSQL, not only in code: the thread state machine is a pgtrigger FSM,
entries are read-only once written (only ``delivered_at`` is set, once), seqs are unique per
conversation, and a partial unique index lets a conversation track at most one foreground thread.
"""

from __future__ import annotations

import uuid
from typing import Self

import pgtrigger
from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone

from conversations import event_sql
from core.db import RowLockQuerySet, TenantRow


class BusyPolicy(models.TextChoices):
    """What a user message does while a thread is already working on the conversation."""

    INJECT = "inject"
    QUEUE = "queue"
    REJECT = "reject"
    INTERRUPT = "interrupt"


class ConversationQuerySet(RowLockQuerySet["Conversation"]):
    """Conversations; ``for_update()`` is the conversation lock of the locking policy."""


class Conversation(TenantRow):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.CharField(max_length=255)
    # The channel key: the bare channel ("web") or "<channel>:<scope>" for a scoped conversation.
    channel = models.CharField(max_length=255)
    metadata = models.JSONField(default=dict, blank=True)
    # None means the CONVERSATION_DEFAULT_BUSY_POLICY setting, read when a message arrives.
    # Null (not "") on purpose: it means "the setting's default", distinct from any policy.
    busy_policy = models.CharField(  # noqa: DJ001
        max_length=16, choices=BusyPolicy.choices, null=True, blank=True
    )
    # Allocator of entry seqs; only ever advanced under this row's lock.
    last_seq = models.BigIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        indexes = [
            # Serves the tenant's conversation list, newest first, with or without ?channel.
            models.Index(
                fields=["user_id", "-created_at", "-id"], name="conversation_user_newest_idx"
            ),
            models.Index(
                fields=["user_id", "channel", "-created_at"], name="conversation_user_channel_idx"
            ),
        ]
        constraints = [
            models.CheckConstraint(
                name="conversation_last_seq_not_negative", condition=Q(last_seq__gte=0)
            ),
            models.CheckConstraint(
                name="conversation_busy_policy_valid",
                condition=Q(busy_policy__isnull=True) | Q(busy_policy__in=BusyPolicy.values),
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel} / {self.user_id} ({self.id})"

    @property
    def effective_busy_policy(self) -> str:
        """The policy a message arriving now follows: its own, else the setting's default."""
        return str(self.busy_policy or settings.CONVERSATION_DEFAULT_BUSY_POLICY)


class ChannelUserIndex(TenantRow):
    """The *current* conversation of a (channel, user) pair; its unique key makes get-or-create
    race-free across processes."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.CharField(max_length=255)
    channel = models.CharField(max_length=255)
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="channel_index_rows"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "channel-user index row"
        constraints = [
            models.UniqueConstraint(
                fields=["user_id", "channel"], name="channel_user_index_unique_pair"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.channel} / {self.user_id} -> {self.conversation_id}"


class ThreadKind(models.TextChoices):
    FOREGROUND = "foreground"
    RESEARCH = "research"
    MISSION = "mission"


class ThreadState(models.TextChoices):
    CREATED = "created"
    RUNNING = "running"
    WAITING = "waiting"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


LIVE_STATES = (
    ThreadState.CREATED,
    ThreadState.RUNNING,
    ThreadState.WAITING,
    ThreadState.SUSPENDED,
)
TERMINAL_STATES = (ThreadState.COMPLETED, ThreadState.FAILED, ThreadState.STOPPED)

THREAD_TRANSITIONS = [
    ("created", "running"),
    ("created", "failed"),
    ("created", "stopped"),
    # running -> created only when the lease expired (the sweeper).
    ("running", "created"),
    ("running", "waiting"),
    ("running", "suspended"),
    ("running", "completed"),
    ("running", "failed"),
    ("running", "stopped"),
    ("waiting", "running"),
    ("waiting", "failed"),
    ("waiting", "stopped"),
    ("suspended", "running"),
    ("suspended", "failed"),
    ("suspended", "stopped"),
]


MAX_MODEL_CALLS_KEPT = 100


class ThreadQuerySet(RowLockQuerySet["Thread"]):
    def live(self) -> ThreadQuerySet:
        return self.filter(state__in=LIVE_STATES)

    def tracked_foreground(self) -> ThreadQuerySet:
        return self.filter(tracked=True, kind=ThreadKind.FOREGROUND)


class Thread(TenantRow):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user_id = models.CharField(max_length=255)  # indexed by thread_user_newest_idx
    # A thread may outlive its conversation.
    conversation = models.ForeignKey(
        Conversation, on_delete=models.SET_NULL, null=True, blank=True, related_name="threads"
    )
    kind = models.CharField(
        max_length=16, choices=ThreadKind.choices, default=ThreadKind.FOREGROUND
    )
    state = models.CharField(
        max_length=16, choices=ThreadState.choices, default=ThreadState.CREATED
    )
    goal = models.TextField()
    # In the conversation's active set: its outcome is written to the conversation.
    tracked = models.BooleanField(default=True)
    lease_owner = models.CharField(max_length=255, blank=True, default="")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    cancel_requested = models.BooleanField(default=False)
    claim_count = models.PositiveIntegerField(default=0)
    # Usage, summed over the thread's runs (reported with each outcome, or as heartbeat deltas).
    step_count = models.PositiveIntegerField(default=0)
    tokens_used = models.BigIntegerField(default=0)
    input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, default=0)
    model_time_ms = models.BigIntegerField(default=0)
    # Per-phase timestamps, so a slow turn shows where its time went: enqueued (spawn or
    # requeue), claimed (the latest claim), each model call ({step, started_at, ended_at}; the
    # latest MAX_MODEL_CALLS_KEPT), and finished_at (the outcome's transaction).
    enqueued_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    model_calls = models.JSONField(default=list, blank=True)
    outcome = models.JSONField(null=True, blank=True)
    # The seq of the conversation entry that announced this thread ("Thread started"): where a
    # conversation's stream starts following the thread's events.
    start_seq = models.BigIntegerField(null=True, blank=True, editable=False)
    # The number of the thread's last event (ThreadEvent.seq), taken under the row's lock.
    event_seq = models.PositiveIntegerField(default=1, editable=False)
    # e.g. {"goal_entry_seqs": [...]}: which user entries make up the goal.
    metadata = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    objects = ThreadQuerySet.as_manager()

    class Meta:
        indexes = [
            models.Index(fields=["user_id", "-created_at"], name="thread_user_newest_idx"),
            # The sweeper's scan: only running threads have a lease.
            models.Index(
                fields=["lease_expires_at"],
                name="thread_running_lease_idx",
                condition=Q(state="running"),
            ),
            # Live threads only (terminal ones are the bulk of the table): the dashboard's count
            # by state and the admin's "waiting longer than" filter.
            models.Index(
                fields=["state", "updated_at"],
                name="thread_live_state_idx",
                condition=Q(state__in=["created", "running", "waiting", "suspended"]),
            ),
            # Event streams: a conversation's threads announced after an entry (its cursor).
            models.Index(
                fields=["conversation", "start_seq"], name="thread_conversation_start_idx"
            ),
            # The operations console: threads that ended in the last hour or day (the failures
            # list and the charts), however many ended before.
            models.Index(
                fields=["finished_at"],
                name="thread_finished_idx",
                condition=Q(finished_at__isnull=False),
            ),
            # threads/next: the oldest thread waiting for an engine.
            models.Index(
                fields=["created_at"], name="thread_claimable_idx", condition=Q(state="created")
            ),
        ]
        constraints = [
            # The exactly-once rule belongs to the database: whatever the code does, a
            # conversation never tracks two foreground threads.
            models.UniqueConstraint(
                fields=["conversation"],
                condition=Q(tracked=True, kind="foreground"),
                name="thread_one_tracked_foreground_per_conversation",
            ),
            models.CheckConstraint(
                name="thread_tracked_is_live",
                condition=Q(tracked=False) | Q(state__in=[s.value for s in LIVE_STATES]),
            ),
            models.CheckConstraint(
                name="thread_tracked_has_conversation",
                condition=Q(tracked=False) | Q(conversation__isnull=False),
            ),
            models.CheckConstraint(
                name="thread_lease_only_while_running",
                condition=Q(state="running")
                | (Q(lease_owner="") & Q(lease_expires_at__isnull=True)),
            ),
            models.CheckConstraint(
                name="thread_state_valid", condition=Q(state__in=ThreadState.values)
            ),
            models.CheckConstraint(
                name="thread_kind_valid", condition=Q(kind__in=ThreadKind.values)
            ),
        ]
        triggers = [
            # Only when the state changes: without the condition its function (a query of its
            # own) ran on every update of the row, a step's checkpoint and a lease renewal too.
            pgtrigger.FSM(
                name="thread_state_fsm",
                field="state",
                transitions=THREAD_TRANSITIONS,
                condition=pgtrigger.Condition('OLD."state" IS DISTINCT FROM NEW."state"'),
            ),
            # Wakes engines long-polling threads/next (sent at commit; payload: the tenant).
            pgtrigger.Trigger(
                name="thread_notify_claimable",
                when=pgtrigger.After,
                operation=pgtrigger.Insert | pgtrigger.Update,
                condition=pgtrigger.Q(new__state="created"),
                func="PERFORM pg_notify('ironclaw_threads', NEW.user_id); RETURN NULL;",
            ),
            # Every state change and claim is a ThreadEvent, whatever code path made it.
            pgtrigger.Trigger(
                name="thread_event_number",
                when=pgtrigger.Before,
                operation=pgtrigger.Update,
                condition=pgtrigger.Condition(event_sql.THREAD_EVENT_CONDITION),
                func=event_sql.THREAD_EVENT_NUMBER,
            ),
            pgtrigger.Trigger(
                name="thread_event_spawned",
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                func=event_sql.THREAD_EVENT_SPAWNED,
            ),
            pgtrigger.Trigger(
                name="thread_event_changed",
                when=pgtrigger.After,
                operation=pgtrigger.Update,
                condition=pgtrigger.Condition(event_sql.THREAD_EVENT_CONDITION),
                func=event_sql.THREAD_EVENT_CHANGED,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} thread {self.id} ({self.state})"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES


class ThreadEventKind(models.TextChoices):
    SPAWNED = "spawned"
    CLAIMED = "claimed"
    STEP = "step"
    RESUMED = "resumed"
    REQUEUED = "requeued"
    WAITING = "waiting"
    SUSPENDED = "suspended"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


TERMINAL_EVENT_KINDS = frozenset({"completed", "failed", "stopped"})


class ThreadEvent(TenantRow):
    """What happened to a thread, in order: its durable events, which streams replay.

    Written by the thread's triggers (state changes and claims) and by the engine's step
    checkpoints (``step``), never by hand; numbered per thread under the thread's row lock."""

    id = models.BigAutoField(primary_key=True)
    user_id = models.CharField(max_length=255)
    thread = models.ForeignKey(Thread, on_delete=models.CASCADE, related_name="events")
    # The thread's conversation when the event happened (no key: events outlive nothing).
    conversation_id = models.UUIDField(null=True, blank=True)
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=ThreadEventKind.choices)
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["thread", "seq"], name="thread_event_unique_seq"),
        ]
        indexes = [models.Index(fields=["user_id"], name="thread_event_user_idx")]
        triggers = [
            pgtrigger.Trigger(
                name="thread_event_notify",
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                declare=event_sql.NOTIFY_DECLARE,
                func=event_sql.THREAD_EVENT_NOTIFY,
            ),
        ]

    def __str__(self) -> str:
        return f"{self.thread_id} #{self.seq} {self.kind}"


class EntrySender(models.TextChoices):
    USER = "user"
    AGENT = "agent"
    SYSTEM = "system"


class ConversationEntryQuerySet(RowLockQuerySet["ConversationEntry"]):
    def undelivered_for(self, thread: Thread) -> Self:
        """User messages sent to ``thread`` that it has not taken yet (entry_undelivered_by_thread
        serves exactly this filter: keep the two in step)."""
        return self.filter(
            user_id=thread.user_id,
            thread=thread,
            sender=EntrySender.USER,
            delivered_at__isnull=True,
        )

    def queued(self) -> Self:
        """User messages waiting for the next thread (busy policy "queue"; served by
        entry_queued_by_conversation)."""
        return self.filter(sender=EntrySender.USER, thread__isnull=True, delivered_at__isnull=True)


class ConversationEntry(TenantRow):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="entries")
    user_id = models.CharField(max_length=255)
    seq = models.BigIntegerField()
    sender = models.CharField(max_length=8, choices=EntrySender.choices)
    content = models.TextField()
    # Origin (agent/system) or target (user) thread. A queued user message has none until the
    # thread it is queued behind ends.
    thread = models.ForeignKey(
        Thread, on_delete=models.PROTECT, null=True, blank=True, related_name="entries"
    )
    # For user messages: when a thread took it (as its goal or from its inbox).
    delivered_at = models.DateTimeField(null=True, blank=True)
    # Set by EntryWriter from the same clock reading as a spawn's delivered_at, so a message
    # delivered as it is written never looks delivered before it was created.
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    metadata = models.JSONField(default=dict, blank=True)

    objects = ConversationEntryQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "conversation entries"
        indexes = [
            # The tenant key (future sharding key) of every row, as on every tenant table.
            models.Index(fields=["user_id"], name="entry_user_idx"),
            # ConversationEntryQuerySet.undelivered_for: the inbox take, outcomes, suspends and
            # interrupts look for a thread's undelivered messages.
            models.Index(
                fields=["thread"],
                name="entry_undelivered_by_thread",
                condition=Q(sender="user", delivered_at__isnull=True, thread__isnull=False),
            ),
            # One sender's entries after a seq (GET entries?sender=, a client waiting for the
            # agent's reply): one probe, however many entries of other senders follow the seq.
            models.Index(fields=["conversation", "sender", "seq"], name="entry_by_sender_seq"),
            # ConversationEntryQuerySet.queued: messages queued behind a live thread (busy
            # policy "queue").
            models.Index(
                fields=["conversation", "seq"],
                name="entry_queued_by_conversation",
                condition=Q(sender="user", delivered_at__isnull=True, thread__isnull=True),
            ),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["conversation", "seq"], name="entry_unique_seq_per_conversation"
            ),
            models.CheckConstraint(name="entry_seq_positive", condition=Q(seq__gte=1)),
            models.CheckConstraint(
                name="entry_sender_valid", condition=Q(sender__in=EntrySender.values)
            ),
        ]
        triggers = [
            pgtrigger.ReadOnly(name="entry_read_only", exclude=["delivered_at"]),
            pgtrigger.Protect(
                name="entry_delivered_at_set_once",
                operation=pgtrigger.Update,
                condition=pgtrigger.Condition(
                    "OLD.delivered_at IS NOT NULL"
                    " AND NEW.delivered_at IS DISTINCT FROM OLD.delivered_at"
                ),
            ),
            # Wakes clients long-polling the conversation's entries and feeds its streams
            # (sent at commit, in order).
            pgtrigger.Trigger(
                name="entry_notify_inserted",
                when=pgtrigger.After,
                operation=pgtrigger.Insert,
                declare=event_sql.NOTIFY_DECLARE,
                func=event_sql.ENTRY_NOTIFY,
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.sender}: {self.content[:60]}"
