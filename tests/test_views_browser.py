"""The views in a real browser: JupyterLab on 127.0.0.1 (with a token), driven by
Playwright through Debian's Chromium.

It opens a notebook, runs all cells, watches the reply stream in, sends a message from
the chat's text box, always allows the tool it asks for with the button (and reads
the decision history), sees the tool's result and the final answer, rates it,
forks a branch, switches back by clicking the
branch tree, and opens the compare view. On failure it saves a screenshot (the path is
in the failure message; ``CM_TEST_ARTIFACTS=dir`` keeps them, and one of the finished
page, in ``dir``).

Without Chromium the test is skipped with the command that installs it; under CI
(``CI=true``) it fails instead, so a CI machine cannot pass without running it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_lab import artifacts, chromium_page, run_new_cell, start_lab, wait_js

pytestmark = pytest.mark.slow


NOTEBOOK_CELLS = [
    # Everything the page shows comes from these two cells; the rest is clicks.
    '''from cm_notebook import ContextSession, tool
from cm_notebook.testing import ScriptedProvider

@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b

story = " ".join(f"word{i}" for i in range(120)) + ". **The end.**"
fake = (
    ScriptedProvider()
    .reply(story, chunks="words", delay=0.04)
    .tool_call("add", {"a": 2, "b": 3})
    .reply("The sum is **5**.", chunks="words", delay=0.02)
    .reply("A *different* story: a fox, a river, and a bridge.", chunks="words", delay=0.02)
)
s = ContextSession.create("Browser demo", provider=fake, tools=[add])
s''',
    'turn = s.send("Tell me a story")',
]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A JupyterLab server of this virtualenv on 127.0.0.1: (url with token, root dir)."""
    with start_lab(tmp_path, NOTEBOOK_CELLS) as started:
        yield started


def test_the_views_in_jupyterlab(lab: tuple[str, Path], tmp_path: Path) -> None:
    url, root = lab
    with chromium_page(tmp_path, "views") as page:
        _drive(page, url, root / "demo.ipynb")
        if "CM_TEST_ARTIFACTS" in os.environ:
            page.screenshot(path=str(artifacts(tmp_path) / "views-done.png"), full_page=True)


def _icon_drawn(icon: Any) -> None:
    # An icon font's glyph, defined by the page's styles (an emoji would need a
    # color-emoji font, which this machine, like many, does not have).
    content = icon.evaluate("(el) => getComputedStyle(el, '::before').content")
    assert content not in ("none", "normal", ""), "the icon has no glyph"


def _snap(page: Any, name: str) -> None:
    # Pictures of the views along the way, for a person to look at (CM_TEST_ARTIFACTS).
    where = os.environ.get("CM_TEST_ARTIFACTS")
    if where:
        page.screenshot(path=str(Path(where) / f"{name}.png"))


def _text(page: Any, selector: str) -> str:
    return str(page.locator(selector).first.text_content() or "")


def _copies_hidden(page: Any) -> None:
    # The static copy is drawn at once; the live view that hides it, once its widget
    # model has come from the kernel.
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-cm-copy]')].every((c) => !c.offsetParent)"
    )


