"""Word-window chunking (sizes from settings), the algorithm of the origin system: the Rust agent
platform this service re-creates, whose search results it keeps matching.

A document of at most ``size`` words is one chunk, kept verbatim. A longer one is cut into windows
of ``size`` words that overlap by ``floor(size * overlap)`` words; a trailing window shorter than
``min_words`` is merged into the previous chunk instead of standing alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.conf import settings

# No chunk longer than this many characters, whatever its word count: a few huge "words" (minified
# JSON, base64) must not produce a chunk that Postgres cannot turn into a tsvector (1 MB limit) or
# that an embeddings API refuses (the origin system capped inputs at 32,000 characters too).
MAX_CHUNK_CHARACTERS = 32_000


@dataclass(frozen=True)
class ChunkingConfig:
    size: int = 800
    overlap: float = 0.15
    min_words: int = 50

    @property
    def step(self) -> int:
        return max(1, self.size - int(self.size * self.overlap))

    @classmethod
    def from_settings(cls) -> ChunkingConfig:
        return cls(
            size=settings.WORKSPACE_CHUNK_WORDS,
            overlap=settings.WORKSPACE_CHUNK_OVERLAP,
            min_words=settings.WORKSPACE_CHUNK_MIN_WORDS,
        )


def chunk_text(text: str, config: ChunkingConfig | None = None) -> list[str]:
    # A short text is kept verbatim, so a cut at the character cap can fall in a run of
    # whitespace (32,000 blank lines before a word): such a slice is no chunk.
    slices = (
        piece[start : start + MAX_CHUNK_CHARACTERS]
        for piece in _word_windows(text, config or ChunkingConfig.from_settings())
        for start in range(0, len(piece), MAX_CHUNK_CHARACTERS)
    )
    return [piece for piece in slices if not piece.isspace()]


def _word_windows(text: str, config: ChunkingConfig) -> list[str]:
    words = text.split()
    if not words:
        return []
    if len(words) <= config.size:
        return [text]
    chunks: list[str] = []
    start = 0
    while start < len(words):
        window = words[start : start + config.size]
        if len(window) < config.min_words and chunks:
            # The overlap means these words partly repeat the previous chunk's tail: kept as in the
            # origin system, so chunk boundaries (and search results) match it.
            chunks[-1] = f"{chunks[-1]} {' '.join(window)}"
            break
        chunks.append(" ".join(window))
        if start + config.size >= len(words):
            break
        start += config.step
    return chunks
