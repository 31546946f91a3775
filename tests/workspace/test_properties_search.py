"""Properties of search fusion (reciprocal rank and weighted) over generated candidate lists."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hypothesis import assume, given
from hypothesis import strategies as st

from workspace.search import FusedHit, fuse_rrf, fuse_weighted

CHUNK_IDS = st.lists(st.integers(min_value=1, max_value=60), unique=True, max_size=30)


@dataclass(frozen=True)
class Fusion:
    fts_ids: list[int]
    vector_ids: list[int]
    fusion: str
    run: Callable[[], list[FusedHit]] = field(repr=False)


@st.composite
def fusions(draw: st.DrawFn) -> Fusion:
    fts_ids, vector_ids = draw(CHUNK_IDS), draw(CHUNK_IDS)
    limit = draw(st.integers(min_value=1, max_value=70))
    if draw(st.booleans()):
        k = draw(st.integers(min_value=1, max_value=200))
        return Fusion(
            fts_ids,
            vector_ids,
            f"rrf k={k} limit={limit}",
            lambda: fuse_rrf(fts_ids, vector_ids, k=k, limit=limit),
        )
    # Either weight may be 0 (settings allow it), not both; no subnormal weight, whose score
    # would round to 0 once divided by the best one.
    weights = st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=10.0))
    fts_weight, vector_weight = draw(weights), draw(weights)
    assume(fts_weight > 0 or vector_weight > 0)
    return Fusion(
        fts_ids,
        vector_ids,
        f"weighted fts={fts_weight} vector={vector_weight} limit={limit}",
        lambda: fuse_weighted(
            fts_ids, vector_ids, fts_weight=fts_weight, vector_weight=vector_weight, limit=limit
        ),
    )


@given(fusions())
def test_fused_scores_are_in_zero_one_with_the_best_at_one_and_sorted(fusion: Fusion) -> None:
    hits = fusion.run()

    assert all(0 < hit.score <= 1 for hit in hits)
    if hits:
        assert hits[0].score == 1.0
    assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
    assert fusion.run() == hits


@given(fusions())
def test_fused_hits_are_each_legs_candidates_with_their_ranks(fusion: Fusion) -> None:
    fts_ids, vector_ids = fusion.fts_ids, fusion.vector_ids

    hits = fusion.run()

    assert len({hit.chunk_id for hit in hits}) == len(hits)
    for hit in hits:
        assert hit.chunk_id in fts_ids or hit.chunk_id in vector_ids
        expected_fts = fts_ids.index(hit.chunk_id) + 1 if hit.chunk_id in fts_ids else None
        expected_vector = vector_ids.index(hit.chunk_id) + 1 if hit.chunk_id in vector_ids else None
        assert (hit.fts_rank, hit.vector_rank) == (expected_fts, expected_vector)


def _dominates(a: tuple[int | None, int | None], b: tuple[int | None, int | None]) -> bool:
    """a is at least as good as b in every leg that found b."""
    return all(
        rank_b is None or (rank_a is not None and rank_a <= rank_b)
        for rank_a, rank_b in zip(a, b, strict=True)
    )


@given(CHUNK_IDS, CHUNK_IDS, st.integers(min_value=1, max_value=200))
def test_reciprocal_rank_order_respects_each_legs_ranks(
    fts_ids: list[int], vector_ids: list[int], k: int
) -> None:
    hits = fuse_rrf(fts_ids, vector_ids, k=k, limit=100)

    assert len(hits) == len(set(fts_ids) | set(vector_ids))
    for position, earlier in enumerate(hits):
        for later in hits[position + 1 :]:
            earlier_ranks = (earlier.fts_rank, earlier.vector_rank)
            later_ranks = (later.fts_rank, later.vector_rank)
            assert not (_dominates(later_ranks, earlier_ranks) and later_ranks != earlier_ranks), (
                earlier,
                later,
            )


@given(CHUNK_IDS, st.integers(min_value=1, max_value=200), st.booleans())
def test_one_leg_alone_keeps_its_own_order(ids: list[int], k: int, as_fts: bool) -> None:
    legs = (ids, []) if as_fts else ([], ids)

    rrf = fuse_rrf(*legs, k=k, limit=100)
    weighted = fuse_weighted(*legs, fts_weight=0.3, vector_weight=0.7, limit=100)

    assert [hit.chunk_id for hit in rrf] == ids
    assert [hit.chunk_id for hit in weighted] == ids


def test_a_leg_weighted_zero_adds_no_hits() -> None:
    hits = fuse_weighted([1, 2], [2, 3], fts_weight=0.0, vector_weight=0.7, limit=10)

    assert [(hit.chunk_id, hit.score) for hit in hits] == [(2, 1.0), (3, 0.5)]
