"""Properties of workspace paths over generated text: what normalising keeps, refuses and limits."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

from workspace.errors import InvalidPath
from workspace.paths import (
    MAX_PATH_BYTES,
    MAX_PATH_CHARACTERS,
    normalise_directory,
    normalise_path,
)

# Any code point (surrogates and controls included), weighted towards the characters path rules
# are about, so refusals and near-misses are both common.
PATH_CHARACTERS = st.one_of(
    st.sampled_from(list("/./.\\~: \t\n\x00\x7f\u0085\u2028\u200dC")),
    st.characters(exclude_categories=()),
    st.characters(codec="ascii"),
)
RAW_PATHS = st.text(PATH_CHARACTERS, max_size=40)
SEGMENTS = st.text(
    st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="/\\"), min_size=1
).filter(lambda segment: segment.strip() not in {"", ".", ".."})


def _normalised_or_none(raw: str) -> str | None:
    try:
        return normalise_path(raw)
    except InvalidPath as error:
        refusal = error
    assert refusal.details["path"], refusal
    return None


@given(RAW_PATHS)
def test_anything_refused_is_an_invalid_path_error_naming_the_path(raw: str) -> None:
    _normalised_or_none(raw)
    try:
        normalise_directory(raw)
    except InvalidPath as error:
        refusal: InvalidPath | None = error
    else:
        refusal = None
    assert refusal is None or refusal.details["path"]


@given(RAW_PATHS)
@example("/notes /")
@example(" / /notes")
@example("/C:/x")
@example("/~x")
def test_normalising_a_path_is_idempotent(raw: str) -> None:
    path = _normalised_or_none(raw)
    assume(path is not None)
    assert path is not None

    assert normalise_path(path) == path
    assert normalise_directory(path) == path


@given(RAW_PATHS)
def test_a_valid_path_has_no_dot_segments_controls_backslashes_or_stray_slashes(raw: str) -> None:
    path = _normalised_or_none(raw)
    assume(path is not None)
    assert path is not None

    segments = path.split("/")
    assert "" not in segments
    assert not {".", ".."} & set(segments)
    assert "\\" not in path
    assert not any(unicodedata.category(char) in {"Cc", "Cs"} for char in path)
    assert path == path.strip()
    assert not path.startswith("~")
    assert not (len(path) >= 2 and path[0].isascii() and path[0].isalpha() and path[1] == ":")


@given(st.lists(SEGMENTS, min_size=1, max_size=6), st.sampled_from(["", "/", " /", "//"]))
def test_surrounding_and_doubled_slashes_do_not_change_a_path(
    segments: list[str], edge: str
) -> None:
    path = _normalised_or_none("/".join(segments))
    assume(path is not None)

    assert normalise_path(edge + "//".join(segments) + edge[::-1]) == path


@given(st.sampled_from(["a", "é", "€", "😀"]), st.integers(min_value=1, max_value=1600))
def test_length_limits_count_characters_and_utf8_bytes(character: str, count: int) -> None:
    raw = character * count
    fits = count <= MAX_PATH_CHARACTERS and len(raw.encode()) <= MAX_PATH_BYTES

    result = _normalised_or_none(raw)

    assert (result == raw) if fits else (result is None)


@pytest.mark.parametrize("raw", ["", "/", " / ", "//"])
def test_only_a_directory_may_be_the_root(raw: str) -> None:
    assert normalise_directory(raw) == ""
    assert _normalised_or_none(raw) is None
