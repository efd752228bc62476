"""The views left on the page after a kernel restart, in a real browser (JupyterLab,
Chromium, as in test_views_browser_edits): the views made of stock ipywidgets (the
tool approvals, a comparison) shown without another view on the page still carry the
views' stylesheet (no broken-link icon on each part) and disable their buttons, saying
why; the branch tree disables its buttons and says why, and a click on it throws
nothing. And the tree's "N s ago" goes on without a change from the kernel.

Without Chromium the tests are skipped with the command that installs it; under CI
(``CI=true``) they fail instead (see browser_lab.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from browser_lab import chromium_page, kernel_idle, open_and_run_all, start_lab

pytestmark = pytest.mark.slow

RESTART = "window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.restart()"
NOTICE = "Not connected: the kernel restarted"


def _icons(page: Any, view: str) -> list[str]:
    # The content of ipywidgets' broken-link icon on each part of ``view`` it marked.
    marked = page.locator(
        f"{view} .jupyter-widgets-disconnected, .jupyter-widgets-disconnected{view}"
    )
    assert marked.count() > 0  # ipywidgets did mark them
    return list(
        marked.evaluate_all("(els) => els.map((el) => getComputedStyle(el, '::before').content)")
    )


def test_views_of_stock_widgets_after_a_restart(tmp_path: Path) -> None:
    # The approvals and a comparison, with no view of the project's own front end on
    # the page (which would bring the stylesheet along).
    cells = [
        "from cm_notebook import ContextSession, tool\n"
        "from cm_notebook.testing import ScriptedProvider\n"
        "from cm_notebook.widgets import ToolApproval\n"
        "\n"
        "@tool\n"
        "def add(a: int, b: int) -> int:\n"
        '    """Add two integers."""\n'
        "    return a + b\n"
        "\n"
        "fake = (\n"
        '    ScriptedProvider().reply("one").reply("two")\n'
        '    .tool_call("add", {"a": 2, "b": 3}).reply("5")\n'
        ")\n"
        's = ContextSession.create("Stock", provider=fake, tools=[add])\n'
        'await s.send("hi")\n'
        's.branch("b2")\n'
        'await s.send("hello")\n'
        's.branch("tools")\n'
        't = s.send("add 2 and 3")\n'
        "ToolApproval(s)",
        's.compare_view("main", "b2")',
    ]
    with start_lab(tmp_path, cells) as (url, _root), chromium_page(tmp_path, "stock") as page:
        open_and_run_all(page, url)
        page.wait_for_selector(".cm-approval button:has-text('Deny'):not([disabled])")
        page.wait_for_selector(".cm-compare .cm-rating >> nth=1")
        kernel_idle(page)
        assert page.locator(".cm-transcript, .cm-tree, .cm-status").count() == 0
        page.evaluate(RESTART)
        page.wait_for_selector(f".cm-compare .cm-notice:has-text('{NOTICE}')")
        page.wait_for_selector(f".cm-approval .cm-notice:has-text('{NOTICE}')")
        kernel_idle(page)
        # Said once, by each view: not by ipywidgets' broken-link icon on each part.
        for view in (".cm-approval", ".cm-compare"):
            icons = _icons(page, view)
            assert set(icons) <= {"none", "normal"}, (view, icons)
        # Nothing in them can act any more; a click throws nothing.
        ratings = page.locator(".cm-compare .cm-rating button")
        assert ratings.count() == 14  # two answers rated
        assert all(ratings.evaluate_all("(bs) => bs.map((b) => b.disabled)"))
        assert page.locator(".cm-approval button:has-text('Deny')").is_disabled()
        assert page.locator(".cm-approval textarea").first.evaluate("(t) => t.readOnly")
        ratings.first.click(force=True)
        page.locator(".cm-approval button:has-text('Approve once')").click(force=True)
        page.wait_for_timeout(500)  # a click's error would be reported by now
        assert not page.errors, page.errors


def test_the_tree_after_a_restart_and_its_times_going_on(tmp_path: Path) -> None:
    cells = [
        "from cm_notebook import ContextSession\n"
        "from cm_notebook.widgets import BranchTree\n"
        's = ContextSession.create("Tree", provider="scripted")\n'
        'await s.send("hi")\n'
        's.branch("other", switch=False)\n'
        "BranchTree(s)",
    ]
    with start_lab(tmp_path, cells) as (url, _root), chromium_page(tmp_path, "tree") as page:
        # The page's clock is the test's: the tree's timer runs when the test says.
        page.clock.install()
        open_and_run_all(page, url)
        meta = page.locator(".cm-tree .cm-node[data-branch='main'] .cm-node-meta")
        meta.wait_for()
        kernel_idle(page)
        before = meta.text_content()
        # Ten minutes later, with no change from the kernel: the time shown goes on.
        page.clock.fast_forward("10:00")
        page.wait_for_function(
            "([el, before]) => el.textContent !== before", arg=[meta.element_handle(), before]
        )
        assert "min ago" in (meta.text_content() or ""), (before, meta.text_content())
        page.evaluate(RESTART)
        page.wait_for_selector(f".cm-tree .cm-notice:has-text('{NOTICE}')")
        kernel_idle(page)
        buttons = page.locator(".cm-tree button")
        assert buttons.count() == 4  # a name and a fork button per branch
        assert all(buttons.evaluate_all("(bs) => bs.map((b) => b.disabled)"))
        page.locator(".cm-tree .cm-node[data-branch='other'] .cm-node-name").click(force=True)
        page.locator(".cm-tree .cm-fork").first.click(force=True)
        page.wait_for_timeout(500)  # a click's error would be reported by now
        assert not page.errors, page.errors
