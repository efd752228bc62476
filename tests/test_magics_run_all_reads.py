"""Run All over commands that read the context (``%cm history``, ``branches``,
``export``, ``compare``) between ``%%cm`` cells, in a real kernel: each shows the
context as of its place in the notebook, as running the cells one by one does, never
what the cells below it did.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from widget_frontend import FrontEnd, front_end


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("run-all-reads-data")) as frontend:
        frontend.run("%load_ext cm_notebook")
        yield frontend


def _printed(fe: FrontEnd, expression: str) -> Any:
    return ast.literal_eval(fe.run(f"print(repr({expression}))").strip())


def _run_all(fe: FrontEnd, cells: list[str]) -> None:
    # As Run All sends them: each cell once the one before it has executed (its
    # replies still being written).
    for cell in cells:
        fe.run(cell)


def _two_replies(fe: FrontEnd, title: str) -> None:
    # A current context whose replies take a moment: the reads below come while they
    # are still being written.
    fe.use_scripted(
        title,
        '[{"reply": "Paris", "chunks": "words", "delay": 0.2},'
        ' {"reply": "Lyon", "chunks": "words", "delay": 0.2}]',
    )


def test_history_and_export_above_a_question_show_only_the_replies_above(
    fe: FrontEnd,
) -> None:
    _two_replies(fe, "reads above a question")
    _run_all(
        fe,
        [
            "%%cm\nFirst question",
            "%%cm\nSecond question",
            "shown = %cm history",
            "exported = %cm export",
            "%%cm\nThird question",
            "third = _",
        ],
    )
    assert _printed(fe, "(await third).content") == "echo: Third question"
    assert _printed(fe, "(await shown, shown.text)[1]").splitlines() == [
        "user: First question",
        "assistant: Paris",
        "user: Second question",
        "assistant: Lyon",
    ]
    exported = _printed(fe, "(await exported, exported._markdown)[1]")
    assert "- Messages: 4" in exported
    assert "Lyon" in exported
    assert "Third question" not in exported


def test_branches_above_an_ab_cell_does_not_list_its_arms(fe: FrontEnd) -> None:
    _two_replies(fe, "branches above arms")
    _run_all(
        fe,
        [
            "%%cm\nFirst question",
            "%%cm\nSecond question",
            "listed = %cm branches",
            '%%cm --ab "Be brief." "Be long."\nThird question',
            "arms = _",
        ],
    )
    fe.run("await arms")
    assert len(_printed(fe, "list(slow.branches)")) == 3  # the arms were forked
    assert _printed(fe, "(await listed, listed.text)[1]") == "* main  (4 messages)"


def test_compare_above_an_ab_cell_compares_the_branches_there_were(fe: FrontEnd) -> None:
    _two_replies(fe, "compare above arms")
    _run_all(
        fe,
        [
            "%%cm\nFirst question",
            "%cm branch side",
            "%%cm\nSecond question",
            "compared = %cm compare\ndisplay(compared)",
            '%%cm --ab "Be brief." "Be long."\nThird question',
            "arms = _",
        ],
    )
    fe.run("await arms")
    assert len(_printed(fe, "list(slow.branches)")) == 4
    fe.wait_for(lambda: _printed(fe, "compared.compare is not None"), what="the comparison")
    assert sorted(_printed(fe, "compared.compare.branch_names")) == ["main", "side"]


def test_a_question_on_another_branch_waits_for_a_read_above_it(fe: FrontEnd) -> None:
    # A read of every branch (`%cm branches`) shows none of the cells below it, on
    # whichever branch they ask: here one on main, free once the fork has run, while
    # the question on the fork is still answered.
    _two_replies(fe, "read then other branch")
    _run_all(
        fe,
        [
            "%%cm\nFirst question",
            "%cm branch side",
            "%%cm\nSecond question",
            "listed = %cm branches",
            "%%cm --branch main\nThird question",
            "third = _",
        ],
    )
    assert _printed(fe, "(await third).content") == "echo: Third question"
    assert _printed(fe, "(await listed, listed.text)[1]").splitlines() == [
        "  main  (2 messages)",
        "* side  (4 messages)",
    ]


def test_ls_counts_the_branches_the_cells_above_made_not_those_below(fe: FrontEnd) -> None:
    _two_replies(fe, "ls between forks")
    context = _printed(fe, "slow.id")
    _run_all(
        fe,
        [
            "%%cm\nFirst question",
            '%%cm --ab "Be brief." "Be long."\nSecond question',
            "%cm branch side",
        ],
    )
    printed = fe.run("listed = %cm ls")  # what it lists when not deferred
    _run_all(fe, ["%cm branch below", "below = _"])
    fe.run("await below")
    if not _printed(fe, "listed is None"):
        fe.run("await listed")
        printed = _printed(fe, "listed.text")
    [line] = [row for row in printed.splitlines() if context in row]
    assert line.startswith("*")
    assert line.endswith("(4 branches)")  # main, the two arms, side: not `below`
    assert len(_printed(fe, "list(slow.branches)")) == 5
