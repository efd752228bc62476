"""The automatic title is cut between user-perceived characters, never inside one: no
half flag, no family emoji reduced to its first person, no letter without its accent."""

from __future__ import annotations

import pytest

from cm_notebook.titles import title_from_text

FLAG = "\U0001f1eb\U0001f1f7"  # France: two regional indicators
FAMILY = "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466"
THUMB = "\U0001f44d\U0001f3fd"  # thumbs up, medium skin tone
HEART = "\u2764\ufe0f"  # heart with its emoji presentation selector
E_ACUTE = "e\u0301"  # e and a combining acute accent


@pytest.mark.parametrize("cluster", [FLAG, FAMILY, THUMB, HEART, E_ACUTE])
def test_a_cluster_across_the_limit_is_left_out_whole(cluster: str) -> None:
    assert title_from_text("x" * 59 + cluster + " more") == "x" * 59 + "…"


@pytest.mark.parametrize("cluster", [FLAG, HEART, E_ACUTE])
def test_a_cluster_that_fits_is_kept_whole(cluster: str) -> None:
    start = "x" * (60 - len(cluster))
    assert title_from_text(start + cluster + "tail") == start + cluster + "…"


def test_flags_in_a_row_pair_up_from_the_start_of_the_run() -> None:
    # 58 + 2 + 2 code points: the cut at 60 falls between the two flags, not inside one.
    assert title_from_text("x" * 58 + FLAG + FLAG) == "x" * 58 + FLAG + "…"
    assert title_from_text("x" * 59 + FLAG + FLAG) == "x" * 59 + "…"


def test_a_single_character_longer_than_the_limit_is_still_cut() -> None:
    title = title_from_text("a" + "\u0301" * 80)
    assert title.endswith("…")
    assert len(title) == 61
