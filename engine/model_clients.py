"""Model clients behind one small interface, chosen by ``ENGINE_MODEL``.

A client takes the chat messages of one step and returns a :class:`ModelReply`. It never touches
the database: the runner calls it with no transaction open and no connection held, so a slow or
hanging model costs model time only. Given ``on_text``, it calls it with the reply's text so far
as the text is produced (the runner publishes it as token deltas, ``engine.deltas``); the reply
is the same either way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings

ChatMessage = dict[str, str]
# Called with the reply's whole text so far, each time it grows.
OnText = Callable[[str], None]
# How the echo model marks its working steps, so that it does not take them for answers.
WORKING_STEP_PREFIX = "working step "
# How many pieces the echo model reveals its text in, over its latency.
ECHO_SLICES = 10
ECHO_SLICE_MS = 100


class ModelError(Exception):
    """The model could not answer (HTTP error, timeout, malformed reply); the turn fails."""


@dataclass(frozen=True)
class ModelReply:
    text: str
    # False for a working step (a tool call, a plan) after which the model wants another step.
    final: bool = True
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class ModelClient(Protocol):
    name: str

    def complete(
        self, messages: list[ChatMessage], *, step: int, on_text: OnText | None = None
    ) -> ModelReply:
        """Answer ``messages``; ``step`` counts the working steps since the last new input.
        ``on_text`` (on the calling thread) gets the text so far as it is produced."""
        ...


def _approximate_tokens(text: str) -> int:
    # About four characters a token for English text; the echo model has no tokenizer.
    return max(1, len(text) // 4) if text else 0


class EchoModel:
    """Deterministic stand-in for a model: after ``latency_ms`` it repeats the user messages it
    has not answered yet. With ``steps`` > 1 a turn takes that many calls, the first ones being
    working steps of ``step_bytes`` text each (what a tool-using model would produce), so a
    benchmark can make turns checkpoint growing state without a real model. Given ``on_text``,
    it reveals the reply as a model streams one, over the same ``latency_ms``."""

    name = "echo"

    def __init__(self, *, latency_ms: int, steps: int = 1, step_bytes: int = 0):
        self.latency_ms = latency_ms
        self.steps = steps
        self.step_bytes = step_bytes

    def complete(
        self, messages: list[ChatMessage], *, step: int, on_text: OnText | None = None
    ) -> ModelReply:
        began = time.monotonic()
        if self.latency_ms and on_text is None:
            time.sleep(self.latency_ms / 1000)
        reply = self._reply(messages, step)
        if on_text is not None:
            self._stream(reply.text, on_text, began)
        return reply

    def _stream(self, text: str, on_text: OnText, began: float) -> None:
        """Reveal ``text`` in up to ``ECHO_SLICES`` pieces spread evenly over the latency, one
        every ``ECHO_SLICE_MS`` at most: the first at once, the whole text as the latency ends
        (so the call takes as long as without ``on_text``). A short call is one piece: tens of
        wake-ups a turn for text nobody can read faster than deltas are paced cost the turn
        worker more CPU than the deltas themselves (the turns benchmark's 125 ms calls)."""
        slices = max(1, min(ECHO_SLICES, len(text), self.latency_ms // ECHO_SLICE_MS))
        for n in range(1, slices + 1):
            if slices > 1:
                due = began + self.latency_ms / 1000 * (n - 1) / (slices - 1)
                time.sleep(max(0.0, due - time.monotonic()))
            on_text(text[: round(len(text) * n / slices)])
        time.sleep(max(0.0, began + self.latency_ms / 1000 - time.monotonic()))

    def _reply(self, messages: list[ChatMessage], step: int) -> ModelReply:
        unanswered: list[str] = []
        for message in messages:
            if message["role"] == "assistant":
                if not message["content"].startswith(WORKING_STEP_PREFIX):
                    unanswered = []
            elif message["role"] == "user":
                unanswered.append(message["content"])
        input_tokens = sum(_approximate_tokens(message["content"]) for message in messages)
        if step < self.steps - 1:
            text = f"{WORKING_STEP_PREFIX}{step + 1}: " + "." * self.step_bytes
            return ModelReply(
                text=text,
                final=False,
                input_tokens=input_tokens,
                output_tokens=_approximate_tokens(text),
            )
        text = "echo: " + "\n".join(unanswered) if unanswered else "echo: (nothing new)"
        return ModelReply(
            text=text, input_tokens=input_tokens, output_tokens=_approximate_tokens(text)
        )


class OpenAIChatModel:
    """Any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, llama.cpp)."""

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None,
        model: str,
        timeout: float,
        max_retries: int,
        input_cost_per_million: float = 0.0,
        output_cost_per_million: float = 0.0,
    ):
        import openai

        self._openai = openai
        # A local server often needs no key, but the client refuses to start without one.
        self.client = openai.OpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",
            timeout=timeout,
            max_retries=max_retries,
        )
        self.model = model
        self.timeout = timeout
        self.input_cost_per_million = input_cost_per_million
        self.output_cost_per_million = output_cost_per_million

    def complete(
        self, messages: list[ChatMessage], *, step: int, on_text: OnText | None = None
    ) -> ModelReply:
        """One streamed chat completion: the text arrives in chunks (``on_text`` gets it as it
        grows), the usage in the last chunk (approximated when the server sends none). Any
        error of the request or of the stream, a stream cut before the model finished included,
        is a ``ModelError``; so is a stream still going after ``timeout`` seconds, which the
        read timeout (between chunks) would not end."""
        wire: list[Any] = [
            {"role": message["role"], "content": message["content"]} for message in messages
        ]
        deadline = time.monotonic() + self.timeout
        text = ""
        usage: Any = None
        choices = finished = False
        try:
            stream = self.client.chat.completions.create(
                model=self.model,
                messages=wire,
                stream=True,
                stream_options={"include_usage": True},
            )
            with stream:
                for chunk in stream:
                    # The usage comes in a last chunk of its own (no choices), or with the last.
                    usage = getattr(chunk, "usage", None) or usage
                    if chunk.choices:
                        choices = True
                        choice = chunk.choices[0]
                        finished = finished or choice.finish_reason is not None
                        content = getattr(getattr(choice, "delta", None), "content", None)
                        if content:
                            text += content
                            if on_text is not None:
                                on_text(text)
                    if time.monotonic() > deadline:
                        raise ModelError(f"Timeout: the reply took over {self.timeout} s.")
        except (self._openai.OpenAIError, ValueError) as error:
            # ValueError: a chunk that is not JSON.
            raise ModelError(f"{type(error).__name__}: {error}") from error
        if not choices:
            raise ModelError("The model returned no choices.")
        if not finished:
            # The connection was closed cleanly, but before the model's last chunk.
            raise ModelError("The reply's stream ended before the model finished.")
        input_tokens = (
            usage.prompt_tokens
            if usage
            else sum(_approximate_tokens(message["content"]) for message in messages)
        )
        output_tokens = usage.completion_tokens if usage else _approximate_tokens(text)
        cost = (
            input_tokens * self.input_cost_per_million
            + output_tokens * self.output_cost_per_million
        ) / 1_000_000
        return ModelReply(
            text=text,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=cost,
        )


def model_client_from_settings() -> ModelClient:
    """The client ``ENGINE_MODEL`` names, configured from the ``ENGINE_*`` settings."""
    if settings.ENGINE_MODEL == "openai":
        return OpenAIChatModel(
            base_url=settings.ENGINE_BASE_URL,
            api_key=settings.ENGINE_API_KEY,
            model=settings.ENGINE_MODEL_NAME,
            timeout=settings.ENGINE_MODEL_TIMEOUT_S,
            max_retries=settings.ENGINE_MODEL_MAX_RETRIES,
            input_cost_per_million=settings.ENGINE_INPUT_COST_PER_MILLION,
            output_cost_per_million=settings.ENGINE_OUTPUT_COST_PER_MILLION,
        )
    return EchoModel(
        latency_ms=settings.ENGINE_ECHO_LATENCY_MS,
        steps=settings.ENGINE_ECHO_STEPS,
        step_bytes=settings.ENGINE_ECHO_STEP_BYTES,
    )
