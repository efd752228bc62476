"""The sweep grid without a front end: its data while cells stream, and its static HTML."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

import pytest

pytest.importorskip("anywidget")

from test_session_support import until

from cm_notebook import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.widgets.sweep_grid import SweepGrid, grid_data, grid_html, shown_text

pytestmark = pytest.mark.anyio

NewSession = Callable[..., ContextSession]


async def test_the_grid_streams_cells_live_and_ends_with_every_reply(
    new_session: NewSession,
) -> None:
    fake = ScriptedProvider(strict=True)
    fake.hang(after_chunks=2, text="one two three")
    fake.reply("second", chunks="words")
    session = new_session(provider=fake)
    sweep = session.sweep(
        ["What is <b>?", "Q2"], [{"label": "cold"}], concurrency=1, name="g", progress=False
    )
    grid = sweep.view()
    assert isinstance(grid, SweepGrid)
    assert repr(grid) == "<cm_notebook SweepGrid 'g' 2 cells>"
    assert grid.columns == ["cold"]
    assert [row["label"] for row in grid.rows] == ["What is <b>?", "Q2"]
    # The hanging cell's partial text reaches the grid while it runs: as a change (a
    # custom message, tests/test_sweep_kernel.py) and, in full, for a view that starts.
    await until(lambda: sweep.cells[0].live_text == "one two three")
    grid._handle_custom_msg({"type": "ready"}, [])  # what static/grid.js sends on render
    cell = await until(lambda: next((c for c in grid.cells if c["text"] == "one two three"), None))
    assert cell["status"] == "running"
    assert cell["key"] == "p0-v0-r0"
    sweep.cancel()
    await sweep
    final = {c["key"]: c for c in grid.cells}
    assert final["p0-v0-r0"]["status"] == "failed"
    assert final["p1-v0-r0"]["status"] == "pending"
    # A failed cell's partial text is marked, with why: never shown as an answer.
    why = html.escape(sweep.cells[0].error or "")
    assert f"<bdi>one two three</bdi> [failed: <bdi>{why}</bdi>]" in grid_html(sweep)
    # Resumed: the grid of the new run fills in.
    again = session.sweep(["What is <b>?", "Q2"], [{"label": "cold"}], name="g", progress=False)
    fake.reply("first")
    view = again.view()
    await again
    await until(lambda: all(c["status"] == "done" for c in view.cells))
    assert sorted(c["text"] for c in view.cells) == ["first", "second"]
    page = grid_html(again)
    assert "What is &lt;b&gt;?" in page
    assert "<b><bdi>g</bdi></b>: 2 cells (2 done)" in page
    grid.close()
    view.close()


def test_a_cells_status_is_said_in_words_not_only_in_colour() -> None:
    # Colour alone says nothing to a screen reader, nor to someone who cannot tell
    # the colours: a running reply is marked as running, a failed cell says it failed.
    def cell(status: str, text: str = "", error: str = "") -> dict[str, str]:
        return {"status": status, "text": text, "error": error}

    assert shown_text(cell("running", "one two")) == "one two [running…]"
    assert shown_text(cell("running")) == "(running)"
    assert shown_text(cell("pending")) == "(pending)"
    assert shown_text(cell("failed", error="timed out")) == "[failed: timed out]"
    assert shown_text(cell("failed")) == "[failed]"
    assert shown_text(cell("failed", "one", "timed out")) == "one [failed: timed out]"
    assert shown_text(cell("done", "Paris.")) == "Paris."


def test_a_pending_cell_is_drawn_in_the_themes_muted_colour(new_session: NewSession) -> None:
    # Built and not run: every cell waits.
    sweep = new_session().sweep(["Q1", "Q2"], [{"label": "v1"}], name="p", progress=False)
    page = grid_html(sweep)
    styles = re.findall(r'class="cm-grid-repeat"[^>]*style="([^"]*)"', page)
    assert len(styles) == 2
    for style in styles:
        assert "{" not in style
        assert style.endswith(";color:var(--jp-ui-font-color2,#666)")


def test_a_long_prompt_s_row_label_keeps_its_last_character_whole(new_session: NewSession) -> None:
    flag = "\U0001f1eb\U0001f1f7"
    prompts = ["x" * before + flag + " and the rest of the prompt" for before in range(76, 80)]
    sweep = new_session().sweep(prompts, [{"label": "v"}], name="r", progress=False)
    for row, prompt in zip(grid_data(sweep)["rows"], prompts, strict=True):
        label = row["label"]
        assert label.endswith("…")
        assert prompt.startswith(label[:-1])
        # A flag is two regional indicators: never one of them alone.
        assert label[:-1].count("\U0001f1eb") == label[:-1].count("\U0001f1f7")
