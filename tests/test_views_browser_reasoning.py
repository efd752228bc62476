"""A thinking model's reasoning in the chat view of a real browser (JupyterLab, Chromium):
a collapsed "Thinking…" section of the streaming reply that grows while the model
reasons, and the reply's collapsed reasoning block once it is finished (kept open if
the reader opened it).

Without Chromium the test is skipped with the command that installs it; under CI
(``CI=true``) it fails instead (see browser_lab.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_lab import chromium_page, kernel_idle, open_and_run_all, run_new_cell, start_lab

pytestmark = pytest.mark.slow

LIVE = ".cm-transcript .cm-live .cm-live-reasoning"


def test_the_reasoning_grows_collapsed_while_the_model_thinks(tmp_path: Path) -> None:
    cells = [
        "from cm_notebook import ContextSession\n"
        "from cm_notebook.testing import ScriptedProvider\n"
        "thought = ' '.join(f'idea{i}' for i in range(40)) + ' <b>not bold</b>'\n"
        "fake = ScriptedProvider().hang(reasoning=thought)\n"
        's = ContextSession.create("Thinking", provider=fake)\n'
        "s",
        't = s.send("A hard question")',
    ]
    with start_lab(tmp_path, cells) as (url, _root), chromium_page(tmp_path, "think") as page:
        open_and_run_all(page, url)
        # All of it, as plain text (its markup shown, not applied), while no answer came.
        page.wait_for_function(
            "(sel) => { const d = document.querySelector(sel);"
            " return d && d.textContent.includes('idea39 <b>not bold</b>'); }",
            arg=LIVE,
        )
        section = page.locator(LIVE)
        assert section.is_visible()
        assert section.locator("summary").inner_text() == "Thinking…"
        assert section.evaluate("(d) => d.open") is False  # collapsed: the answer matters
        assert section.locator("b").count() == 0
        assert page.locator(".cm-transcript .cm-live .cm-live-text").inner_text() == ""
        # The reader opens it; stopped, the reply's reasoning block stays open.
        section.locator("summary").click()
        assert section.evaluate("(d) => d.open") is True
        run_new_cell(page, "t.cancel()")
        kernel_idle(page)
        block = page.locator(".cm-transcript .cm-assistant .cm-reasoning-box details")
        block.wait_for()
        assert "Reasoning (42 words)" in block.locator("summary").inner_text()
        assert block.evaluate("(d) => d.open") is True
        assert page.locator(LIVE).is_hidden()
        assert not page.errors, page.errors
