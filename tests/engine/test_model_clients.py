"""Model clients against a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import pytest

from engine.model_clients import EchoModel, ModelError, OpenAIChatModel
from tests.support.chat_server import chat_server


def _model(url: str, **options: float) -> OpenAIChatModel:
    return OpenAIChatModel(
        base_url=url,
        api_key="sk-test",
        model="test-model",
        timeout=options.get("timeout", 5.0),
        max_retries=int(options.get("max_retries", 0)),
        input_cost_per_million=2.0,
        output_cost_per_million=10.0,
    )


def test_openai_model_sends_the_messages_and_reads_reply_and_usage() -> None:
    with chat_server() as server:
        reply = _model(server.url).complete(
            [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}], step=0
        )

    assert reply.text == "reply to: hi"
    assert reply.final
    assert (reply.input_tokens, reply.output_tokens) == (11, 7)
    assert reply.cost_usd == pytest.approx((11 * 2.0 + 7 * 10.0) / 1_000_000)
    assert server.requests[0]["model"] == "test-model"
    assert server.requests[0]["messages"][0] == {"role": "system", "content": "be brief"}


def test_openai_model_error_is_a_model_error_with_the_status() -> None:
    with chat_server(fail_status=500) as server, pytest.raises(ModelError, match="500"):
        _model(server.url, max_retries=1).complete([{"role": "user", "content": "hi"}], step=0)

    assert len(server.requests) == 2


def test_openai_model_times_out_instead_of_hanging() -> None:
    with chat_server(delay=3) as server, pytest.raises(ModelError, match="Timeout"):
        _model(server.url, timeout=0.5).complete([{"role": "user", "content": "hi"}], step=0)


def test_echo_model_repeats_unanswered_messages_after_its_working_steps() -> None:
    model = EchoModel(latency_ms=0, steps=2, step_bytes=3)
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]

    working = model.complete(messages, step=0)
    final = model.complete([*messages, {"role": "assistant", "content": working.text}], step=1)

    assert (working.final, working.text) == (False, "working step 1: ...")
    assert (final.final, final.text) == (True, "echo: a\nb")
