"""Model clients behind one small interface, chosen by ``ENGINE_MODEL``.

A client takes the chat messages of one step and returns a :class:`ModelReply`. It never touches
the database: the runner calls it with no transaction open and no connection held, so a slow or
hanging model costs model time only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from django.conf import settings

ChatMessage = dict[str, str]
# How the echo model marks its working steps, so that it does not take them for answers.
WORKING_STEP_PREFIX = "working step "


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

    def complete(self, messages: list[ChatMessage], *, step: int) -> ModelReply:
        """Answer ``messages``; ``step`` counts the working steps since the last new input."""
        ...


def _approximate_tokens(text: str) -> int:
    # About four characters a token for English text; the echo model has no tokenizer.
    return max(1, len(text) // 4) if text else 0


class EchoModel:
    """Deterministic stand-in for a model: after ``latency_ms`` it repeats the user messages it
    has not answered yet. With ``steps`` > 1 a turn takes that many calls, the first ones being
    working steps of ``step_bytes`` text each (what a tool-using model would produce), so a
    benchmark can make turns checkpoint growing state without a real model."""

    name = "echo"

    def __init__(self, *, latency_ms: int, steps: int = 1, step_bytes: int = 0):
        self.latency_ms = latency_ms
        self.steps = steps
        self.step_bytes = step_bytes

    def complete(self, messages: list[ChatMessage], *, step: int) -> ModelReply:
        if self.latency_ms:
            time.sleep(self.latency_ms / 1000)
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
        self.input_cost_per_million = input_cost_per_million
        self.output_cost_per_million = output_cost_per_million

    def complete(self, messages: list[ChatMessage], *, step: int) -> ModelReply:
        wire: list[Any] = [
            {"role": message["role"], "content": message["content"]} for message in messages
        ]
        try:
            response = self.client.chat.completions.create(model=self.model, messages=wire)
        except self._openai.OpenAIError as error:
            raise ModelError(f"{type(error).__name__}: {error}") from error
        if not response.choices:
            raise ModelError("The model returned no choices.")
        text = response.choices[0].message.content or ""
        usage = response.usage
        input_tokens = usage.prompt_tokens if usage else 0
        output_tokens = usage.completion_tokens if usage else 0
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
