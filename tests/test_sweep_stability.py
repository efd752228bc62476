"""A sweep's stability when some groups have no answers (every repeat failed): they
have no agreement, shown as such and left out of every mean alike."""

from __future__ import annotations

from collections.abc import Callable

from test_session_support import DEADLINE

from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def test_a_group_whose_repeats_all_failed_has_no_agreement(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(strict=True).reply("A").reply("B").error("permanent").error("permanent")
    session = new_session(provider=fake)
    sweep = session.sweep(
        ["Q1", "Q2"], [{}], repeat=2, name="emp", concurrency=1, progress=False
    ).run(DEADLINE)
    assert [c.status for c in sweep.cells] == ["done", "done", "failed", "failed"]
    found = sweep.stability()
    answered, empty = found.groups
    assert (answered.agreement, empty.agreement) == (0.5, None)
    records = found.to_records()
    assert [(r["answers"], r["agreement"]) for r in records] == [(2, 0.5), (0, None)]
    # The records' mean (over the groups with answers) is the one shown.
    known = [r["agreement"] for r in records if r["agreement"] is not None]
    assert found.mean_agreement == sum(known) / len(known) == 0.5
    assert repr(found) == "<SweepStability 'emp' 2 groups (1 without answers), mean agreement 50%>"
    page = found._repr_html_()
    assert page.count("100%") == 0  # no group is shown as fully stable
    assert ">-<br>" in page
    assert "no answers" in page
    assert "agreement 100%" not in str(found)
    assert "no answers" in str(found)


def test_a_sweep_without_any_answer_has_no_mean_agreement(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(strict=True).error("permanent")
    session = new_session(provider=fake)
    found = session.sweep("Q", [{}], name="none", progress=False).run(DEADLINE).stability()
    assert found.mean_agreement is None
    assert found.to_records()[0]["agreement"] is None
    assert repr(found) == "<SweepStability 'none' 1 group (1 without answers), no answers>"
