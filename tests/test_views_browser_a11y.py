"""The views used with the keyboard and a screen reader, in a real browser (JupyterLab,
Chromium): where the focus goes after a control is used or the view is drawn again,
what Chrome names the controls (its accessibility tree, through the DevTools
protocol), whether the pressed rating buttons say so, and what is read out (live
regions: a finished reply once, a tool call waiting for approval).

Without Chromium the test is skipped with the command that installs it; under CI
(``CI=true``) it fails instead (see browser_lab.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from browser_lab import chromium_page, kernel_idle, open_and_run_all, run_new_cell, start_lab

pytestmark = pytest.mark.slow

CELLS = [
    '''from cm_notebook import ContextSession, tool
from cm_notebook.testing import ScriptedProvider

@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b

fake = (
    ScriptedProvider()
    .reply("First answer, **done**.", chunks="words", delay=0.01)
    .tool_call("add", {"a": 2, "b": 3})
    .reply("The sum is **5**.", chunks="words", delay=0.02)
    .reply("From a cell.", chunks="words", delay=0.02)
    .reply("Again.", chunks="words", delay=0.02)
    .reply(" ".join(f"word{i}" for i in range(400)), chunks="words", delay=0.05)
)
s = ContextSession.create("A11y", provider=fake, tools=[add])
await s.send("hello")
s''',
]

TEXT_BOX = ".cm-chat .cm-message-box textarea"
SEND = ".cm-chat button.widget-button:has-text('Send')"
STOP = ".cm-chat button.widget-button:has-text('Stop')"
APPROVE = ".cm-approval button:has-text('Approve once')"

#: What has the focus: its data-key (the views' controls), else a description.
FOCUSED = """() => { const a = document.activeElement;
    if (!a || a === document.body) return "(nothing: the page)";
    if (a.dataset && a.dataset.key) return a.dataset.key;
    if (a.closest(".cm-message-box")) return "(message box)";
    return a.tagName + " " + (a.textContent || "").trim().slice(0, 30); }"""


def _focused(page: Any) -> str:
    return str(page.evaluate(FOCUSED))


def _key(page: Any, selector: str) -> str:
    return str(page.locator(selector).first.get_attribute("data-key"))


def _ax_name(page: Any, cdp: Any, selector: str, what: str = "name") -> str:
    # Chrome's own accessible name (or ``what``: "description") of the first element
    # matching ``selector``.
    page.locator(selector).first.evaluate("(el) => el.setAttribute('data-ax-probe', '1')")
    root = cdp.send("DOM.getDocument", {"depth": -1})["root"]["nodeId"]
    node = cdp.send("DOM.querySelector", {"nodeId": root, "selector": "[data-ax-probe]"})
    tree = cdp.send("Accessibility.getPartialAXTree", {"nodeId": node["nodeId"]})
    page.locator("[data-ax-probe]").evaluate("(el) => el.removeAttribute('data-ax-probe')")
    return str(tree["nodes"][0].get(what, {}).get("value", ""))


def _press(page: Any, selector: str, key: str) -> str:
    # Focus the control, press ``key`` on it; its data-key, to compare with the focus.
    control = page.locator(selector).first
    control.focus()
    wanted = str(control.get_attribute("data-key"))
    page.keyboard.press(key)
    return wanted


def _idle(page: Any) -> None:
    page.wait_for_function(
        "() => { const b = [...document.querySelectorAll('.cm-chat button.widget-button')]"
        ".find((b) => b.textContent.includes('Send')); return b && !b.disabled; }"
    )


def test_keyboard_focus_names_and_announcements(tmp_path: Path) -> None:
    with start_lab(tmp_path, CELLS) as (url, _root), chromium_page(tmp_path, "a11y") as page:
        cdp = page.context.new_cdp_session(page)
        cdp.send("DOM.enable")
        cdp.send("Accessibility.enable")
        open_and_run_all(page, url)
        page.wait_for_selector(".cm-transcript .cm-assistant .cm-rate")
        kernel_idle(page)
        _names(page, cdp)
        _rating_and_send(page, cdp)
        _redraws(page)
        _tree_keys(page, cdp)
        _regenerate_and_stop(page)
        _compare(page, cdp)


def _names(page: Any, cdp: Any) -> None:
    # Glyph buttons and text boxes named in words.
    names = {
        ".cm-transcript .cm-edit": "Edit this message",
        ".cm-transcript .cm-regenerate": "Regenerate this reply",
        ".cm-transcript .cm-rate[data-key$=':rate:3']": "Score 3 of 5",
        ".cm-transcript .cm-rate[data-key$=':rate:up']": "a good answer",
        TEXT_BOX: "Message",
        ".cm-tree .cm-node[data-branch='main'] .cm-fork": "Fork main: new branch from here",
    }
    for selector, name in names.items():
        assert _ax_name(page, cdp, selector) == name, selector


def _rating_and_send(page: Any, cdp: Any) -> None:
    # A rating given with the keyboard: the focus stays on the button pressed (drawn
    # again once the rating is stored), not on the page.
    reply = ".cm-transcript .cm-assistant"
    key = _press(page, f"{reply} .cm-rate[data-key$=':rate:3']", "Space")
    page.wait_for_selector(f"{reply} .cm-rate.cm-pressed[data-key$=':rate:3']")
    assert _focused(page) == key
    key = _press(page, f"{reply} .cm-rate[data-key$=':rate:up']", "Enter")
    page.wait_for_selector(f"{reply} .cm-rate.cm-pressed[data-key$=':rate:up']")
    assert _focused(page) == key
    # Send from the keyboard: Send, disabled while the reply runs, hands the focus to
    # the message box.
    page.locator(TEXT_BOX).focus()
    page.keyboard.type("add 2 and 3")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent.includes('Send')")
    page.keyboard.press("Enter")
    page.wait_for_selector(f"{SEND}:disabled")
    assert _focused(page) == "(message box)"
    # The call waiting is read out (a status region), its boxes named.
    page.wait_for_selector(APPROVE)
    header = page.locator(".cm-approval .cm-announce").first
    page.wait_for_function(
        "(el) => el.getAttribute('role') === 'status'"
        " && /1 tool call waiting/.test(el.textContent)",
        arg=header.element_handle(),
    )
    assert _ax_name(page, cdp, ".cm-approval textarea").startswith("Arguments of add (")
    assert _ax_name(page, cdp, ".cm-approval input[type='text']") == "Reason for denying"
    # Approve from the keyboard: no other call waits, so the focus goes to the message box.
    page.locator(APPROVE).focus()
    page.keyboard.press("Enter")
    page.wait_for_selector(f"{APPROVE}:disabled")
    assert _focused(page) == "(message box)"
    page.wait_for_selector(".cm-transcript .cm-body:has-text('The sum is 5.')")
    _idle(page)
    # The finished reply is read out once, in words.
    announced = page.locator(".cm-transcript [role='status'][aria-live='polite']")
    page.wait_for_function(
        "(el) => el.textContent === 'Reply finished: The sum is 5.'",
        arg=announced.element_handle(),
    )


def _redraws(page: Any) -> None:
    # A fork with the keyboard: the view moves to the new branch, the focus stays on
    # the fork button of that message.
    key = _press(page, ".cm-transcript .cm-assistant .cm-fork", "Enter")
    page.wait_for_selector(".cm-tree .cm-node[data-branch='main-fork-1'].cm-active")
    page.wait_for_selector(".cm-transcript .cm-msg:nth-child(2) .cm-regenerate")
    assert _focused(page) == key
    # Back to main from the tree with the keyboard: the focus stays on that name.
    key = _press(page, ".cm-tree .cm-node[data-branch='main'] .cm-node-name", "Enter")
    page.wait_for_selector(".cm-tree .cm-node[data-branch='main'].cm-active")
    page.wait_for_selector(".cm-transcript .cm-body:has-text('The sum is 5.')")
    assert _focused(page) == key
    # A reply arriving with no key pressed (sent from a cell, a moment later): the
    # transcript and the tree are drawn again, and what had the focus keeps it.
    run_new_cell(page, "import threading\nthreading.Timer(2, s.send, ['from a cell']).start()")
    kernel_idle(page)
    fork = ".cm-transcript .cm-assistant:has-text('The sum is 5.') .cm-fork"
    page.locator(fork).focus()
    key = _key(page, fork)
    page.wait_for_selector(".cm-transcript .cm-body:has-text('From a cell.')")
    _idle(page)
    assert _focused(page) == key
    # ... and in the tree, when another reply changes the branch's facts.
    run_new_cell(page, "threading.Timer(2, lambda: s.send('again', branch='main-fork-1')).start()")
    kernel_idle(page)
    tree_fork = ".cm-tree .cm-node[data-branch='main-fork-1'] .cm-fork"
    page.locator(tree_fork).focus()
    page.wait_for_selector(".cm-tree .cm-node[data-branch='main-fork-1']:has-text('4 msgs')")
    assert _focused(page) == "fork:main-fork-1"


def _tree_keys(page: Any, cdp: Any) -> None:
    # The arrow keys move between the branches and between a name and its fork button;
    # the notebook's cell cursor stays where it was. A name says where it hangs.
    tree = ".cm-tree .cm-node"
    cell = "() => window.jupyterapp.shell.currentWidget.content.activeCellIndex"
    before = page.evaluate(cell)
    page.locator(f"{tree}[data-branch='main'] .cm-node-name").focus()
    moves = {
        "ArrowDown": "switch:main-fork-1",
        "ArrowRight": "fork:main-fork-1",
        "ArrowUp": "fork:main",
        "End": "fork:main-fork-1",
        "Home": "fork:main",
        "ArrowLeft": "switch:main",
    }
    for key, focused in moves.items():
        page.keyboard.press(key)
        assert _focused(page) == focused, key
    assert page.evaluate(cell) == before
    described = _ax_name(
        page, cdp, f"{tree}[data-branch='main-fork-1'] .cm-node-name", "description"
    )
    assert described.startswith("forked from main; 4 msgs · ")


def _regenerate_and_stop(page: Any) -> None:
    # ↻ with the keyboard: its reply is replaced by the one streaming, and the focus
    # goes to the message box; so it does from Stop, disabled once the reply ended.
    announced = page.locator(".cm-transcript [role='status'][aria-live='polite']")
    announced.evaluate(
        """(el) => { window.cmAnnounced = 0;
            new MutationObserver(() => { window.cmAnnounced += 1; })
                .observe(el, {childList: true, characterData: true, subtree: true}); }"""
    )
    _press(page, ".cm-transcript .cm-regenerate", "Enter")
    page.wait_for_function(
        "() => { const t = document.querySelector('.cm-live-text');"
        " return t && t.textContent.includes('word30'); }"
    )
    assert _focused(page) == "(message box)"
    # Nothing said while the reply streams: only its end is.
    assert page.evaluate("() => window.cmAnnounced") == 0
    page.locator(STOP).focus()
    page.keyboard.press("Enter")
    page.wait_for_selector(f"{STOP}:disabled")
    assert _focused(page) == "(message box)"
    _idle(page)
    page.wait_for_function("() => window.cmAnnounced === 1")
    assert announced.text_content().startswith("Reply stopped: word0 word1")


def _compare(page: Any, cdp: Any) -> None:
    # The compare view's rating bars: named by the branch they rate, buttons named in
    # words (not by the icon's glyph), the pressed one saying so.
    run_new_cell(page, 's.compare_view("main", "main-fork-1")')
    # main's last reply was stopped: no answer to rate; the fork's is rated.
    bar = ".cm-compare .cm-rating"
    page.wait_for_selector(f"{bar} button[aria-label='score 2 of 5']")
    assert _ax_name(page, cdp, bar) == ("Rating of the answer of branch main-fork-1")
    assert _ax_name(page, cdp, f"{bar} button >> nth=0") == "a good answer"
    score = page.locator(f"{bar} button[aria-label='score 2 of 5']")
    assert score.get_attribute("aria-pressed") == "false"
    score.click()
    page.wait_for_selector(f"{bar} button[aria-label='score 2 of 5'][aria-pressed='true']")
    # Rated with the keyboard: the view is drawn again (the score changes its per-turn
    # figures) and the button pressed keeps the focus, main's column without an answer
    # before it.
    page.locator(f"{bar} button[aria-label='score 4 of 5']").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector(f"{bar} button[aria-label='score 4 of 5'][aria-pressed='true']")
    page.wait_for_timeout(1500)  # the view's next drawing (at most every 0.5 s)
    assert page.evaluate("() => document.activeElement.getAttribute('aria-label')") == (
        "score 4 of 5"
    )
