"""Parents before children (cm_notebook.store.order), whatever order they come in."""

from __future__ import annotations

import pytest

from cm_notebook.store.order import parents_first

PARENTS = {"a": None, "b": "a", "c": "b", "d": "a", "x": "gone"}


def _ordered(ids: str) -> str:
    return "".join(parents_first(list(ids), lambda i: i, PARENTS.get))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("abcd", "abcd"),  # already parents first: kept as it is
        ("cbad", "abcd"),  # a reply before its question: moved after it
        ("dcab", "adbc"),  # each moved after its ancestors, the rest kept in order
        ("xa", "xa"),  # a parent not among them does not count
    ],
)
def test_every_parent_comes_before_its_children(given: str, expected: str) -> None:
    assert _ordered(given) == expected


def test_a_cycle_of_parent_links_is_broken_not_looped() -> None:
    cycle = {"p": "q", "q": "p"}
    assert sorted(parents_first(["p", "q"], lambda i: i, cycle.get)) == ["p", "q"]
