"""The word diff stays in bounded memory however long the answers: texts too long to
align word by word get a coarser diff, which still gives both texts back, and every
view showing it says so."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz.distance import Indel

from cm_notebook import _word_diff
from cm_notebook.compare import (
    COARSE_NOTE,
    DIFF_BUDGET,
    BranchResult,
    Comparison,
    WordDiff,
    word_diff,
)
from cm_notebook.model import Message
from cm_notebook.session import ContextSession
from cm_notebook.stability import stability
from cm_notebook.testing import ScriptedProvider
from cm_notebook.turn_diff import TurnComparison

VOCABULARY = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota"]


def _prose(words: int, seed: int) -> str:
    generator = random.Random(seed)
    return " ".join(generator.choice(VOCABULARY) for _ in range(words))


def _document(lines: int, seed: int) -> str:
    # Lines of a few words, each line different (as in a real document).
    generator = random.Random(seed)
    return "\n".join(
        f"{n}. " + " ".join(generator.choice(VOCABULARY) for _ in range(6)) for n in range(lines)
    )


def _gives_both_back(ops: list[tuple[str, str]], a: str, b: str) -> None:
    assert "".join(text for op, text in ops if op != "+") == a
    assert "".join(text for op, text in ops if op != "-") == b
    assert all(text for _op, text in ops)
    for first, second in itertools.pairwise([op for op, _text in ops]):
        assert (first, second) != ("+", "-")
        assert first != second


@pytest.fixture
def alignments(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size (token pairs) of every word or line alignment asked of rapidfuzz."""
    sizes: list[int] = []
    real = Indel.opcodes

    def spy(first: Any, second: Any, **options: Any) -> Any:
        sizes.append(len(first) * len(second))
        if len(first) * len(second) > DIFF_BUDGET:
            # Not run: it would take memory for a bit per pair.
            raise AssertionError(f"aligning {len(first)} x {len(second)} tokens")
        return real(first, second, **options)

    monkeypatch.setattr(Indel, "opcodes", spy)
    return sizes


@pytest.fixture
def small_budget(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], None]:
    """Lower the diff's budget, so that short texts take the long texts' way."""

    def lower(pairs: int) -> None:
        monkeypatch.setattr(_word_diff, "DIFF_BUDGET", pairs)

    return lower


def test_long_unrelated_answers_are_diffed_within_the_budget(alignments: list[int]) -> None:
    # 20,000 tokens each: a word-by-word alignment would need 400 million bits.
    a, b = _prose(10_000, 1), _prose(10_000, 2)
    ops = word_diff(a, b)
    _gives_both_back(ops, a, b)
    assert ops.coarse
    assert all(size <= DIFF_BUDGET for size in alignments)


def test_long_answers_with_a_few_changes_are_still_diffed_word_by_word(
    alignments: list[int],
) -> None:
    # A 5,000-line document with a word changed here and there: what the two share at
    # either end is set aside, and lines found once in each anchor the rest.
    a = _document(5_000, 3)
    lines = a.split("\n")
    for at in (40, 2_000, 4_990):
        lines[at] = lines[at].replace(".", ". CHANGED", 1)
    b = "\n".join(lines)
    ops = word_diff(a, b)
    _gives_both_back(ops, a, b)
    assert ops.coarse  # over the budget, though nothing is lost here
    assert [text.strip() for op, text in ops if op != "="] == ["CHANGED"] * 3
    assert all(size <= DIFF_BUDGET for size in alignments)
    # Text added at the end, or an edit near the start only: exact, whatever the length.
    longer = word_diff(a, a + " and more")
    assert not longer.coarse
    assert longer == [("=", a), ("+", " and more")]
    assert not word_diff(a, "0. x" + a[4:]).coarse


def test_texts_within_the_budget_get_the_exact_diff(alignments: list[int]) -> None:
    ops = word_diff("the cat sat", "the dog sat")
    assert ops == [("=", "the "), ("-", "cat"), ("+", "dog"), ("=", " sat")]
    assert not ops.coarse
    assert isinstance(ops, WordDiff)
    assert alignments == [5 * 5]  # the texts as they are, aligned once


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["the", "cat", "sat", "on", " ", "  ", "\n", "mat.", "x\n"])),
    st.lists(st.sampled_from(["the", "dog", "sat", "on", " ", "\n", "mat.", "y\n"])),
    st.integers(min_value=0, max_value=60),
)
def test_a_coarse_diff_gives_both_texts_back(left: list[str], right: list[str], pairs: int) -> None:
    a, b = "".join(left), "".join(right)
    saved = _word_diff.DIFF_BUDGET
    _word_diff.DIFF_BUDGET = pairs  # hypothesis runs many examples in one test
    try:
        ops = word_diff(a, b)
    finally:
        _word_diff.DIFF_BUDGET = saved
    _gives_both_back(ops, a, b)
    if a == b:
        assert ops == ([("=", a)] if a else [])


