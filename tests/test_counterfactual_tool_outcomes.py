"""A counterfactual edit of a tool result gives the new branch a result of its own, with
its own outcome (``metadata.tool_status``), while the reply that made the call, and its
call's status, are shared with the branch it came from. Every view of a branch shows
how the call ended there: a failed call edited into an answer is done on its branch,
an answer edited into an error failed on its branch, and the source branch is as it
was."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import DEADLINE

from cm_notebook.cli import main
from cm_notebook.magics._reply import tool_rounds_html
from cm_notebook.model import Message, MessageMetadata, ToolCall, ToolCallStatus
from cm_notebook.render import ShownCall, shown_call
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool
from cm_notebook.widgets import ChatView, CompareView
from cm_notebook.widgets.snapshot import snapshot_html

NewSession = Callable[..., ContextSession]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def divide(a: int, b: int) -> float:
    """Divide a by b."""
    return a / b


#: Per branch: the outcome and result of each call on it, in order (divide, then add).
Expected = dict[str, list[tuple[str, str]]]


@pytest.fixture
def branches(new_session: NewSession) -> tuple[ContextSession, Expected]:
    """``main``: one turn, where ``divide(1, 0)`` failed, then ``add(1, 2)`` gave 3.
    ``fixed``: the division's error edited into "0.5". ``broken``: the sum edited into
    an error."""
    fake = ScriptedProvider(strict=True).tool_call("divide", {"a": 1, "b": 0})
    fake.tool_call("add", {"a": 1, "b": 2}).reply("The sum is 3.")
    fake.reply("Half.").reply("It could not add.")
    session = new_session(provider=fake, tools=[add, divide], approval="auto")
    session.send("Divide 1 by 0, then add 1 and 2.").result(DEADLINE)
    results = [m for m in session.history() if m.role == "tool"]
    failed, summed = results
    assert failed.content.startswith("error:")
    assert summed.content == "3"
    fixed = session.counterfactual(failed.id, "0.5", name="fixed")
    fixed.result(DEADLINE)
    broken = session.counterfactual(summed.id, "error: the adder is down", name="broken")
    broken.result(DEADLINE)
    expected: Expected = {
        "main": [("failed", failed.content), ("done", "3")],
        "fixed": [("done", "0.5")],
        "broken": [("failed", failed.content), ("failed", "error: the adder is down")],
    }
    return session, expected


def _status_and_result(html_text: str) -> list[tuple[str, str]]:
    # The "[status] → result" of each call line of a snapshot or a reply's output.
    return re.findall(r"\[(\w+)\](?: \(<bdi>[^<]*</bdi>\))? → <bdi>([^<]*)</bdi>", html_text)


def test_the_saved_copy_gives_each_branch_s_outcome(
    branches: tuple[ContextSession, Expected],
) -> None:
    session, expected = branches
    for name, calls in expected.items():
        assert _status_and_result(snapshot_html(session, name)) == calls, name


def test_a_reply_s_tool_lines_give_the_branch_s_outcome(
    branches: tuple[ContextSession, Expected],
) -> None:
    session, expected = branches
    for name, calls in expected.items():
        final = session.history(name)[-1]
        assert _status_and_result(tool_rounds_html(session, final)) == calls, name


def test_the_session_s_html_gives_each_branch_s_outcome(
    branches: tuple[ContextSession, Expected],
) -> None:
    session, expected = branches
    for name, calls in expected.items():
        session.switch(name)
        shown = re.findall(r"&rarr; (\w+)</span>", session._repr_html_())
        assert shown == [s for s, _r in calls], name


def test_the_markdown_export_gives_each_branch_s_outcome(
    branches: tuple[ContextSession, Expected],
) -> None:
    session, expected = branches
    for name, calls in expected.items():
        text = session.export(name).to_markdown()
        shown = re.findall(r"\*\*Tool call\*\* `\w+` \((\w+)\)", text)
        assert shown == [s for s, _r in calls], name


def test_cm_notebook_show_gives_each_branch_s_outcome(
    branches: tuple[ContextSession, Expected], data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session, expected = branches
    for name, calls in expected.items():
        capsys.readouterr()
        code = main(["--data-dir", str(data_dir), "show", session.id, "--branch", name])
        out = capsys.readouterr().out
        assert code == 0, out
        shown = re.findall(r"    tool call \w+\([^)]*\) \[(\w+)\]\n(?:      reason: .*\n)?", out)
        assert shown == [s for s, _r in calls], (name, out)
        assert f"      result: {calls[-1][1]}\n" in out


def test_the_live_transcript_gives_each_branch_s_outcome(
    branches: tuple[ContextSession, Expected],
) -> None:
    session, expected = branches
    for name, calls in expected.items():
        view = ChatView(session, branch=name)
        try:
            shown = [
                (call["status"], call["result"])
                for item in view.transcript.frozen
                for call in item.data["calls"]
            ]
            assert shown == calls, name
        finally:
            view.close()


def test_the_comparison_gives_each_branch_s_outcome(
    branches: tuple[ContextSession, Expected],
) -> None:
    # The two edited branches share the division's call; the sum's call is the broken
    # branch's own, and its edited result failed there.
    session, _expected = branches
    view = CompareView(session, "fixed", "broken")
    try:
        calls = re.findall(r"&#9881;.*?&rarr; (\w+)</span>", view.value)
        assert calls == ["failed"], view.value
    finally:
        view.close()


def test_a_call_without_an_answer_on_the_branch_shows_its_own_state() -> None:
    # A call waiting for a decision has no tool message yet: it is shown as it waits.
    waiting = ToolCall(id="call_1", name="add", arguments={"a": 1}, status=ToolCallStatus.PENDING)
    assert shown_call(waiting, {}) == ShownCall(ToolCallStatus.PENDING, None, None)


def test_an_answer_stored_before_outcomes_were_recorded_shows_the_call_s_status() -> None:
    call = ToolCall(
        id="call_1", name="add", arguments={}, status=ToolCallStatus.DENIED, reason="no"
    )
    old = Message(role="tool", content="error: denied", tool_call_id="call_1")
    assert shown_call(call, {"call_1": old}) == ShownCall(
        ToolCallStatus.DENIED, "error: denied", "no"
    )


def test_a_denial_s_reason_is_not_shown_for_an_answer_edited_into_a_success() -> None:
    # The reason says why the call was denied; on a branch where its result is an
    # answer, it explains nothing there.
    call = ToolCall(
        id="call_1", name="add", arguments={}, status=ToolCallStatus.DENIED, reason="no"
    )
    edited = Message(
        role="tool",
        content="3",
        tool_call_id="call_1",
        metadata=MessageMetadata(tool_status=ToolCallStatus.DONE),
    )
    assert shown_call(call, {"call_1": edited}) == ShownCall(ToolCallStatus.DONE, "3", None)
