"""A counterfactual edit of a tool result: the new branch holds the edited tool message
but shares the reply that made the call (and its original ``ToolCall.result``) with the
branch it came from. Every view of the new branch shows the edited result, the one the
model was sent; the source branch still shows its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cli_process import cli
from test_session_support import DEADLINE

from cm_notebook.magics._reply import tool_rounds_html
from cm_notebook.providers._convert import to_openai_messages
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool
from cm_notebook.widgets import ChatView
from cm_notebook.widgets.snapshot import snapshot_html

NewSession = Callable[..., ContextSession]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture
def edited(new_session: NewSession) -> tuple[ContextSession, ScriptedProvider, str]:
    """A session whose ``main`` called ``add`` (result 3), and the branch where that
    result was edited to 4."""
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2})
    fake.reply("The sum is 3.").reply("The sum is 4.")
    session = new_session(provider=fake, tools=[add], approval="auto")
    session.send("What is 1 + 2?").result(DEADLINE)
    result = session.history()[2]
    assert (result.role, result.content) == ("tool", "3")
    replay = session.counterfactual(result.id, "4")
    replay.result(DEADLINE)
    return session, fake, replay.branch


def test_the_model_is_sent_the_edited_result(
    edited: tuple[ContextSession, ScriptedProvider, str],
) -> None:
    session, fake, branch = edited
    sent = fake.requests[-1].messages
    assert [m.content for m in sent if m.role == "tool"] == ["4"]
    wire = to_openai_messages(session.history(branch))
    assert [m["content"] for m in wire if m["role"] == "tool"] == ["4"]


def test_cm_notebook_show_gives_the_branch_s_result(
    edited: tuple[ContextSession, ScriptedProvider, str], data_dir: Path
) -> None:
    session, _fake, branch = edited
    shown = cli(data_dir, "show", session.id, "--branch", branch)
    assert shown.returncode == 0, shown.stderr
    assert "      result: 4\n" in shown.stdout
    assert "result: 3" not in shown.stdout
    source = cli(data_dir, "show", session.id, "--branch", "main")
    assert '    tool call add({"a": 1, "b": 2}) [done]\n      result: 3\n' in source.stdout


def test_the_saved_copy_gives_the_branch_s_result(
    edited: tuple[ContextSession, ScriptedProvider, str],
) -> None:
    session, _fake, branch = edited
    copy = snapshot_html(session, branch)
    assert "[done] → <bdi>4</bdi>" in copy
    assert "→ <bdi>3</bdi>" not in copy
    assert "[done] → <bdi>3</bdi>" in snapshot_html(session, "main")


def test_a_reply_s_tool_lines_give_the_branch_s_result(
    edited: tuple[ContextSession, ScriptedProvider, str],
) -> None:
    # What a magic's saved reply shows of the calls its turn made.
    session, _fake, branch = edited
    final = session.history(branch)[-1]
    assert "[done] → <bdi>4</bdi>" in tool_rounds_html(session, final)
    assert "[done] → <bdi>3</bdi>" in tool_rounds_html(session, session.history("main")[-1])


def test_the_live_transcript_gives_the_branch_s_result(
    edited: tuple[ContextSession, ScriptedProvider, str],
) -> None:
    session, _fake, branch = edited
    for name, result in ((branch, "4"), ("main", "3")):
        view = ChatView(session, branch=name)
        try:
            calls = [call for item in view.transcript.frozen for call in item.data["calls"]]
            assert [call["result"] for call in calls] == [result]
        finally:
            view.close()


def test_the_markdown_export_gives_the_branch_s_result(
    edited: tuple[ContextSession, ScriptedProvider, str],
) -> None:
    session, _fake, branch = edited
    # A result is shown once, in the tool message that answers the call.
    text = session.export(branch).to_markdown()
    assert "*Result of tool call `call_1`*\n\n4\n" in text
    assert "Result:" not in text
    assert "\n3\n" not in text