def test_a_comparison_says_its_diff_and_similarity_are_coarse(
    small_budget: Callable[[int], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    small_budget(50)
    a = "Paris is the capital of France, and its largest city by far."
    b = "Lyon is the capital of France, or so I thought, by far."
    pair = Comparison(results=[BranchResult(branch="a", text=a), BranchResult(branch="b", text=b)])
    assert pair.diff().coarse
    # Exact similarity still fits its own, larger budget.
    exact = pair.similarity()
    assert f"similarity: {exact:.2f}" in str(pair)
    assert COARSE_NOTE in str(pair)
    assert COARSE_NOTE in pair._repr_html_()
    monkeypatch.setattr("cm_notebook.compare.SIMILARITY_BUDGET", 50)
    estimate = pair.similarity()
    assert 0 <= estimate <= exact  # the coarse diff finds less in common
    assert f"similarity: ~{estimate:.2f}" in str(pair)
    assert f"similarity ~{estimate:.2f}" in pair._repr_html_()


def test_within_the_budget_nothing_is_said_of_coarseness() -> None:
    pair = Comparison(
        results=[BranchResult(branch="a", text="a b c"), BranchResult(branch="b", text="a c")]
    )
    assert COARSE_NOTE not in str(pair)
    assert COARSE_NOTE not in pair._repr_html_()
    assert "~" not in pair._repr_html_()


def test_stability_marks_a_group_compared_by_a_coarse_diff(
    small_budget: Callable[[int], None],
) -> None:
    small_budget(50)
    # Changed at both ends: what lies between is over the budget.
    top = "Paris is the capital of France, and its largest city by far."
    other = "Yes, Paris is the capital of France, and its largest city by far!"
    result = stability([top, top, other])
    near = result.groups[1]
    assert near.coarse
    assert not result.groups[0].coarse
    assert near.diff == word_diff(top, other)
    assert COARSE_NOTE in str(result)
    assert f"~{near.similarity:.2f}" in str(result)
    assert COARSE_NOTE in result._repr_html_()


def test_a_per_turn_diff_says_it_is_coarse(small_budget: Callable[[int], None]) -> None:
    def branch(answer: str) -> list[Message]:
        return [Message(role="user", content="Q"), Message(role="assistant", content=answer)]

    base = "Paris is the capital of France, and its largest city by far."
    other = "Yes, Paris is the capital of France, and its largest city by far!"
    small_budget(10_000)
    exact = TurnComparison.build("a", branch(base), "b", branch(other))
    assert COARSE_NOTE not in str(exact)
    small_budget(50)
    coarse = TurnComparison.build("a", branch(base), "b", branch(other))
    assert coarse.turns[0].diff.coarse
    assert coarse.turns[0].changed
    assert COARSE_NOTE in str(coarse)
    assert COARSE_NOTE in coarse._repr_html_()
    same = TurnComparison.build("a", branch(base), "b", branch(base))
    assert not same.turns[0].changed


@pytest.mark.anyio
async def test_the_compare_view_says_its_diff_is_coarse(
    new_session: Callable[..., ContextSession], small_budget: Callable[[int], None]
) -> None:
    pytest.importorskip("anywidget")
    from cm_notebook.widgets import CompareView

    first = ScriptedProvider(["Paris is the capital of France, and its largest city by far."])
    second = ScriptedProvider(["Yes, Paris is the capital of France, and its largest town!"])
    session = new_session(provider=ScriptedProvider())
    await session.fan_out(
        "Capital of France?",
        [{"provider": first, "branch": "a"}, {"provider": second, "branch": "b"}],
    )
    view = CompareView(session, "a", "b")
    try:
        assert COARSE_NOTE not in view.value
    finally:
        view.close()
    small_budget(50)
    view = CompareView(session, "a", "b")
    try:
        assert COARSE_NOTE in view.value
        assert "town" in view.value
    finally:
        view.close()
