"""Run All over a bare ``%cm`` (the live view of the context) below a command or cell
that moves the active branch, in a real kernel: the view, and its saved copy, show the
branch running the cells one by one shows there, never the one active before the
command above it had run; run one by one, nothing changes.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from widget_frontend import FrontEnd, front_end

#: The ``text/plain`` of a conversation's saved copy.
COPY = "<cm_notebook conversation (HTML)>"


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("run-all-view-data")) as frontend:
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
    fe.use_scripted(
        title,
        '[{"reply": "Paris", "chunks": "words", "delay": 0.2},'
        ' {"reply": "Lyon", "chunks": "words", "delay": 0.2}]',
    )


def _text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


def _branches_shown(fe: FrontEnd, mark: int) -> list[str]:
    # The branch each transcript opened since ``mark`` showed first, and every branch
    # it was moved to after: what a person watching the view saw, in order.
    transcripts = [
        c.comm_id
        for c in fe.comms[mark:]
        if c.method == "open"
        and c.content.get("state", {}).get("_model_name") == "AnyModel"
        and "frozen" in c.content.get("state", {})
    ]
    shown: list[str] = []
    for record in fe.comms[mark:]:
        if record.comm_id not in transcripts:
            continue
        branch = record.content.get("state", {}).get("branch")
        if branch and (not shown or shown[-1] != branch):
            shown.append(branch)
    return shown


def _copies(fe: FrontEnd, mark: int) -> list[str]:
    # The saved copy's contents, as displayed and updated since the display log's
    # ``mark``, each once, in order.
    said: list[str] = []
    for _cell, _display_id, data in fe.display_log[mark:]:
        if data.get("text/plain") == COPY:
            text = _text(data["text/html"])
            if not said or said[-1] != text:
                said.append(text)
    return said


def _attached(fe: FrontEnd, name: str) -> None:
    fe.wait_for(
        lambda: _printed(fe, f"getattr({name}, 'view', {name}) is not None"), what="the view"
    )


def test_a_view_below_a_fork_shows_the_fork(fe: FrontEnd) -> None:
    _two_replies(fe, "view below a fork")
    comms, copies = fe.mark(), len(fe.display_log)
    _run_all(
        fe,
        [
            "%%cm\nFirst question",
            "%%cm\nSecond question",
            "%cm branch side",
            "shown = %cm\ndisplay(shown)",
        ],
    )
    _attached(fe, "shown")
    fe.run("import asyncio\nawait asyncio.sleep(1)")  # the copy's last update
    assert _branches_shown(fe, comms) == ["side"]
    said = _copies(fe, copies)
    assert not any("branch main" in text for text in said), said
    assert "branch side · 4 messages" in said[-1]
    assert "Lyon" in said[-1]


def test_a_switch_below_the_view_waits_until_it_has_attached(fe: FrontEnd) -> None:
    # One by one the view shows the fork, then follows the switch back to main.
    _two_replies(fe, "switch below the view")
    comms = fe.mark()
    _run_all(
        fe,
        [
            "%%cm\nFirst question",
            "%%cm\nSecond question",
            "%cm branch side",
            "shown = %cm\ndisplay(shown)",
            "%cm switch main",
            "switched = _",
        ],
    )
    _attached(fe, "shown")
    fe.run("await switched")
    fe.wait_for(lambda: _branches_shown(fe, comms)[-1:] == ["main"], what="the switch")
    assert _branches_shown(fe, comms) == ["side", "main"]


def test_a_view_below_a_queued_system_cell_shows_its_fork(fe: FrontEnd) -> None:
    # The second cell's --system forks main (it has a reply under no prompt) and makes
    # the fork active once it is sent.
    _two_replies(fe, "view below a system cell")
    comms = fe.mark()
    _run_all(
        fe,
        [
            "%%cm\nFirst question",
            '%%cm --system "Be terse."\nSecond question',
            "second = _",
            "shown = %cm\ndisplay(shown)",
        ],
    )
    _attached(fe, "shown")
    fe.run("await second")
    fork = _printed(fe, "slow.active_branch")
    assert fork != "main"
    assert _branches_shown(fe, comms) == [fork]


def test_stop_all_below_the_view_does_not_leave_it_waiting(fe: FrontEnd) -> None:
    # The fork is stopped before it ran: the view shows the branch active then.
    _two_replies(fe, "view then stop all")
    _run_all(
        fe,
        [
            "%%cm\nFirst question",
            "%%cm\nSecond question",
            "%cm branch side",
            "shown = %cm\ndisplay(shown)",
            "%cm stop --all",
        ],
    )
    _attached(fe, "shown")
    assert _printed(fe, "shown.view.chat.branch") == "main"
    assert _printed(fe, "sorted(slow.branches)") == ["main"]


def test_a_view_run_one_by_one_is_shown_at_once(fe: FrontEnd) -> None:
    _two_replies(fe, "view one by one")
    fe.run("%%cm\nFirst question")
    fe.run("await _")
    fe.run("%cm branch side")
    fe.run("shown = %cm\ndisplay(shown)")
    assert _printed(fe, "type(shown).__name__") == "SavedSessionView"
    assert _printed(fe, "shown.chat.branch") == "side"


def test_a_view_below_a_reply_waiting_for_approve_attaches_once_approved(
    fe: FrontEnd,
) -> None:
    # The fork waits for the reply, which waits for a decision: the view waits with
    # them, the kernel free; a decision below it is not held up by the view.
    fe.run(
        """
        from cm_notebook import ContextSession, tool
        from cm_notebook.testing import ScriptedProvider

        @tool
        def add(a: int, b: int) -> int:
            '''Add two numbers.'''
            return a + b

        asks = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}, id="call-1")
        s = ContextSession.create("view below approve", provider=asks.reply("3."), tools=[add])
        %cm use s
        """
    )
    _run_all(
        fe,
        [
            "%%cm\nWhat is 1 + 2?",
            "%cm branch side",
            "shown = %cm\ndisplay(shown)",
        ],
    )
    fe.run("calls = await s.wait_for_approval()")
    assert _printed(fe, "shown.view") is None
    assert fe.run("%cm approve call-1").strip() == "approved add (call-1)"
    _attached(fe, "shown")
    assert _printed(fe, "shown.view.chat.branch") == "side"
    assert _printed(fe, "len(s.history('side'))") == 4


def test_a_view_closed_while_it_waits_makes_no_view(fe: FrontEnd) -> None:
    _two_replies(fe, "view closed while waiting")
    _run_all(
        fe,
        [
            "%%cm\nFirst question",
            "%cm branch side",
            "shown = %cm\nshown.close()",
            "%%cm\nSecond question",
            "second = _",
        ],
    )
    assert _printed(fe, "(await second).content") == "Lyon"
    assert _printed(fe, "(shown.attached.done(), shown.view)") == (True, None)
