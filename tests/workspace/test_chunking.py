from __future__ import annotations

from workspace.chunking import MAX_CHUNK_CHARACTERS, ChunkingConfig, chunk_text


def test_empty_or_blank_text_has_no_chunks() -> None:
    assert chunk_text("", ChunkingConfig()) == []
    assert chunk_text(" \n\t ", ChunkingConfig()) == []


def test_text_within_the_size_is_one_verbatim_chunk() -> None:
    text = "line one\n\n  line two  "

    assert chunk_text(text, ChunkingConfig(size=10)) == [text]


def test_overlap_is_a_fraction_of_the_size() -> None:
    assert ChunkingConfig(size=800, overlap=0.15).step == 680
    assert ChunkingConfig(size=100, overlap=0.15).step == 85


def test_long_text_is_cut_into_overlapping_windows() -> None:
    words = [f"w{i}" for i in range(2000)]

    chunks = chunk_text(" ".join(words), ChunkingConfig(size=800, overlap=0.15, min_words=50))

    assert [len(chunk.split()) for chunk in chunks] == [800, 800, 640]
    assert chunks[1].split()[0] == "w680"
    assert chunks[2].split()[-1] == "w1999"


def test_trailing_window_under_the_minimum_is_merged() -> None:
    words = " ".join(f"w{i}" for i in range(12))

    chunks = chunk_text(words, ChunkingConfig(size=10, overlap=0, min_words=5))

    assert chunks == [words]


def test_chunks_never_exceed_the_character_cap() -> None:
    text = " ".join("x" * 2000 for _ in range(40))

    chunks = chunk_text(text, ChunkingConfig(size=800))

    assert all(len(chunk) <= MAX_CHUNK_CHARACTERS for chunk in chunks)
    assert "".join(chunks) == text
