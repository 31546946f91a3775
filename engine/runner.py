"""The reference thread runner: one agent turn, durable across worker crashes.

The turn worker claims a runnable thread (its lease) and hands it to a turn, which takes its
inbox, calls the model step by step and records the outcome. After every step it checkpoints its
state into the thread's own tenant's workspace (``engine/.runtime/threads/<thread_id>.json``: the
turn's messages, steps and events), and taking the inbox commits in the same transaction as the
checkpoint that records what was taken. So a worker killed at any point loses nothing: when the
lease expires the sweeper requeues the thread, the next worker resumes from the checkpoint, and a
step whose reply was checkpointed is never sent to the model again (only the step in flight when
the worker died is repeated).

A turn whose worker is stopping (``current_turn_stop``) does not wait for the model: it abandons
the call in flight (the next run sends it again), records in its checkpoint that it was handed
back, and returns without an outcome, writing nothing more; the worker then gives its lease back.

No database connection is held while the model runs: the turn closes it (returning it to the
pool) before every model call, so turns in flight are bounded by ``ENGINE_CONCURRENCY``, not by
the pool. The model's text goes out as it is produced (``engine.deltas``), each delta taking a
pooled connection for its one statement only.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import threading
import time
from contextlib import nullcontext
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from conversations.errors import (
    LeaseNotHeld,
    OutcomeAlreadyRecorded,
    ThreadBusy,
    ThreadNotClaimable,
)
from conversations.models import ConversationEntry, Thread
from conversations.runners import current_turn_stop
from conversations.services import (
    ThreadOutcome,
    lease_owner_id,
    outcome_within_limits,
    thread_claim,
    thread_inbox_take,
    thread_lease_renew,
    thread_outcome_record,
)
from core.db import fixed_exists, server_bound_cursor
from engine.checkpoint import (
    CheckpointSave,
    TurnState,
    checkpoint_load,
    checkpoint_save,
    now_iso,
)
from engine.context import history_before, system_prompt
from engine.deltas import DeltaPace, DeltaPublisher
from engine.model_call import model_call
from engine.model_clients import ChatMessage, ModelClient, ModelError, model_client_from_settings
from engine.reads import GOAL_SQL, NEWEST_UNDELIVERED_SQL, UNDELIVERED_SQL
from workspace.errors import DocumentTooLarge, WriteFenced

logger = logging.getLogger(__name__)

_CLAIM_ATTEMPTS = 3
# How many ENGINE_INBOX_DEBOUNCE_MS windows a step waits at most for the inbox to fall quiet: a
# stream that never pauses still gets its answers.
_DEBOUNCE_MAX_WINDOWS = 4


class _TurnEnded(Exception):
    """Ends the step loop with an outcome (stopped, failed, max_iterations).

    ``limit``: the limit that ended the turn, in words, when one did; the reply then says so.
    """

    def __init__(self, outcome: ThreadOutcome, *, limit: str | None = None):
        super().__init__(outcome.kind)
        self.outcome = outcome
        self.limit = limit


class Turn:
    """One run of a thread by this worker.

    ``worker_id``: the lease owner of a thread the turn worker has claimed already (the usual
    way, from the threads queue). Without it the turn claims the thread itself under an id of its
    own, if it is runnable.
    """

    def __init__(
        self,
        thread: Thread,
        *,
        worker_id: str | None = None,
        model: ModelClient | None = None,
        checkpoint_save: CheckpointSave = checkpoint_save,
    ):
        self.thread = thread
        self.user_id = thread.user_id
        self.model = model or model_client_from_settings()
        self._claimed = worker_id is not None
        self.worker_id = worker_id or lease_owner_id()
        self.lease_seconds = settings.ENGINE_LEASE_SECONDS
        self._cancelled = threading.Event()
        self._lease_lost = threading.Event()
        # Set by whatever should wake the turn while it waits for the model: the model call's
        # end, an interrupt, a lost lease.
        self._wake = threading.Event()
        self._context: list[ChatMessage] | None = None
        self._stop_heartbeat = threading.Event()
        # The turn's deltas, paced across its steps.
        self._delta_pace = DeltaPace()
        self._checkpoint_save = checkpoint_save
        # The stop request of the turn worker running this turn (None outside one).
        self._turn_stop = current_turn_stop()

    # --- Lifecycle -----------------------------------------------------------------------------

    def run(self) -> None:
        if self._worker_stopping() or (not self._claimed and not self._claim()):
            # Claimed as its worker began to stop: nothing done, nothing to checkpoint.
            return
        heartbeat = threading.Thread(
            target=self._heartbeat, name=f"lease-{self.thread.id}", daemon=True
        )
        heartbeat.start()
        try:
            with self._turn_stop.waking(self._wake) if self._turn_stop else nullcontext():
                state = self._resume_or_start()
                outcome = self._loop(state)
                if outcome is None:
                    self._hand_back(state)
                else:
                    self._finish(state, outcome)
        except _LeaseLost:
            logger.warning("thread %s: lease lost; another worker has it", self.thread.id)
        finally:
            self._stop_heartbeat.set()
            heartbeat.join(timeout=5)
            connection.close()

    def _claim(self) -> bool:
        for attempt in range(_CLAIM_ATTEMPTS):
            try:
                self.thread = thread_claim(
                    user_id=self.user_id,
                    thread_id=self.thread.id,
                    worker_id=self.worker_id,
                    lease_seconds=self.lease_seconds,
                    # A paused thread runs again only for a message for it.
                    runnable_only=True,
                )
                return True
            except ThreadNotClaimable as error:
                # Finished, cancelled, leased by a live worker, or paused with nothing new to
                # read: there is nothing to run.
                logger.info("thread %s not claimed: %s", self.thread.id, error.message)
                return False
            except ThreadBusy:
                time.sleep(0.2 * (attempt + 1))
        raise ThreadBusy()

    def _heartbeat(self) -> None:
        # Renews the lease while a step runs; it is also how the turn learns of an interrupt.
        interval = min(self.lease_seconds / 3, settings.ENGINE_HEARTBEAT_SECONDS)
        try:
            while not self._stop_heartbeat.wait(interval):
                try:
                    thread = thread_lease_renew(
                        user_id=self.user_id,
                        thread_id=self.thread.id,
                        worker_id=self.worker_id,
                        lease_seconds=self.lease_seconds,
                        lease_epoch=self.thread.claim_count,
                    )
                except LeaseNotHeld:
                    self._lease_lost.set()
                    self._wake.set()
                    return
                except ThreadBusy:
                    continue
                except Exception:
                    logger.exception("thread %s: lease renewal failed", self.thread.id)
                    continue
                finally:
                    connection.close()
                if thread.cancel_requested:
                    self._cancelled.set()
                    self._wake.set()
        finally:
            connection.close()

    # --- State ---------------------------------------------------------------------------------

    def _resume_or_start(self) -> TurnState:
        state = checkpoint_load(user_id=self.user_id, thread_id=self.thread.id)
        if state is not None and state.status == "running":
            state.event("resumed", worker_id=self.worker_id, steps_done=len(state.steps))
            return state
        if state is not None:
            # A thread run again after it paused: earlier messages stay as context.
            state.status = "running"
            state.reply_from = len(state.messages)
            state.steps_from = len(state.steps)
            state.started_at = now_iso()
            state.event("continued", worker_id=self.worker_id)
            # Written now: the run's start is its own, and only this checkpoint keeps it.
            self._checkpoint(state, conversation_too=True)
            return state
        state = TurnState(
            thread_id=str(self.thread.id),
            conversation_id=str(self.thread.conversation_id)
            if self.thread.conversation_id
            else None,
            user_id=self.user_id,
            # The thread's first claim: a run started again after its worker died keeps the
            # first run's time limit (ENGINE_TURN_TIMEOUT_S).
            started_at=(self.thread.started_at or timezone.now()).isoformat(),
        )
        seqs = self.thread.metadata.get("goal_entry_seqs") or []
        goal: list[tuple[int, str]] = []
        if self.thread.conversation_id is not None and seqs:
            with server_bound_cursor() as cursor:
                cursor.execute(GOAL_SQL, [self.user_id, self.thread.conversation_id, seqs])
                goal = cursor.fetchall()
        if goal:
            state.messages = [{"role": "user", "content": c, "seq": s} for s, c in goal]
        else:
            state.messages = [{"role": "user", "content": self.thread.goal}]
        state.event("claimed", worker_id=self.worker_id)
        # Not written: a first run that dies before its first checkpoint starts again from the
        # thread (its goal, its first claim's time) as this one did; a claim costs no transaction.
        return state

    def _checkpoint(
        self, state: TurnState, *, conversation_too: bool = False, step: Any = None
    ) -> None:
        """Write the turn's state, fenced by the lease's epoch: once another worker has claimed
        the thread, this one's writes are refused and its turn ends (``_LeaseLost``)."""
        try:
            self._checkpoint_save(
                state,
                user_id=self.user_id,
                changed_by=self.worker_id,
                conversation_too=conversation_too,
                lease_epoch=self.thread.claim_count,
                step=step,
            )
        except WriteFenced:
            self._lease_lost.set()
            raise _LeaseLost() from None

    def _take_inbox(self, state: TurnState) -> list[ConversationEntry]:
        """Take injected messages; the checkpoint recording them commits with the take."""
        # One indexed read usually finds nothing; only then is the locking take worth its
        # round trips. A message committed after this read is not lost: the outcome's
        # transaction hands it to a follow-up thread.
        if not self._inbox_waiting():
            return []
        with transaction.atomic():
            entries = thread_inbox_take(
                user_id=self.user_id,
                thread_id=self.thread.id,
                worker_id=self.worker_id,
                lease_epoch=self.thread.claim_count,
            )
            if entries:
                state.messages.extend(
                    {"role": "user", "content": entry.content, "seq": entry.seq}
                    for entry in entries
                )
                state.event("inbox", seqs=[entry.seq for entry in entries])
                self._checkpoint(state)
        return entries

    def _inbox_waiting(self) -> bool:
        return fixed_exists(UNDELIVERED_SQL, [self.user_id, self.thread.id])

    def _debounce(self, state: TurnState, taken: list[ConversationEntry], deadline: float) -> None:
        """Messages came in while the model worked: before the next step, wait until the inbox
        has been quiet for ``ENGINE_INBOX_DEBOUNCE_MS`` (at most ``_DEBOUNCE_MAX_WINDOWS``
        windows), then take what came meanwhile, so a burst is answered in one step rather than
        a step per message. One indexed read a window; the connection is returned meanwhile."""
        window = settings.ENGINE_INBOX_DEBOUNCE_MS / 1000
        if not window:
            return
        give_up = time.monotonic() + window * _DEBOUNCE_MAX_WINDOWS
        newest = max(entry.created_at for entry in taken)
        arrived = False
        while True:
            # created_at is the web process's clock: at most one window, however far ahead it is.
            quiet_for = max(0.0, (timezone.now() - newest).total_seconds())
            wait = min(window - quiet_for, give_up - time.monotonic())
            if wait <= 0:
                break
            connection.close()
            self._wake.clear()
            self._check_interrupts(deadline)
            self._wake.wait(min(wait, max(0.0, deadline - time.time())))
            self._check_interrupts(deadline)
            with server_bound_cursor() as cursor:
                cursor.execute(NEWEST_UNDELIVERED_SQL, [self.user_id, self.thread.id])
                (latest,) = cursor.fetchone()
            if latest is None:
                break
            arrived = True
            newest = max(newest, latest)
        if arrived:
            self._take_inbox(state)

    # --- Steps ---------------------------------------------------------------------------------

    def _loop(self, state: TurnState) -> ThreadOutcome | None:
        """Run steps until the turn has an outcome; None when its worker is stopping."""
        deadline = _deadline(state)
        try:
            first = True
            while True:
                self._check_interrupts(deadline)
                at_limit = len(state.steps) >= settings.ENGINE_MAX_ITERATIONS
                # The inbox at the start (messages sent before the claim) and after each answer;
                # working steps do not look, so a step costs one statement (its checkpoint). At
                # the limit it is left alone: taken, it could not be answered, while the outcome
                # hands what waits there to a follow-up thread, which answers it.
                if (first or not state.needs_step) and not at_limit:
                    taken = self._take_inbox(state)
                    if taken:
                        self._debounce(state, taken, deadline)
                first = False
                if not state.needs_step and not (at_limit and self._inbox_waiting()):
                    return ThreadOutcome(kind="completed", response=state.response)
                if at_limit:
                    raise _TurnEnded(
                        ThreadOutcome(kind="max_iterations"),
                        limit=f"this turn reached its limit of {settings.ENGINE_MAX_ITERATIONS}"
                        " model calls",
                    )
                self._step(state, deadline)
        except _TurnEnded as ended:
            return _with_reply(ended, state)
        except _WorkerStopping:
            return None
        except LeaseNotHeld:
            raise _LeaseLost() from None

    def _check_interrupts(self, deadline: float) -> None:
        if self._lease_lost.is_set():
            raise _LeaseLost()
        if self._cancelled.is_set():
            raise _TurnEnded(ThreadOutcome(kind="stopped"))
        if time.time() >= deadline:
            raise _TurnEnded(
                ThreadOutcome(
                    kind="failed",
                    error=f"the turn timed out after {settings.ENGINE_TURN_TIMEOUT_S} s "
                    "(ENGINE_TURN_TIMEOUT_S)",
                ),
                limit=f"this turn ran out of time after {settings.ENGINE_TURN_TIMEOUT_S} s",
            )
        if self._worker_stopping():
            raise _WorkerStopping()

    def _worker_stopping(self) -> bool:
        return self._turn_stop is not None and self._turn_stop.requested

    def _step(self, state: TurnState, deadline: float) -> None:
        messages = self._model_input(state)
        # Nothing is held while the model works: the connection goes back to the pool.
        connection.close()
        started_at = now_iso()
        began = time.monotonic()
        n = len(state.steps) + 1
        try:
            reply = model_call(
                self.model,
                messages,
                step=state.working_steps,
                # The step's text as it is produced, to whoever listens; never stored.
                deltas=DeltaPublisher(
                    thread_id=self.thread.id,
                    conversation_id=self.thread.conversation_id,
                    step=n,
                    pace=self._delta_pace,
                    user_id=self.thread.user_id,
                ),
                wake=self._wake,
                check_interrupts=lambda: self._check_interrupts(deadline),
                deadline=deadline,
                name=f"model-{self.thread.id}",
            )
        except ModelError as error:
            raise _TurnEnded(ThreadOutcome(kind="failed", error=f"model error: {error}")) from None
        model_ms = round((time.monotonic() - began) * 1000, 1)
        state.steps.append(
            {
                "n": n,
                "started_at": started_at,
                "ended_at": now_iso(),
                "model_ms": model_ms,
                "input_tokens": reply.input_tokens,
                "output_tokens": reply.output_tokens,
                "cost_usd": reply.cost_usd,
                "final": reply.final,
            }
        )
        state.messages.append(
            {"role": "assistant", "content": reply.text, "step": n, "final": reply.final}
        )
        state.event("step", n=n, model_ms=model_ms)
        self._checkpoint(state, step=state.steps[-1])

    def _model_input(self, state: TurnState) -> list[ChatMessage]:
        if self._context is None:
            # Read once per run: the identity files and the history before the turn.
            system = system_prompt(self.user_id)
            self._context = [{"role": "system", "content": system}] if system else []
            self._context.extend(history_before(state))
        messages = list(self._context)
        messages.extend(
            {"role": message["role"], "content": message["content"]} for message in state.messages
        )
        return messages

    # --- Outcome -------------------------------------------------------------------------------

    def _finish(self, state: TurnState, outcome: ThreadOutcome) -> None:
        def final_checkpoint() -> None:
            state.status = outcome.kind
            state.event("outcome", outcome=outcome.kind)
            try:
                self._checkpoint(state, conversation_too=True)
            except DocumentTooLarge:
                # Refused before any write: the reply commits, the checkpoint keeps the last step.
                logger.warning("thread %s: final checkpoint too large", state.thread_id)

        try:
            # One transaction with the final checkpoint (failing, the next run finishes the turn).
            thread_outcome_record(
                user_id=self.user_id,
                thread_id=self.thread.id,
                outcome=outcome_within_limits(outcome),
                worker_id=self.worker_id,
                usage=state.usage(),
                lease_epoch=self.thread.claim_count,
                then=final_checkpoint,
            )
        except (LeaseNotHeld, OutcomeAlreadyRecorded) as error:
            # The lease lapsed and another worker took the thread over; it records the outcome.
            logger.warning("thread %s: outcome not recorded: %s", self.thread.id, error.message)

    def _hand_back(self, state: TurnState) -> None:
        """The worker is stopping: checkpoint what the turn has done (every finished step is in
        it already), then write nothing more. The worker gives the lease back once this returns;
        the next run resumes from here, sending the abandoned model call again."""
        state.event("handed_back", worker_id=self.worker_id, steps_done=len(state.steps))
        self._checkpoint(state)
        logger.info(
            "thread %s: its worker is stopping; handed back after %d steps",
            self.thread.id,
            len(state.steps),
        )


