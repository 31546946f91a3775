"""has_control_characters: its printable fast path answers as the per-character rule would."""

from __future__ import annotations

import unicodedata

from hypothesis import example, given
from hypothesis import strategies as st

from core.text import has_control_characters

TEXT = st.text(
    st.one_of(
        st.sampled_from(list("a /\t\n\x00\x7f\u0085\u00a0\u200d\u2028\u202e\ufeff")),
        st.characters(exclude_categories=()),
    ),
    max_size=30,
)


@given(TEXT)
@example("zero\u200dwidth")
@example("no-break\u00a0space")
@example("plain text")
def test_the_answer_is_the_per_character_rule(value: str) -> None:
    categories = [unicodedata.category(char) for char in value]

    assert has_control_characters(value) == any(c in {"Cc", "Cf"} for c in categories)
    assert has_control_characters(value, include_format=False) == ("Cc" in categories)
