"""The similarity of two answers counts their words, never the white space between."""

from __future__ import annotations

import difflib

import pytest

from cm_notebook.compare import BranchResult, Comparison, word_diff
from cm_notebook.stability import similarity, stability


def _pair(a: str, b: str) -> Comparison:
    return Comparison(results=[BranchResult(branch="a", text=a), BranchResult(branch="b", text=b)])


def test_answers_without_a_word_in_common_are_not_alike() -> None:
    a = "the quick brown fox jumps over the lazy dog"
    b = "una respuesta completamente distinta sin ninguna palabra comun aqui"
    pair = _pair(a, b)
    assert pair.similarity() == 0.0
    assert str(pair).splitlines()[-1] == "similarity: 0.00"
    assert "similarity 0.00" in pair._repr_html_()


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("the cat sat", "the dog sat"),
        ("Paris is the capital of France.", "Paris is the capital city of France."),
        ("one  two\nthree", "one two three four"),  # other white space, same words
        ("a b c", "x b y"),
    ],
)
def test_comparison_and_stability_give_difflibs_word_ratio(a: str, b: str) -> None:
    expected = difflib.SequenceMatcher(None, a.split(), b.split()).ratio()
    assert _pair(a, b).similarity() == pytest.approx(expected)
    assert similarity(word_diff(a, b)) == pytest.approx(expected)
    # The same pair shows the same number in a comparison and in a stability table.
    assert stability([a, a, b]).groups[1].similarity == round(_pair(a, b).similarity(), 4)


def test_texts_without_words_are_alike() -> None:
    assert _pair("", "  ").similarity() == 1.0
    assert similarity(word_diff(" ", "")) == 1.0
    assert _pair("word", " ").similarity() == 0.0
