"""Checks on what callers pass the services: a 400 (413 for a size) naming the field."""

from __future__ import annotations

import dataclasses
import datetime
import re

from django.conf import settings

from accounts.tenancy import user_id_problem
from conversations.errors import MessageTooLarge
from conversations.services.turn_queue import TURN_WORKER_OWNER_PREFIX
from conversations.services.values import OUTCOME_KINDS, ThreadOutcome, ThreadUsage
from core.errors import InvalidInput
from core.text import has_control_characters

CHANNEL_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_SCOPE_LENGTH = 128
MAX_WORKER_ID_LENGTH = 255


def check_user_id(user_id: str) -> None:
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


def check_content(content: str) -> None:
    if not content or not content.strip():
        raise InvalidInput("content must not be empty.", details={"content": ["must not be empty"]})
    limit = settings.CONVERSATION_MAX_MESSAGE_BYTES
    size = len(content.encode("utf-8", errors="surrogatepass"))
    if size > limit:
        problem = f"is {size} bytes; the limit is {limit} bytes (CONVERSATION_MAX_MESSAGE_BYTES)"
        raise MessageTooLarge(f"content {problem}.", details={"content": [problem]})


def check_worker_id(worker_id: str) -> None:
    # Control characters would make two lease owners that print alike but never match.
    _check_label(
        "worker_id", worker_id, max_length=MAX_WORKER_ID_LENGTH, allow_surrounding_whitespace=True
    )


def check_engine_worker_id(worker_id: str) -> None:
    """An engine's lease owner: a label, and not one of the turn workers' own, whose leases the
    sweep gives up when their worker is dead."""
    check_worker_id(worker_id)
    if worker_id.startswith(TURN_WORKER_OWNER_PREFIX):
        problem = f"must not start with {TURN_WORKER_OWNER_PREFIX!r}, which names turn workers"
        raise InvalidInput(f"worker_id {problem}.", details={"worker_id": [problem]})


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


def lease_duration(lease_seconds: int | None) -> datetime.timedelta:
    seconds = settings.THREAD_DEFAULT_LEASE_SECONDS if lease_seconds is None else lease_seconds
    maximum = settings.THREAD_MAX_LEASE_SECONDS
    if not 1 <= seconds <= maximum:
        problem = f"must be between 1 and {maximum}"
        raise InvalidInput(f"lease_seconds {problem}.", details={"lease_seconds": [problem]})
    return datetime.timedelta(seconds=seconds)


def check_outcome(outcome: ThreadOutcome) -> None:
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


# What a shortened reply or error ends with.
TRUNCATED_NOTE = "\n\n[cut: longer than CONVERSATION_MAX_MESSAGE_BYTES]"


def outcome_within_limits(outcome: ThreadOutcome) -> ThreadOutcome:
    """``outcome`` with its response and error cut to ``CONVERSATION_MAX_MESSAGE_BYTES``, as
    the built-in engine records it: a model's reply too long for an entry would otherwise be
    refused (``check_outcome``), and the turn retried for ever."""
    limit = settings.CONVERSATION_MAX_MESSAGE_BYTES
    changes = {}
    for name in ("response", "error"):
        text = getattr(outcome, name)
        if text is None or len(text.encode("utf-8", errors="surrogatepass")) <= limit:
            continue
        room = limit - len(TRUNCATED_NOTE.encode())
        cut = text.encode("utf-8", errors="surrogatepass")[:room]
        changes[name] = cut.decode("utf-8", errors="ignore") + TRUNCATED_NOTE
    return dataclasses.replace(outcome, **changes) if changes else outcome


def check_usage(usage: ThreadUsage) -> None:
    for name in ("steps", "input_tokens", "output_tokens", "cost_usd", "model_ms"):
        value = getattr(usage, name)
        if value < 0:
            raise InvalidInput(
                f"usage.{name} must not be negative.", details={f"usage.{name}": ["must be >= 0"]}
            )