def _drive(page: Any, url: str, notebook: Path) -> None:
    page.goto(url)
    page.wait_for_selector(".jp-Notebook")
    wait_js(
        page,
        """() => {
            const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
            const k = w && w.sessionContext && w.sessionContext.session
                && w.sessionContext.session.kernel;
            return k && k.status === "idle";
        }""",
    )
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")

    # 1. The reply streams in: the live text grows while the reply is not final yet.
    first = wait_js(
        page,
        """() => { const t = document.querySelector(".cm-live-text");
                   return t && t.textContent.length > 0 && t.textContent.length; }""",
    )
    wait_js(
        page,
        """(n) => { const t = document.querySelector(".cm-live-text");
                    return t && t.textContent.length > n; }""",
        first,
    )
    _snap(page, "views-streaming")
    page.wait_for_selector(".cm-transcript .cm-assistant .cm-body strong:has-text('The end.')")
    assert page.locator(".cm-live-text").count() == 0 or not _text(page, ".cm-live-text")

    # 2. A message from the text box asks for a tool; Approve runs it.
    page.locator(".cm-chat .widget-textarea textarea").fill("add 2 and 3")
    page.locator(".cm-chat button:has-text('Send')").click()
    always = page.locator(".cm-approval button:has-text('Always allow (session)')")
    always.wait_for()
    arguments = page.locator(".cm-approval textarea").first.input_value()
    assert json.loads(arguments) == {"a": 2, "b": 3}
    always.dblclick()  # a double click decides once
    page.wait_for_selector(".cm-transcript .cm-call-result:has-text('5')")
    page.wait_for_selector(".cm-transcript .cm-assistant .cm-body:has-text('The sum is 5.')")
    assert page.locator(".cm-approval button:has-text('Approve once')").is_disabled()
    assert always.is_disabled()
    # The decision history, opened, says who decided and that it holds for the session.
    page.get_by_text("Decision history (1)").click()
    page.wait_for_selector(".cm-decision:has-text('always, session')")
    _snap(page, "views-approved")
    # A thumbs up on the answer, pressed once the rating is stored.
    answer = page.locator(".cm-transcript .cm-assistant:has-text('The sum is 5.')")
    answer.locator(".cm-rate[title='a good answer']").click()
    answer.locator(".cm-rate.cm-pressed[title='a good answer']").wait_for()
    _icon_drawn(answer.locator(".cm-rate[title='a good answer'] i.fa-thumbs-up"))

    # 3. A new branch from the first reply, with its own answer.
    page.locator(".cm-transcript .cm-assistant .cm-fork").first.click()
    page.wait_for_selector(".cm-tree .cm-node[data-branch='main-fork-1'].cm-active")
    page.locator(".cm-chat .widget-textarea textarea").fill("Another story?")
    page.locator(".cm-chat button:has-text('Send')").click()
    page.wait_for_selector(".cm-transcript .cm-body:has-text('a fox, a river')")
    assert page.locator(".cm-transcript .cm-body:has-text('The sum is 5.')").count() == 0

    # 4. Back to main by a click in the tree.
    page.locator(".cm-tree .cm-node[data-branch='main'] .cm-node-name").click()
    page.wait_for_selector(".cm-transcript .cm-body:has-text('The sum is 5.')")
    page.wait_for_selector(".cm-tree .cm-node[data-branch='main'].cm-active")
    page.wait_for_selector(".cm-status .cm-chip.cm-active:has-text('main Idle')")
    _snap(page, "views-switched")

    # 5. The saved-notebook snapshot was updated in place when the turns ended; on the
    # live page it is hidden, as it repeats the view.
    page.wait_for_selector(".cm-snapshot:has-text('The sum is 5.')", state="attached")
    _copies_hidden(page)

    # 6. The compare view, opened from a new cell.
    run_new_cell(page, 's.compare_view("main", "main-fork-1")')
    page.wait_for_selector(".cm-compare .cm-compare-column >> nth=1")
    columns = page.locator(".cm-compare .cm-compare-column")
    assert columns.count() == 2
    assert "fox" in (columns.nth(1).text_content() or "")
    assert "share the first 2 messages" in _text(page, ".cm-compare")
    page.locator(".cm-compare").first.scroll_into_view_if_needed()
    _icon_drawn(page.locator(".cm-compare .widget-button i.fa-thumbs-down").first)

    # 6b. A sweep's grid, filled in by the front end as the cells stream (changed cells
    # only, a growing reply's added text only, applied by the page) and finish.
    run_new_cell(
        page,
        'g = ContextSession.create("grid", provider=ScriptedProvider(delay=0.3)).sweep('
        '["Q1 a b c d", "Q2 a b c d"], [{}, {"temperature": 1}], progress=False, name="b")'
        ".view()\ng",
    )
    page.wait_for_function(
        """() => [...document.querySelectorAll(".cm-grid-table .cm-grid-running")]
            .some((slot) => / Q[12] a b/.test(slot.textContent))"""
    )
    # A running cell's partial text says it is running, in words (not only in colour).
    page.wait_for_function(
        """() => [...document.querySelectorAll(".cm-grid-table .cm-grid-running")]
            .some((slot) => / Q[12] a b.*\\[running…\\]$/.test(slot.textContent))"""
    )
    page.wait_for_selector(".cm-grid-table .cm-grid-done >> nth=3")
    assert page.locator(".cm-grid-table tr").count() == 3  # a header and two prompts
    assert "echo: Q2" in _text(page, ".cm-grid-table")
    assert "4 done" in _text(page, ".cm-grid-title")
    # The model's text and the sweep's name isolated, as in the saved grid: a
    # right-to-left reply cannot move the status words drawn after it.
    assert page.locator(".cm-grid-table .cm-grid-done bdi").count() == 4
    assert page.locator(".cm-grid-title bdi").first.text_content() == "b"
    # Text in the package's static tables reads from the left, though JupyterLab's
    # stylesheet right-aligns table cells (for numbers).
    run_new_cell(
        page,
        "from cm_notebook.stability import stability\n"
        'stability(["Paris, of course.", "Paris, of course.", "Rome is the capital."])',
    )
    answer = page.locator(".cm-stability td:has-text('Rome is the capital.')")
    answer.wait_for()
    assert answer.evaluate("(el) => getComputedStyle(el).textAlign") == "left"
    grid_cell = page.locator(".cm-grid-table td:has-text('echo: Q1')").first
    assert grid_cell.evaluate("(el) => getComputedStyle(el).textAlign") in ("left", "start")

    # 6c. An A/B cell: the arms live, side by side; their saved copy, in the same cell,
    # is hidden on the page (it repeats them) and kept in the file (step 7).
    run_new_cell(page, '%load_ext cm_notebook\n%cm new "AB" --provider scripted')
    run_new_cell(page, '%%cm --ab "Be terse." "Be thorough."\nWhy is the sky blue?')
    page.wait_for_selector(".cm-compare:has-text('main-be-thorough')")
    page.wait_for_selector(
        "[data-cm-copy]:has-text('echo: Why is the sky blue?')", state="attached"
    )
    # The conversation's, the compare view's (step 6), the A/B comparison's.
    assert page.locator("[data-cm-copy]").count() == 3
    _copies_hidden(page)

    # 7. Saved, the notebook file holds the conversation as HTML (no kernel needed).
    page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
    deadline = time.monotonic() + 30
    while "The sum is <strong>5</strong>" not in notebook.read_text():
        assert time.monotonic() < deadline, "the saved notebook lacks the conversation"
        page.wait_for_timeout(200)  # the save is asynchronous; poll the file
    saved = json.loads(notebook.read_text())
    htmls = [
        "".join(out["data"]["text/html"])
        for cell in saved["cells"]
        for out in cell.get("outputs", [])
        if "text/html" in out.get("data", {})
    ]
    assert any("The sum is" in h and "cm-snapshot" in h for h in htmls)
    # The compare view's copy: both branches, the fork's answer among them.
    assert any("cm-comparison" in h and "main-fork-1" in h and "a fox" in h for h in htmls)
    # ... and so does its nbconvert HTML.
    converted = subprocess.run(
        [sys.executable, "-m", "nbconvert", "--to", "html", "--stdout", str(notebook)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "The sum is <strong>5</strong>" in converted
    assert "word119. <strong>The end.</strong>" in converted
