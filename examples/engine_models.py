"""The example engine's models: an echo stand-in and any OpenAI-compatible chat-completions
server, each streaming its reply's text to ``on_text`` as it is produced."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

ChatMessage = dict[str, str]
# Called with the reply's whole text so far, each time it grows.
OnText = Callable[[str], None]
# How many pieces the echo model reveals its text in, over its latency.
ECHO_SLICES = 10


@dataclass(frozen=True)
class ModelReply:
    text: str
    input_tokens: int = 0
    output_tokens: int = 0


class Model(Protocol):
    name: str

    def complete(
        self, messages: list[ChatMessage], on_text: OnText | None = None
    ) -> ModelReply: ...


def _approximate_tokens(text: str) -> int:
    # About four characters a token; the echo model has no tokenizer.
    return max(1, len(text) // 4) if text else 0


class EchoModel:
    """Repeats the user messages it has not answered yet, after ``latency_ms``, revealing the
    text to ``on_text`` in pieces over that time, as a model streams its reply."""

    name = "echo"

    def __init__(self, latency_ms: int):
        self.latency_ms = latency_ms

    def complete(self, messages: list[ChatMessage], on_text: OnText | None = None) -> ModelReply:
        reply = self._reply(messages)
        slices = max(1, min(ECHO_SLICES, len(reply.text)))
        began = time.monotonic()
        for n in range(1, slices + 1):
            if on_text is not None:
                on_text(reply.text[: round(len(reply.text) * n / slices)])
            time.sleep(max(0.0, began + self.latency_ms / 1000 * n / slices - time.monotonic()))
        return reply

    def _reply(self, messages: list[ChatMessage]) -> ModelReply:
        unanswered: list[str] = []
        for message in messages:
            if message["role"] == "assistant":
                unanswered = []
            elif message["role"] == "user":
                unanswered.append(message["content"])
        text = "echo: " + "\n".join(unanswered) if unanswered else "echo: (nothing new)"
        return ModelReply(
            text=text,
            input_tokens=sum(_approximate_tokens(message["content"]) for message in messages),
            output_tokens=_approximate_tokens(text),
        )


class OpenAIModel:
    """Any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama, llama.cpp)."""

    name = "openai"

    def __init__(self, *, base_url: str, api_key: str | None, model: str):
        import openai

        # A local server often needs no key, but the client refuses to start without one.
        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "not-needed")
        self.model = model

    def complete(self, messages: list[ChatMessage], on_text: OnText | None = None) -> ModelReply:
        wire: list[Any] = [{"role": m["role"], "content": m["content"]} for m in messages]
        text, usage = "", None
        # Streamed: the text as it is produced, the usage in the last chunk.
        with self.client.chat.completions.create(
            model=self.model, messages=wire, stream=True, stream_options={"include_usage": True}
        ) as stream:
            for chunk in stream:
                usage = chunk.usage or usage
                content = chunk.choices[0].delta.content if chunk.choices else None
                if content:
                    text += content
                    if on_text is not None:
                        on_text(text)
        return ModelReply(
            text=text,
            input_tokens=usage.prompt_tokens if usage else 0,
            output_tokens=usage.completion_tokens if usage else 0,
        )
