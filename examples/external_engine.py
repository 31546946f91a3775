"""An agent engine outside the server: it serves every tenant's threads over the REST API with
the ironclaw client, so the server can run with THREAD_RUNNER set to
``conversations.runners.wait_for_external_engine`` (or ``manage.py serve --no-engine``).

Each of ENGINE_CONCURRENCY workers long-polls ``threads/next`` with a service key; a claimed
thread's turn heartbeats its lease in the background, calls the model, publishes the model's text
as it is produced (token deltas, ``threads/{id}/deltas``, for the listeners of ironclaw_deltas),
checkpoints its runtime state into the thread's own tenant's workspace
(engine/.runtime/threads/<id>.json) after every step, takes messages injected meanwhile as
further steps, and records the outcome with its usage.
SIGINT or SIGTERM stops taking new threads; turns in progress finish, then the process exits.

Environment:
  IRONCLAW_URL             the server (http://127.0.0.1:8000)
  IRONCLAW_API_KEY         a service key (manage.py create_api_key --service --name engine)
  ENGINE_MODEL             echo (default) or openai
  ENGINE_ECHO_LATENCY_MS   the echo model's stand-in for model time (default 0)
  ENGINE_BASE_URL          an OpenAI-compatible server (openai model)
  ENGINE_API_KEY           its key (optional for local servers)
  ENGINE_MODEL_NAME        the model to ask (default gpt-4o-mini)
  ENGINE_CONCURRENCY       turns at once (default 4)
  ENGINE_MAX_ITERATIONS    model calls per turn at most (default 8)
  ENGINE_DELTA_INTERVAL_MS token deltas: at most one per this many ms (default 200; 0: none)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ironclaw_client import (
    ApiError,
    AuthenticationError,
    Client,
    Conflict,
    IronclawError,
    RetryPolicy,
    TransportError,
    Unavailable,
    ValidationError,
    usage_body,
)
from ironclaw_client.models import Entry, ThreadNextOutput

# The models are in engine_models.py beside this file, however this one is loaded.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_models import ChatMessage, EchoModel, Model, OpenAIModel

logger = logging.getLogger("external_engine")
# The conversation history a turn shows the model: its last entries, not the whole log.
HISTORY_ENTRIES = 40
# A turn's outcome is asked again this many times while the server is unreachable (about a minute).
OUTCOME_ATTEMPTS = 8
# Text of one delta request at most: 64 KiB of UTF-8, whatever the characters.
DELTA_TEXT_CHARS = 16 * 1024


class StepDeltas:
    """Publishes one model step's text as the model produces it (``publish_delta``): the first
    text at once, then at most one every ``interval`` seconds, and the last at ``close``. Offset 0
    sends the whole text so far; a text too long for one request goes on from what was sent. A
    delta never fails the turn: one that does not land is logged once, and a lost lease ends them
    (the turn learns of it from its lease)."""

    def __init__(self, tenant: Client, turn: Turn, lease_epoch: int, step: int, interval: float):
        self.tenant, self.turn, self.lease_epoch = tenant, turn, lease_epoch
        self.step, self.interval = step, interval
        self.sent = ""
        self.sent_at: float | None = None
        self.pending: str | None = None
        self.stopped = interval <= 0

    def feed(self, text: str) -> None:
        self.pending = text
        if self.sent_at is None or time.monotonic() - self.sent_at >= self.interval:
            self._send()

    def close(self) -> None:
        self._send()

    def _send(self) -> None:
        text, self.pending = self.pending, None
        if self.stopped or text is None or text == self.sent:
            return
        self.sent_at = time.monotonic()
        # A listener applies buf = buf[:offset] + text: the whole text while it fits a request,
        # then only what the listeners lack, a request per DELTA_TEXT_CHARS.
        grown = len(text) > DELTA_TEXT_CHARS and text.startswith(self.sent)
        offset = len(self.sent) if grown else 0
        try:
            for start in range(offset, len(text), DELTA_TEXT_CHARS):
                self.tenant.publish_delta(
                    self.turn.thread_id,
                    worker_id=self.turn.worker_id,
                    lease_epoch=self.lease_epoch,
                    step=self.step,
                    text=text[start : start + DELTA_TEXT_CHARS],
                    offset=start,
                )
            self.sent = text
        except IronclawError as error:
            self.stopped = True
            logger.warning("thread %s: deltas stopped (%s)", self.turn.thread_id, error)


@dataclass
class Turn:
    """One claimed thread's run: what goes into its checkpoint and its outcome's usage."""

    thread_id: str
    user_id: str
    conversation_id: str | None
    worker_id: str
    messages: list[ChatMessage]
    replies: list[str] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    model_ms: float = 0.0
    # The claim's claim_count: the lease's epoch, named on each write under the lease.
    lease_epoch: int | None = None

    def event(self, name: str, **data: Any) -> None:
        self.events.append({"at": _now(), "event": name, **data})

    def checkpoint(self) -> str:
        return json.dumps(
            {
                "thread_id": self.thread_id,
                "user_id": self.user_id,
                "conversation_id": self.conversation_id,
                "worker_id": self.worker_id,
                "steps": self.steps,
                "events": self.events,
                "updated_at": _now(),
            },
            indent=1,
        )

    def usage(self) -> dict[str, Any]:
        return usage_body(
            steps=len(self.steps),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            model_ms=self.model_ms,
        )


def _now() -> str:
    return datetime.now(UTC).isoformat()


def _chat_messages(entries: Sequence[Entry]) -> list[ChatMessage]:
    roles = {"user": "user", "agent": "assistant"}
    return [
        {"role": roles[entry["sender"]], "content": entry["content"]}
        for entry in entries
        if entry["sender"] in roles
    ]


class Engine:
    def __init__(
        self,
        client: Client,
        model: Model,
        *,
        concurrency: int,
        max_iterations: int,
        poll_seconds: float,
        heartbeat_seconds: float,
        lease_seconds: int,
        delta_interval: float = 0.2,
        deltas_client: Client | None = None,
    ):
        self.client = client
        # Deltas are best effort: their client should not retry, so an outage never holds up the
        # model's stream.
        self.deltas_client = deltas_client or client
        self.model = model
        self.concurrency = concurrency
        self.max_iterations = max_iterations
        self.poll_seconds = poll_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.lease_seconds = lease_seconds
        self.delta_interval = delta_interval
        self.stopping = threading.Event()
        self.prefix = f"{socket.gethostname()}-{os.getpid()}"

    def run(self) -> None:
        workers = [
            threading.Thread(target=self._work, args=(f"{self.prefix}-{n}",), name=f"worker-{n}")
            for n in range(self.concurrency)
        ]
        for worker in workers:
            worker.start()
        logger.info("serving with %d workers, model %s", self.concurrency, self.model.name)
        for worker in workers:
            worker.join()
        logger.info("stopped")

    def _work(self, worker_id: str) -> None:
        pause = 0.5
        while not self.stopping.is_set():
            try:
                claimed = self.client.next_thread(
                    worker_id, wait_seconds=self.poll_seconds, lease_seconds=self.lease_seconds
                )
            except (ApiError, TransportError) as error:
                # The client already retried what was safe; back off and ask again.
                logger.warning("%s: threads/next failed: %s", worker_id, error)
                self.stopping.wait(pause)
                pause = min(pause * 2, 10)
                continue
            pause = 0.5
            if claimed is not None:
                self._serve(worker_id, claimed)

    def _serve(self, worker_id: str, claimed: ThreadNextOutput) -> None:
        started = time.monotonic()
        thread, user_id = claimed["thread"], claimed["user_id"]
        tenant = self.client.for_user(user_id)
        try:
            self._turn(tenant, worker_id, claimed)
        except IronclawError as error:
            # The lease lapses and the server's sweeper hands the thread to another engine.
            logger.error("thread %s of %s: %s", thread["id"], user_id, error)
            return
        logger.info(
            "thread %s of %s served in %.0f ms",
            thread["id"],
            user_id,
            (time.monotonic() - started) * 1000,
        )

    def _turn(self, tenant: Client, worker_id: str, claimed: ThreadNextOutput) -> None:
        thread = claimed["thread"]
        turn = Turn(
            thread_id=thread["id"],
            user_id=claimed["user_id"],
            conversation_id=thread["conversation_id"],
            worker_id=worker_id,
            messages=self._history(tenant, thread["conversation_id"], thread["goal"]),
        )
        turn.event("claimed", inbox=len(claimed["inbox"]))
        # The lease's epoch: named on every write, so that once another worker has taken the
        # thread over (this one paused past its lease), those writes are refused (lease_lost).
        turn.lease_epoch = thread["claim_count"]
        with tenant.keep_alive(
            turn.thread_id,
            worker_id,
            interval=self.heartbeat_seconds,
            lease_seconds=self.lease_seconds,
            lease_epoch=turn.lease_epoch,
        ) as lease:
            outcome: dict[str, Any] = {"kind": "max_iterations"}
            for step in range(self.max_iterations):
                if lease.cancel_requested:
                    outcome = {"kind": "stopped"}
                    break
                model_started = time.monotonic()
                # The model's text goes to the thread's listeners while it thinks.
                deltas = StepDeltas(
                    self.deltas_client.for_user(turn.user_id),
                    turn,
                    thread["claim_count"],
                    step + 1,
                    self.delta_interval,
                )
                try:
                    reply = self.model.complete(turn.messages, on_text=deltas.feed)
                except Exception as error:  # any model failure fails the turn, never the engine
                    outcome = {"kind": "failed", "error": f"{type(error).__name__}: {error}"}
                    turn.event("model_failed", error=str(error))
                    break
                deltas.close()
                if lease.lost is not None:
                    break  # stopped or taken over while the model worked: write nothing more
                if lease.cancel_requested:
                    outcome = {"kind": "stopped"}
                    break
                model_ms = (time.monotonic() - model_started) * 1000
                turn.model_ms += model_ms
                turn.input_tokens += reply.input_tokens
                turn.output_tokens += reply.output_tokens
                turn.replies.append(reply.text)
                turn.messages.append({"role": "assistant", "content": reply.text})
                turn.steps.append(
                    {
                        "step": step + 1,
                        "at": _now(),
                        "model_ms": round(model_ms, 1),
                        "input_tokens": reply.input_tokens,
                        "output_tokens": reply.output_tokens,
                    }
                )
                try:
                    # Fenced by the lease's epoch: refused once another worker took over.
                    tenant.write_checkpoint(
                        turn.thread_id, worker_id, turn.checkpoint(), lease_epoch=turn.lease_epoch
                    )
                except Conflict as error:
                    logger.warning("thread %s: checkpoint refused (%s)", turn.thread_id, error.code)
                    return
                if step + 1 == self.max_iterations:
                    # At the limit, answer with what it has; messages still waiting are left for
                    # the follow-up thread the outcome starts, which answers them.
                    outcome = {"kind": "max_iterations", "response": "\n\n".join(turn.replies)}
                    break
                # Messages sent while the model worked belong to this turn: one more step.
                injected = tenant.take_inbox(
                    turn.thread_id, worker_id, lease_epoch=turn.lease_epoch
                )
                if not injected:
                    outcome = {"kind": "completed", "response": "\n\n".join(turn.replies)}
                    break
                turn.messages.extend(_chat_messages(injected))
                turn.event("injected", count=len(injected))
            if lease.lost is not None:
                logger.warning("thread %s: lease lost (%s)", turn.thread_id, lease.lost.code)
                return
        turn.event("outcome", kind=outcome["kind"])
        try:
            tenant.write_checkpoint(
                turn.thread_id, worker_id, turn.checkpoint(), lease_epoch=turn.lease_epoch
            )
        except Conflict as error:
            logger.warning("thread %s: checkpoint refused (%s)", turn.thread_id, error.code)
            return
        self._record_outcome(tenant, turn, outcome)

    def _record_outcome(self, tenant: Client, turn: Turn, outcome: dict[str, Any]) -> None:
        """Record the outcome, asking again while the server is unreachable. The client retries
        each call under its idempotency key within its retry budget; past it, given up, the turn
        would wait for its lease to lapse and run again, so an outage longer than the budget is
        ridden out here. A repeat that finds the outcome already recorded (an earlier attempt
        did land) is refused with a conflict, which ends it."""
        pause = 1.0
        for attempt in range(1, OUTCOME_ATTEMPTS + 1):
            try:
                tenant.record_outcome(
                    turn.thread_id,
                    turn.worker_id,
                    usage=turn.usage(),
                    lease_epoch=turn.lease_epoch,
                    **outcome,
                )
                return
            except Conflict as error:
                logger.warning("thread %s: outcome refused (%s)", turn.thread_id, error.code)
                return
            except (Unavailable, TransportError) as error:
                if attempt == OUTCOME_ATTEMPTS:
                    raise
                logger.warning(
                    "thread %s: outcome not recorded (%s); again in %.0f s",
                    turn.thread_id,
                    error,
                    pause,
                )
                time.sleep(pause)
                pause = min(pause * 2, 10.0)

    def _history(self, tenant: Client, conversation_id: str | None, goal: str) -> list[ChatMessage]:
        if conversation_id is None:
            return [{"role": "user", "content": goal}]
        last_seq = tenant.get_conversation(conversation_id)["last_seq"]
        entries = [
            entry
            for entry in tenant.entries(
                conversation_id, after_seq=max(0, last_seq - HISTORY_ENTRIES)
            )
            # A user message not yet delivered is in this thread's inbox: it comes as a step of
            # its own (take_inbox), and would otherwise reach the model twice.
            if not (entry["sender"] == "user" and entry["delivered_at"] is None)
        ]
        return _chat_messages(entries) or [{"role": "user", "content": goal}]


class ConfigurationError(Exception):
    """A setting the engine cannot run with; main() prints it and exits 2."""


def _int_setting(name: str, default: int, *, minimum: int) -> int:
    raw = os.environ.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigurationError(f"{name} must be at least {minimum}, got {value}")
    return value


def _model_from_environment() -> Model:
    kind = os.environ.get("ENGINE_MODEL", "echo")
    if kind not in ("echo", "openai"):
        raise ConfigurationError(f"ENGINE_MODEL must be echo or openai, got {kind!r}")
    if kind == "openai":
        return OpenAIModel(
            base_url=os.environ.get("ENGINE_BASE_URL", "https://api.openai.com/v1"),
            api_key=os.environ.get("ENGINE_API_KEY"),
            model=os.environ.get("ENGINE_MODEL_NAME", "gpt-4o-mini"),
        )
    return EchoModel(latency_ms=_int_setting("ENGINE_ECHO_LATENCY_MS", 0, minimum=0))


def _check_key(client: Client) -> None:
    """Raise AuthenticationError or TransportError unless the server takes the key. A service key
    acts for no tenant of its own, so ``me`` answers it 400 ``missing_user_id``: that is the
    answer wanted here. A tenant key works too, for its own tenant's threads only."""
    try:
        me = client.me()
    except ValidationError as error:
        if error.code != "missing_user_id":
            raise
        return
    logger.warning("IRONCLAW_API_KEY is a tenant key: serving %s's threads only", me["user_id"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--poll-seconds", type=float, default=5.0, help="threads/next long-poll")
    parser.add_argument("--heartbeat-seconds", type=float, default=10.0)
    parser.add_argument("--lease-seconds", type=int, default=30)
    parser.add_argument("--log-level", default="INFO")
    options = parser.parse_args(argv)
    logging.basicConfig(
        level=options.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    url, key = os.environ.get("IRONCLAW_URL"), os.environ.get("IRONCLAW_API_KEY")
    if not url or not key:
        parser.error("set IRONCLAW_URL and IRONCLAW_API_KEY (a service key)")
    if not options.heartbeat_seconds < options.lease_seconds:
        parser.error("--heartbeat-seconds must be shorter than --lease-seconds")
    client = Client(url, key, retry=RetryPolicy(max_attempts=6, max_seconds=30))
    try:
        engine = Engine(
            client,
            _model_from_environment(),
            concurrency=_int_setting("ENGINE_CONCURRENCY", 4, minimum=1),
            max_iterations=_int_setting("ENGINE_MAX_ITERATIONS", 8, minimum=1),
            delta_interval=_int_setting("ENGINE_DELTA_INTERVAL_MS", 200, minimum=0) / 1000,
            deltas_client=Client(url, key, retry=RetryPolicy(max_attempts=1), timeout=5),
            poll_seconds=options.poll_seconds,
            heartbeat_seconds=options.heartbeat_seconds,
            lease_seconds=options.lease_seconds,
        )
        # A wrong key or URL is said now, once, rather than retried in every worker for ever.
        _check_key(client)
    except ConfigurationError as error:
        print(f"external_engine: {error}", file=sys.stderr)
        return 2
    except (AuthenticationError, TransportError) as error:
        print(f"external_engine: cannot use {url} with IRONCLAW_API_KEY: {error}", file=sys.stderr)
        return 2

    def stop(signum: int, frame: object) -> None:
        logger.info("%s: finishing the turns in progress", signal.Signals(signum).name)
        engine.stopping.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    with client, engine.deltas_client:
        engine.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
