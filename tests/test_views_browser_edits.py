"""The transcript in a real browser (JupyterLab, Chromium) when things happen around
the person: a reply starts while they edit a message, a long reply ends while they
read further up, messages grow after they are drawn (a tool call approved) while they
read at the bottom or further up, the kernel restarts during a reply, the kernel dies
while they edit.

Without Chromium the tests are skipped with the command that installs it; under CI
(``CI=true``) they fail instead (see browser_lab.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from browser_lab import chromium_page, kernel_idle, open_and_run_all, run_new_cell, start_lab

pytestmark = pytest.mark.slow

SEND = ".cm-chat button.widget-button:has-text('Send')"
STOP = ".cm-chat button.widget-button:has-text('Stop')"
TEXT_BOX = ".cm-chat .widget-textarea textarea"


def _send(page: Any, text: str) -> None:
    page.locator(TEXT_BOX).fill(text)
    page.locator(SEND).click()


def _idle(page: Any) -> None:
    page.wait_for_function(
        "() => { const b = [...document.querySelectorAll('.cm-chat button.widget-button')]"
        ".find((b) => b.textContent.includes('Send')); return b && !b.disabled; }"
    )


def test_an_open_edit_box_keeps_its_text_when_a_reply_starts(tmp_path: Path) -> None:
    cells = [
        "from cm_notebook import ContextSession\n"
        "from cm_notebook.testing import ScriptedProvider\n"
        "fake = ScriptedProvider()\n"
        "for i in range(4):\n"
        "    fake.reply(' '.join(f'r{i}w{j}' for j in range(40)), chunks='words', delay=0.03)\n"
        's = ContextSession.create("Edits", provider=fake)\n'
        "s",
        't = s.send("the first question")',
    ]
    with start_lab(tmp_path, cells) as (url, _root), chromium_page(tmp_path, "edit") as page:
        open_and_run_all(page, url)
        page.wait_for_selector(".cm-transcript .cm-assistant .cm-regenerate")
        _idle(page)
        page.locator(".cm-transcript .cm-edit").first.click()
        box = page.locator(".cm-transcript .cm-edit-box")
        box.fill("my careful edit")
        # A reply started from a cell (a moment later, while the person types): new
        # messages, and ↻ moves to the new last reply.
        run_new_cell(page, "import threading\nthreading.Timer(2, s.send, ['from a cell']).start()")
        kernel_idle(page)
        box.click()
        box.press("End")
        box.type(" of the question")
        page.wait_for_selector(".cm-transcript .cm-user:has-text('from a cell')")
        _idle(page)
        page.wait_for_selector(".cm-transcript .cm-assistant:has-text('r1w39') .cm-regenerate")
        assert box.count() == 1
        assert box.input_value() == "my careful edit of the question"
        # Still focused, with the caret where it was: typing goes on.
        page.keyboard.type("!")
        assert box.input_value() == "my careful edit of the question!"
        # ↻ (a new reply on the branch, without a new user message) keeps it too.
        page.locator(".cm-transcript .cm-regenerate").click()
        page.wait_for_selector(".cm-transcript .cm-assistant:has-text('r2w39')")
        _idle(page)
        assert box.input_value() == "my careful edit of the question!"
        # Shift+Enter is the box's (a new line), not JupyterLab's: it ran the cell
        # holding the view again (a new context, a new request), the edit lost.
        prompts = page.locator(".jp-Cell .jp-InputPrompt").all_text_contents()
        box.press("Shift+Enter")
        page.wait_for_timeout(500)  # a cell run would have begun by now
        assert page.locator(".jp-Cell .jp-InputPrompt").all_text_contents() == prompts
        assert box.input_value() == "my careful edit of the question!\n"
        # Cancel closes it; its text is dropped on purpose.
        page.locator(".cm-transcript button:has-text('Cancel')").click()
        assert box.count() == 0
        assert not page.errors, page.errors


def test_a_long_reply_ending_leaves_the_reader_where_they_scrolled(tmp_path: Path) -> None:
    cells = [
        "from cm_notebook import ContextSession\n"
        "from cm_notebook.testing import ScriptedProvider\n"
        "fake = ScriptedProvider().reply(' '.join(f'w{i}' for i in range(2500)),"
        " chunks='words', delay=0.003)\n"
        's = ContextSession.create("Scroll", provider=fake)\n'
        "s",
    ]
    with start_lab(tmp_path, cells) as (url, _root), chromium_page(tmp_path, "scroll") as page:
        open_and_run_all(page, url)
        page.wait_for_selector(TEXT_BOX)
        _send(page, "long")
        # Long enough to scroll, then the reader goes to the top while it streams.
        page.wait_for_function(
            "() => { const s = document.querySelector('.cm-scroll');"
            " return document.querySelector('.cm-live-text')"
            " && s.scrollHeight > 2 * s.clientHeight; }"
        )
        page.evaluate("() => { document.querySelector('.cm-scroll').scrollTop = 0; }")
        page.wait_for_selector(".cm-transcript .cm-assistant .cm-body:has-text('w2499')")
        _idle(page)
        page.wait_for_timeout(500)  # any scroll on completion has happened by now
        top = page.evaluate("() => document.querySelector('.cm-scroll').scrollTop")
        assert top == 0
        assert not page.errors, page.errors


SCROLLER = ".cm-transcript .cm-scroll"
# How far the transcript's end is below what its scroller shows, in px.
BELOW_JS = "(s) => s.scrollHeight - s.scrollTop - s.clientHeight"


def _settled(page: Any, answer: str) -> None:
    # The reply ``answer`` drawn whole (its rating bar comes with its last update), the
    # chat idle, and the layout of that update observed (two animation frames).
    page.wait_for_selector(f".cm-transcript .cm-assistant:has-text('{answer}') .cm-rating")
    _idle(page)
    page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)))")


def _at_bottom(page: Any, when: str) -> None:
    # Following: the end in view (a pixel of rounding). Waited for, so that a scroll
    # still to come is not taken for a failure; it never comes if the view stopped.
    try:
        page.wait_for_function(f"(s) => ({BELOW_JS})(s) <= 1", arg=_scroller(page), timeout=10_000)
    except Exception:
        below = page.locator(SCROLLER).evaluate(BELOW_JS)
        raise AssertionError(f"{when}: the transcript's end is {below} px below the view") from None


def _scroller(page: Any) -> Any:
    return page.locator(SCROLLER).element_handle()


def test_the_transcript_follows_messages_that_grow_and_leaves_a_reader_who_scrolled_up(
    tmp_path: Path,
) -> None:
    # Boxes grow after they are first drawn: a tool call gets its result and "done", a
    # finished reply its stats and rating bar. A view at the bottom stays there (and
    # keeps following the replies after); one scrolled up by the reader stays put.
    cells = [
        "from cm_notebook import ContextSession, tool\n"
        "from cm_notebook.testing import ScriptedProvider\n"
        "@tool\n"
        "def add(a: int, b: int) -> int:\n"
        '    """Add two integers."""\n'
        "    return a + b\n"
        "fake = ScriptedProvider()\n"
        's = ContextSession.create("Follow", provider=fake, tools=[add])\n'
        "for i in range(12):\n"
        '    await s.send(f"question {i}")\n'
        'fake.tool_call("add", {"a": 5, "b": 5}).reply("The sum is ten.")\n'
        "s",
    ]
    with start_lab(tmp_path, cells) as (url, _root), chromium_page(tmp_path, "follow") as page:
        open_and_run_all(page, url)
        page.wait_for_selector(".cm-transcript .cm-assistant:has-text('echo: question 11')")
        assert page.locator(SCROLLER).evaluate("(s) => s.scrollHeight > 2 * s.clientHeight")
        _at_bottom(page, "first drawn")

        # 1. A tool call, approved: its message is redrawn with the result, then the
        # answer comes, and is redrawn finished.
        _send(page, "add 5 and 5")
        approve = page.locator(".cm-approval button:has-text('Approve once')")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.cm-approval button')]"
            ".some((b) => b.textContent.includes('Approve once') && !b.disabled)"
        )
        _at_bottom(page, "asking for approval")
        approve.click()
        page.wait_for_selector(".cm-transcript .cm-call-result:has-text('10')")
        _settled(page, "The sum is ten.")
        _at_bottom(page, "after the approved call's answer")

        # 2. ... and it follows the next reply too.
        _send(page, "next question")
        _settled(page, "echo: next question")
        _at_bottom(page, "after the next reply")

        # 3. The reader scrolls up (the wheel): a new reply leaves them where they are.
        page.locator(SCROLLER).hover()
        before = page.locator(SCROLLER).evaluate("(s) => s.scrollTop")
        page.mouse.wheel(0, -300)
        page.wait_for_function(
            "([s, top]) => s.scrollTop < top - 200", arg=[_scroller(page), before]
        )
        read = page.locator(SCROLLER).evaluate("(s) => s.scrollTop")
        _send(page, "one more")
        _settled(page, "echo: one more")
        assert abs(page.locator(SCROLLER).evaluate("(s) => s.scrollTop") - read) <= 1
        assert page.locator(SCROLLER).evaluate(BELOW_JS) > 300

        # 4. Back at the bottom (as the End key takes them), the view follows again.
        page.locator(SCROLLER).evaluate("(s) => { s.scrollTop = s.scrollHeight; }")
        _at_bottom(page, "scrolled back down")
        _send(page, "the last one")
        _settled(page, "echo: the last one")
        _at_bottom(page, "after the reply once scrolled back down")
        assert not page.errors, page.errors


def test_a_kernel_restart_during_a_reply_leaves_a_disconnected_view(tmp_path: Path) -> None:
    cells = [
        "from cm_notebook import ContextSession\n"
        "from cm_notebook.testing import ScriptedProvider\n"
        "fake = ScriptedProvider()\n"
        "for i in range(3):\n"
        "    fake.reply(' '.join(f'r{i}w{j}' for j in range(150)), chunks='words', delay=0.06)\n"
        's = ContextSession.create("Restart", provider=fake)\n'
        "s",
    ]
    with start_lab(tmp_path, cells) as (url, _root), chromium_page(tmp_path, "restart") as page:
        open_and_run_all(page, url)
        page.wait_for_selector(TEXT_BOX)
        _send(page, "a long one")
        page.wait_for_selector(".cm-live-text:has-text('r0w5')")
        page.evaluate(
            "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()"
        )
        page.wait_for_selector(".cm-transcript .cm-notice:has-text('kernel restarted')")
        kernel_idle(page)
        # The reply will never end here: no streaming marker, no live state, no buttons.
        assert "▍" not in (page.locator(".cm-transcript").text_content() or "")
        assert "Streaming" not in (page.locator(".cm-status").text_content() or "")
        assert "not connected" in (page.locator(".cm-status").text_content() or "")
        assert page.locator(SEND).is_disabled()
        assert page.locator(STOP).is_disabled()
        assert page.locator(".cm-transcript .cm-edit").first.is_disabled()
        # ... said once, by the view: not by ipywidgets' broken-link icon on each part.
        marked = page.locator(
            ".cm-session .jupyter-widgets-disconnected, .jupyter-widgets-disconnected.cm-session"
        )
        assert marked.count() > 0  # ipywidgets did mark them
        icons = marked.evaluate_all(
            "(els) => els.map((el) => getComputedStyle(el, '::before').content)"
        )
        assert set(icons) <= {"none", "normal"}, icons
        said = page.locator(".cm-session .cm-notice:visible", has_text="kernel restarted")
        assert said.count() == 1, said.all_text_contents()  # the chat's, not the tree's too
        # Clicks on it do nothing, and throw nothing.
        page.locator(STOP).click(force=True)
        page.locator(".cm-transcript .cm-fork").first.click(force=True)
        page.wait_for_timeout(500)  # a click's error would be reported by now
        assert not page.errors, page.errors


def test_a_kernel_that_died_leaves_a_disconnected_view_and_the_edit_text(tmp_path: Path) -> None:
    # A killed kernel is restarted by the server on its own; the views learn it as on a
    # restart a person asks for, and an edit box open then keeps what was typed in it.
    cells = [
        "from cm_notebook import ContextSession\n"
        "from cm_notebook.testing import ScriptedProvider\n"
        's = ContextSession.create("Crash", provider=ScriptedProvider().reply("an answer"))\n'
        "s",
        't = s.send("the first question")',
    ]
    with start_lab(tmp_path, cells) as (url, _root), chromium_page(tmp_path, "crash") as page:
        open_and_run_all(page, url)
        page.wait_for_selector(".cm-transcript .cm-assistant:has-text('an answer')")
        _idle(page)
        page.locator(".cm-transcript .cm-edit").first.click()
        box = page.locator(".cm-transcript .cm-edit-box")
        box.fill("an edit typed before the crash")
        run_new_cell(page, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
        page.wait_for_selector(".jp-Dialog >> text=Kernel Restarting", timeout=60_000)
        page.locator(".jp-Dialog button:has-text('Ok')").click()
        kernel_idle(page)
        page.wait_for_selector(".cm-transcript .cm-notice:has-text('kernel restarted')")
        assert "not connected" in (page.locator(".cm-status").text_content() or "")
        # The box and its text stay, to copy; nothing in the view can act any more.
        assert box.count() == 1
        assert box.input_value() == "an edit typed before the crash"
        assert box.evaluate("(b) => b.readOnly")
        assert page.locator(TEXT_BOX).evaluate("(b) => b.readOnly")
        assert page.locator(SEND).is_disabled()
        assert page.locator(".cm-transcript .cm-edit-send").is_disabled()
        page.locator(".cm-transcript .cm-edit-send").click(force=True)
        page.wait_for_timeout(500)  # a click's error would be reported by now
        assert box.input_value() == "an edit typed before the crash"
        # Keys typed in the read-only box are not the notebook's commands: "d d"
        # deleted the cell holding the view, "b" inserted one, "m" made it Markdown.
        cells_before = page.locator(".jp-Notebook .jp-Cell").count()
        box.focus()
        for key in ("d", "d", "b", "m", "x"):
            page.keyboard.press(key)
        page.wait_for_timeout(500)  # a command would have run by now
        assert page.locator(".jp-Notebook .jp-Cell").count() == cells_before
        assert page.locator(".jp-Notebook .jp-MarkdownCell").count() == 0
        assert box.input_value() == "an edit typed before the crash"
        assert not page.errors, page.errors
