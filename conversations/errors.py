"""Errors of the conversations app; the API's exception handler maps each to its status."""

from __future__ import annotations

from core.errors import Busy, Conflict, NotFound, PayloadTooLarge


class ConversationBusy(Busy):
    code = "conversation_busy"
    default_message = "The conversation is busy (its lock was not granted in time); retry shortly."


class ThreadBusy(Busy):
    code = "thread_busy"
    default_message = "The thread is busy (its row lock was not granted in time); retry shortly."


class MessageRejected(Conflict):
    code = "message_rejected"
    default_message = (
        "A thread is already working on this conversation and its busy policy is 'reject'."
    )


class ConversationNotFound(NotFound):
    code = "conversation_not_found"
    default_message = "No such conversation."


class ThreadNotFound(NotFound):
    code = "thread_not_found"
    default_message = "No such thread."


class ThreadNotClaimable(Conflict):
    code = "thread_not_claimable"
    default_message = "The thread cannot be claimed in its current state."


class LeaseNotHeld(Conflict):
    code = "lease_not_held"
    default_message = "This worker does not hold the thread's lease."


class LeaseLost(LeaseNotHeld):
    """The write named a lease epoch that is no longer the thread's: the lease lapsed and the
    thread was claimed again (or released), so this writer's work is over."""

    code = "lease_lost"
    default_message = (
        "The thread's lease was taken over since this worker claimed it (its lease_epoch is "
        "stale); stop working on it."
    )


class OutcomeAlreadyRecorded(Conflict):
    code = "outcome_already_recorded"
    default_message = "The thread's outcome has already been recorded."


class InvalidThreadTransition(Conflict):
    code = "invalid_thread_transition"
    default_message = "The thread cannot take this outcome in its current state."


class MessageTooLarge(PayloadTooLarge):
    default_message = "The message content is too large."
