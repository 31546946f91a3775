"""Model clients against a real OpenAI-compatible server on loopback."""

from __future__ import annotations

import itertools
import time

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


def test_openai_model_streams_the_text_as_it_arrives_and_reads_the_usage_at_the_end() -> None:
    seen: list[tuple[str, float]] = []
    with chat_server(reply="a streamed reply, é中😀", stream_interval=0.02) as server:
        reply = _model(server.url).complete(
            [{"role": "user", "content": "hi"}],
            step=0,
            on_text=lambda text: seen.append((text, time.monotonic())),
        )

    assert reply.text == "a streamed reply, é中😀"
    assert (reply.input_tokens, reply.output_tokens) == (11, 7)
    assert server.requests[0]["stream"] is True
    assert server.requests[0]["stream_options"] == {"include_usage": True}
    texts = [text for text, _ in seen]
    assert texts == [reply.text[: end + 4] for end in range(0, len(reply.text), 4)]
    assert seen[-1][1] - seen[0][1] >= 0.02 * (len(seen) - 1) * 0.9


def test_openai_model_approximates_the_usage_a_server_does_not_send() -> None:
    with chat_server(reply="twelve chars", stream_usage=False) as server:
        reply = _model(server.url).complete([{"role": "user", "content": "1234567890"}], step=0)

    assert reply.text == "twelve chars"
    assert (reply.input_tokens, reply.output_tokens) == (2, 3)


def test_openai_model_stream_cut_mid_way_is_a_model_error() -> None:
    seen: list[str] = []
    with (
        chat_server(cut_after_chunks=2) as server,
        pytest.raises(ModelError, match="APIConnectionError"),
    ):
        _model(server.url).complete(
            [{"role": "user", "content": "a long question"}], step=0, on_text=seen.append
        )

    assert seen == ["repl", "reply to"]


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


def test_openai_model_ends_a_stream_still_going_after_its_timeout() -> None:
    # Each chunk comes well within the read timeout; the whole reply would take two seconds.
    began = time.monotonic()
    with (
        chat_server(reply="x" * 40, stream_interval=0.2) as server,
        pytest.raises(ModelError, match="Timeout"),
    ):
        _model(server.url, timeout=0.5).complete([{"role": "user", "content": "hi"}], step=0)

    assert time.monotonic() - began < 1.2


def test_echo_model_reveals_its_reply_over_its_latency_and_answers_the_same() -> None:
    model = EchoModel(latency_ms=500)
    messages = [{"role": "user", "content": "a message of some length"}]
    seen: list[tuple[str, float]] = []

    began = time.monotonic()
    streamed = model.complete(
        messages, step=0, on_text=lambda t: seen.append((t, time.monotonic()))
    )
    took = time.monotonic() - began
    plain = model.complete(messages, step=0)

    assert streamed == plain
    assert 0.5 <= took < 0.6
    assert len(seen) == 5  # one piece every ECHO_SLICE_MS (100) at most
    assert seen[0][1] - began < 0.02
    assert seen[-1][0] == plain.text
    assert all(plain.text.startswith(text) for text, _ in seen)
    assert all(b[1] - a[1] >= 0.09 for a, b in itertools.pairwise(seen))
