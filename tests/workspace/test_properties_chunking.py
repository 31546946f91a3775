"""Properties of word-window chunking over generated texts and configurations."""

from __future__ import annotations

import itertools

from hypothesis import assume, example, given
from hypothesis import strategies as st

from workspace.chunking import MAX_CHUNK_CHARACTERS, ChunkingConfig, chunk_text

CHUNK_CONFIGS = st.builds(
    lambda size, overlap, min_fraction: ChunkingConfig(
        size=size, overlap=overlap, min_words=int(size * min_fraction)
    ),
    st.integers(min_value=1, max_value=40),
    st.floats(min_value=0.0, max_value=0.5),
    st.floats(min_value=0.0, max_value=0.99),
)
SEPARATORS = st.sampled_from([" ", "  ", "\n", "\t", " \n\n "])


@st.composite
def numbered_texts(draw: st.DrawFn) -> tuple[str, int]:
    """Distinct words w0 w1 ... (each chunk word tells its position), loosely spaced."""
    count = draw(st.integers(min_value=0, max_value=200))
    text = draw(SEPARATORS) if draw(st.booleans()) else ""
    for index in range(count):
        text += f"w{index}" + draw(SEPARATORS)
    return text, count


def _positions(chunk: str) -> list[int]:
    return [int(word[1:]) for word in chunk.split()]


@given(numbered_texts(), CHUNK_CONFIGS)
def test_chunks_cover_the_words_in_order_with_the_configured_overlap(
    numbered: tuple[str, int], config: ChunkingConfig
) -> None:
    text, count = numbered

    chunks = chunk_text(text, config)

    if count == 0:
        assert chunks == []
        return
    if count <= config.size:
        assert chunks == [text]
        return
    assert all(chunk.strip() for chunk in chunks)
    windows = [_positions(chunk) for chunk in chunks]
    starts = [window[0] for window in windows]
    assert starts == [index * config.step for index in range(len(chunks))]
    assert windows[-1][-1] == count - 1
    for window in windows[:-1]:
        assert window == list(range(window[0], window[0] + config.size))
    overlap = config.size - config.step
    for before, after in itertools.pairwise(windows):
        assert after[:overlap] == before[-overlap:] if overlap else after[0] == before[-1] + 1


@given(numbered_texts(), CHUNK_CONFIGS)
def test_a_short_trailing_window_is_merged_into_the_previous_chunk(
    numbered: tuple[str, int], config: ChunkingConfig
) -> None:
    text, count = numbered
    assume(count > config.size)

    windows = [_positions(chunk) for chunk in chunk_text(text, config)]

    last_start = windows[-1][0]
    tail_start = last_start + config.step
    tail = count - tail_start
    if tail_start < count and tail < config.min_words and last_start + config.size < count:
        # The last chunk is its own window followed by the tail, which repeats the overlap.
        assert windows[-1] == [
            *range(last_start, last_start + config.size),
            *range(tail_start, count),
        ]
    else:
        assert windows[-1] == list(range(last_start, count))
        assert len(windows) == 1 or len(windows[-1]) >= config.min_words


@given(st.integers(min_value=0, max_value=3 * MAX_CHUNK_CHARACTERS), st.sampled_from([" ", "\n"]))
@example(padding=MAX_CHUNK_CHARACTERS, blank="\n")
def test_no_chunk_is_blank_or_longer_than_the_character_cap(padding: int, blank: str) -> None:
    text = blank * padding + "word " + "x" * (padding // 2)

    chunks = chunk_text(text, ChunkingConfig(size=10))

    assert chunks
    assert all(chunk.strip() for chunk in chunks)
    assert all(len(chunk) <= MAX_CHUNK_CHARACTERS for chunk in chunks)
    assert "".join(chunks).split() == text.split()
