"""A notebook run headless (nbclient: ``nbconvert --execute``, papermill, nbval) keeps
the final replies in its saved outputs.

Such a front end takes only the running cell's messages. A reply that ends while a
later cell awaits it must reach the ``%%cm`` cell's output, and the conversation and
comparison copies must show it too, not the state when their own cell ended.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

SETUP = """
from cm_notebook import ContextSession
from cm_notebook.testing import ScriptedProvider
provider = ScriptedProvider(
    ["the first answer", "the second answer", "arm one says", "arm two says"], delay=0.05
)
s = ContextSession.create("headless", provider=provider)
%cm use s
"""


def _executed(cells: list[str], data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("CM_NOTEBOOK_DATA_DIR", str(data_dir))
    notebook = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(source) for source in cells]
    )
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    return notebook


def _run(cells: list[str], data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    notebook = _executed(cells, data_dir, monkeypatch)
    return [
        _text(
            "".join(
                output["data"].get("text/html", "")
                for output in cell.outputs
                if output.get("output_type") == "display_data"
            )
        )
        for cell in notebook.cells
    ]


def _text(html: str) -> str:
    # What a reader sees: the words, without the markup (a word diff splits them).
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_awaited_replies_and_their_copies_are_saved_final(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    html = _run(
        [
            "%load_ext cm_notebook",
            SETUP,
            "%cm",
            "%%cm\nHello?",
            "first = await _",
            "%%cm\nAnd again?",
            "second = await _",
            '%%cm --ab "Be brief." "Be long."\nWhich?',
            "comparison = await _",
            "%cm compare main main-be-brief",
        ],
        tmp_path,
        monkeypatch,
    )
    live_view, first, second, ab, compare = html[2], html[3], html[5], html[7], html[9]
    # Each reply's own output: its final text, not the "..." shown when the cell ended.
    assert "the first answer" in first
    assert "…" not in first
    assert "the second answer" in second
    # The conversation copy shown before the turns holds both of them.
    assert "the first answer" in live_view
    assert "the second answer" in live_view
    # The --ab comparison copy holds both arms' answers.
    assert "arm one says" in ab
    assert "arm two says" in ab
    assert "arm one says" in compare


def test_a_conversation_shown_then_awaited_in_code_is_saved_final(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No magics: the session shown with `s`, then `await s.send(...)` in later cells.
    # The copy's update for the last turn waits for its interval; the awaiting cell
    # must send it, or the saved notebook ends with the conversation one turn short.
    html = _run(
        [
            SETUP.replace("%cm use s\n", ""),
            "s",
            "first = await s.send('Hello?')",
            "second = await s.send('And again?')",
        ],
        tmp_path,
        monkeypatch,
    )
    shown = html[1]
    assert "the first answer" in shown
    assert "the second answer" in shown


def test_a_compare_view_shown_from_code_is_saved_with_the_later_answers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # session.compare_view(...) as a cell's value: the widget, then its saved copy,
    # which a turn on a compared branch, awaited in a later cell, brings up to date.
    html = _run(
        [
            SETUP.replace("%cm use s\n", ""),
            "first = await s.send('Hello?')\ns.branch('alt', switch=False)",
            's.compare_view("main", "alt")',
            "second = await s.send('And again?', branch='alt')",
        ],
        tmp_path,
        monkeypatch,
    )
    shown = html[2]
    assert "main" in shown
    assert "alt" in shown
    assert "the second answer" in shown


def test_a_cell_awaiting_a_reply_shows_it_in_one_line_not_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The %%cm cell shows the reply; the cell that awaits it shows the value's text, so
    # the saved notebook does not keep the reply twice. Shown later, it is whole again.
    notebook = _executed(
        [
            "%load_ext cm_notebook",
            SETUP,
            "%%cm\nHello?",
            "await _",
            "first = _",
            "first",
            "s.history()[-1]",
            '%%cm --ab "Be brief." "Be long."\nWhich?',
            "await _",
        ],
        tmp_path,
        monkeypatch,
    )
    values = [
        [output["data"] for output in cell.outputs if output["output_type"] == "execute_result"]
        for cell in notebook.cells
    ]
    [awaited] = values[3]
    assert set(awaited) == {"text/plain"}
    assert awaited["text/plain"].startswith("<Message ")
    assert "'the first answer' (16 chars)" in awaited["text/plain"]
    [again] = values[5]
    assert "the first answer" in again["text/html"]
    [read] = values[6]
    assert "the first answer" in read["text/html"]
    [compared] = values[8]
    assert set(compared) == {"text/plain"}
    assert compared["text/plain"].startswith("<Comparison of ")


def test_a_conversation_shown_in_two_cells_is_saved_final_in_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same view shown again further down: the saved notebook keeps both copies,
    # and the first must not stay as it was when the second was shown.
    html = _run(
        [
            SETUP.replace("%cm use s\n", ""),
            "v = s.view()\nv",
            "v  # the same view again",
            "first = await s.send('Hello?')",
        ],
        tmp_path,
        monkeypatch,
    )
    assert "the first answer" in html[1]
    assert "the first answer" in html[2]


def test_a_view_below_a_fork_still_to_come_is_saved_on_the_fork(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Run All: the %cm view waits for the fork above it, then shows it; its saved copy
    # says so, not that it still waits.
    html = _run(
        [
            "%load_ext cm_notebook",
            SETUP,
            "%%cm\nHello?",
            "%cm branch side",
            "%cm",
            "%%cm\nAnd again?",
            "await _",
        ],
        tmp_path,
        monkeypatch,
    )
    shown = html[4]
    assert "branch side" in shown
    assert "the second answer" in shown
    assert "once the commands above have run" not in shown
