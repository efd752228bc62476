"""What a ``ToolApproval`` shown on its own leaves in a saved notebook.

Widget state is not saved by default, so the view is followed by a ``text/html``
output of its calls and decisions, kept current through its display id as calls are
asked and decided, and hidden on a live page by the view's copy hider. Driven in a
real kernel over ZMQ (a click on Deny as a browser sends it), in JupyterLab in
Chromium (the copy hidden on the live page), and headless as ``nbconvert --execute``
runs a notebook, its HTML opened in Chromium without a kernel.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from browser_lab import chromium_page, need_chromium, open_and_run_all, start_lab
from widget_frontend import FrontEnd, front_end

PLAIN = "<cm_notebook tool approvals (HTML)>"
# Markup and a right-to-left override, in the model's arguments and in a reason.
EVIL = '<img src=x onerror="alert(1)"></div><script>alert(2)</script>\u202eevil'

SETUP = f"""
from cm_notebook import ContextSession, tool
from cm_notebook.testing import ScriptedProvider
from cm_notebook.widgets import ToolApproval

@tool
def lookup(query: str) -> str:
    \"\"\"Look something up.\"\"\"
    return "found: " + query

model = (
    ScriptedProvider()
    .tool_call("lookup", {{"query": {EVIL!r}}})
    .reply("First answer.")
    .tool_call("lookup", {{"query": "plain"}})
    .reply("Second answer.")
)
s = ContextSession.create("approvals", provider=model, tools=[lookup])
turn = s.send("Look it up")
calls = await turn.wait_for_approval()
"""


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("approval-copy-data")) as frontend:
        yield frontend


def _no_live_markup(html: str) -> None:
    # Escaped, never live: no element made from the model's or the person's text.
    assert "<script" not in html
    assert "<img" not in html
    assert "&lt;script&gt;" in html


def _model_with(fe: FrontEnd, key: str, value: str) -> str:
    [comm_id] = [c for c, state in fe.models.items() if state.get(key) == value]
    return comm_id


def test_a_shown_view_leaves_its_calls_then_its_decisions(fe: FrontEnd) -> None:
    fe.run(SETUP)
    before = set(fe.displays)
    fe.run("view = ToolApproval(s)\nview")
    [saved] = [k for k in fe.displays if k not in before and fe.displays[k]["text/plain"] == PLAIN]
    html = fe.displays[saved]["text/html"]
    # The pending call: its tool, its id, its arguments, and that it waits.
    assert "1 tool call waiting for approval" in html
    assert "<bdi>lookup</bdi>" in html
    assert "call_1" in html
    assert "waiting for approval</b>" in html
    assert "&lt;img src=x onerror=" in html
    assert "\\u202eevil" in html
    assert "\u202e" not in html
    _no_live_markup(html)
    # Marked for the view's hider, which is one of the view's parts.
    [hider] = [c for c, state in fe.models.items() if "copy_id" in state]
    assert f'data-cm-copy="{fe.models[hider]["copy_id"]}"' in html
    [live] = fe.with_class("cm-approval")
    assert f"IPY_MODEL_{hider}" in live["children"]

    # Denied with a reason typed in the row, by a click, as in a browser.
    fe.edit(_model_with(fe, "description", "Reason for denying"), value=EVIL)
    fe.click(_model_with(fe, "description", "Deny"))
    assert "First answer." in fe.run("print((await turn).content)")
    fe.wait_for(
        lambda: "Decision history (1)" in fe.displays[saved]["text/html"], what="the denial"
    )
    html = fe.displays[saved]["text/html"]
    assert "No tool call waiting for approval" in html
    assert ">denied</b>" in html
    assert "by <bdi>user</bdi>" in html
    # The reason, isolated: its override cannot reorder the words around it.
    assert "reason: <bdi>&lt;img src=x" in html
    assert "\u202eevil</bdi>" in html
    _no_live_markup(html)

    # Approved in code, with edited arguments and a name: the copy says both.
    fe.run(
        """
        turn = s.send("Again")
        [call] = await turn.wait_for_approval()
        """
    )
    fe.wait_for(
        lambda: "1 tool call waiting" in fe.displays[saved]["text/html"], what="the second call"
    )
    assert "plain" in fe.displays[saved]["text/html"]
    fe.run(
        's.approve(call.id, arguments={"query": "edited"}, by="ana")\nprint((await turn).content)'
    )
    fe.wait_for(
        lambda: "Decision history (2)" in fe.displays[saved]["text/html"], what="the approval"
    )
    html = fe.displays[saved]["text/html"]
    assert ">approved</b>" in html
    assert "by <bdi>ana</bdi>" in html
    assert "edited" in html
    assert "arguments <code>" in html
    # Newest first.
    assert html.index("by <bdi>ana</bdi>") < html.index("by <bdi>user</bdi>")
    # The hider is still a part of the view, whose rows changed meanwhile.
    assert f"IPY_MODEL_{hider}" in fe.with_class("cm-approval")[0]["children"]


def test_a_closed_view_shown_again_leaves_no_new_copy(fe: FrontEnd) -> None:
    fe.run("closed = ToolApproval(s)\nclosed")
    before = set(fe.displays)
    fe.run("closed.close()\nclosed")
    assert not [k for k in fe.displays if k not in before]


def _text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def test_nbconvert_html_of_an_executed_notebook_shows_the_decisions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As `jupyter nbconvert --execute` then `--to html`: the view's cell is over when
    # the call is decided; its copy must still end with the decision.
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nbconvert = pytest.importorskip("nbconvert")
    need_chromium()
    monkeypatch.setenv("CM_NOTEBOOK_DATA_DIR", str(tmp_path / "data"))
    cells = [
        SETUP,
        "ToolApproval(s)",
        "s.deny(calls[0].id, reason='not today')\nprint((await turn).content)",
    ]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    [saved] = [
        "".join(out["data"]["text/html"])
        for out in notebook.cells[1].outputs
        if out.get("data", {}).get("text/plain") == PLAIN
    ]
    assert "denied" in _text(saved)
    assert "not today" in saved
    assert "No tool call waiting for approval" in saved
    assert "1 tool call" not in saved

    page_path = tmp_path / "approvals.html"
    body, _ = nbconvert.HTMLExporter().from_notebook_node(notebook)
    page_path.write_text(body, encoding="utf-8")
    with chromium_page(tmp_path, "approval-copy") as page:
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        page.goto(page_path.as_uri(), wait_until="domcontentloaded")
        copy = page.locator(".cm-approval-copy")
        copy.wait_for()
        shown = copy.inner_text()
        assert "No tool call waiting for approval" in shown
        assert "<bdi>lookup</bdi>" not in shown
        assert "lookup" in shown
        assert "Decision history (1)" in shown
        assert "denied" in shown
        assert "not today" in shown
        assert "&lt;img" not in shown
        assert "<img src=x" in shown
        assert page.locator(".cm-approval-copy img, .cm-approval-copy script").count() == 0
        assert dialogs == []


def test_on_a_live_page_the_copy_is_hidden_and_follows_a_click(tmp_path: Path) -> None:
    with (
        start_lab(tmp_path, [SETUP, "view = ToolApproval(s)\nview"]) as (url, _root),
        chromium_page(tmp_path, "approval-copy-live") as page,
    ):
        open_and_run_all(page, url)
        deny = page.locator(".cm-approval button:has-text('Deny')")
        deny.wait_for()
        copy = page.locator("[data-cm-copy] .cm-approval-copy")
        copy.wait_for(state="attached")
        # Hidden by the view's hider: the live view above says the same.
        page.wait_for_function(
            "() => [...document.querySelectorAll('[data-cm-copy]')].every((c) => !c.offsetParent)"
        )
        deny.click()
        page.wait_for_selector(
            "[data-cm-copy] .cm-approval-copy:has-text('Decision history (1)')", state="attached"
        )
        assert page.locator("[data-cm-copy]").count() == 1
        assert page.locator("[data-cm-copy]").first.is_hidden()
        assert page.errors == []