class _LeaseLost(Exception):
    pass


def _with_reply(ended: _TurnEnded, state: TurnState) -> ThreadOutcome:
    """The outcome of a turn that ended before it completed, with the agent's reply: its answers
    so far, and at a limit a reply in any case, so the user is never left without one. A stopped
    turn has none: it was interrupted, and the conversation has moved on."""
    if ended.outcome.kind == "stopped":
        return ended.outcome
    if ended.limit is not None:
        return dataclasses.replace(ended.outcome, response=state.response_at_limit(ended.limit))
    return dataclasses.replace(ended.outcome, response=state.response or None)


class _WorkerStopping(Exception):
    """Ends the step loop without an outcome: the turn worker is stopping."""


def _deadline(state: TurnState) -> float:
    started = datetime.datetime.fromisoformat(state.started_at)
    return started.timestamp() + settings.ENGINE_TURN_TIMEOUT_S


def run_thread(
    *, thread: Thread, worker_id: str, checkpoint_save: CheckpointSave = checkpoint_save
) -> None:
    """``THREAD_RUNNER``: run one turn of ``thread``, which the turn worker has just claimed for
    ``worker_id`` (its lease owner). ``checkpoint_save`` writes the turn's checkpoints; a runner
    of its own may wrap it."""
    Turn(thread, worker_id=worker_id, checkpoint_save=checkpoint_save).run()
