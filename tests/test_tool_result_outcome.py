"""A tool result's outcome (ran, failed, denied) is recorded on the tool message that
answers the call, so a request flags the result the model is sent, not the status of
the call in the reply it answers: a counterfactual edit of a result on a new branch
shares that reply (and its call's status) with the branch it came from."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_session_support import DEADLINE

from cm_notebook.model import Message, ToolCallStatus
from cm_notebook.providers._anthropic_request import to_anthropic_messages
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool

NewSession = Callable[..., ContextSession]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool
def divide(a: int, b: int) -> float:
    """Divide a by b."""
    return a / b


def _results(messages: list[Message]) -> list[dict[str, Any]]:
    # The tool_result blocks of the Anthropic request made of ``messages``.
    _system, converted = to_anthropic_messages(messages)
    return [
        block for entry in converted for block in entry["content"] if block["type"] == "tool_result"
    ]


def _ran(
    new_session: NewSession, name: str, arguments: dict[str, int]
) -> tuple[ContextSession, ScriptedProvider, Message]:
    # A session whose ``main`` called ``name`` once, and the tool message answering it.
    fake = ScriptedProvider(strict=True).tool_call(name, arguments)
    fake.reply("First answer.").reply("Second answer.")
    session = new_session(provider=fake, tools=[add, divide], approval="auto")
    session.send("Work it out.").result(DEADLINE)
    result = session.history()[2]
    assert result.role == "tool"
    return session, fake, result


def test_a_failed_call_edited_into_an_answer_is_sent_as_a_success(
    new_session: NewSession,
) -> None:
    session, fake, result = _ran(new_session, "divide", {"a": 1, "b": 0})
    assert result.content.startswith("error:")
    assert result.metadata.tool_status is ToolCallStatus.FAILED
    [flagged] = _results(fake.requests[-1].messages)
    assert flagged["is_error"] is True

    replay = session.counterfactual(result.id, "0.5")
    replay.result(DEADLINE)
    # The call in the shared reply still failed; the result on the new branch did not.
    assert session.history(replay.branch)[1].tool_calls[0].status is ToolCallStatus.FAILED
    [sent] = _results(fake.requests[-1].messages)
    assert sent == {"type": "tool_result", "tool_use_id": result.tool_call_id, "content": "0.5"}
    assert _results(session.history(replay.branch)) == [sent]
    # The source branch still sends its own result as the error it was.
    assert _results(session.history("main")) == [flagged]


def test_an_answer_edited_into_an_error_is_sent_as_one(new_session: NewSession) -> None:
    session, fake, result = _ran(new_session, "add", {"a": 1, "b": 2})
    assert result.metadata.tool_status is ToolCallStatus.DONE
    assert "is_error" not in _results(fake.requests[-1].messages)[0]

    replay = session.counterfactual(result.id, "error: the adder is offline")
    replay.result(DEADLINE)
    [sent] = _results(fake.requests[-1].messages)
    assert sent["content"] == "error: the adder is offline"
    assert sent["is_error"] is True
    assert session.history(replay.branch)[2].metadata.tool_status is ToolCallStatus.FAILED
    assert "is_error" not in _results(session.history("main"))[0]


@pytest.mark.parametrize("approved", [False, True])
def test_a_denied_result_edited_into_another_error_stays_denied(
    new_session: NewSession, approved: bool
) -> None:
    # A failure edited into another keeps its kind; into an answer it is a success.
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2})
    fake.reply("It was denied.").reply("Again.")
    session = new_session(provider=fake, tools=[add], approval="deny")
    session.send("Add them.").result(DEADLINE)
    result = session.history()[2]
    assert result.metadata.tool_status is ToolCallStatus.DENIED
    text = "0.5" if approved else "error: denied, as policy says"
    replay = session.counterfactual(result.id, text)
    replay.result(DEADLINE)
    edited = session.history(replay.branch)[2]
    assert edited.metadata.tool_status is (
        ToolCallStatus.DONE if approved else ToolCallStatus.DENIED
    )
    [sent] = _results(fake.requests[-1].messages)
    assert sent.get("is_error", False) is not approved


def test_a_stored_result_keeps_its_outcome_on_disk(new_session: NewSession, data_dir: Path) -> None:
    session, _fake, result = _ran(new_session, "divide", {"a": 1, "b": 0})
    path = data_dir / "contexts" / session.id / "messages" / f"{result.id}.json"
    stored = json.loads(path.read_text(encoding="utf-8"))
    assert stored["metadata"]["tool_status"] == "failed"


def test_a_fork_s_answer_for_a_call_waiting_elsewhere_is_an_error_after_the_call_ran(
    new_session: NewSession,
) -> None:
    # A fork made at a reply whose call waits answers it on its own branch as having no
    # result there; once the call runs on the other branch (its status, shared, done),
    # the fork still sends its answer as the error it is.
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2})
    fake.reply("On the fork.").reply("It is 3.").reply("Still on the fork.")
    session = new_session(provider=fake, tools=[add], approval="ask")
    turn = session.send("What is 1 + 2?")
    deadline = time.monotonic() + DEADLINE
    while not session.pending_tool_calls:
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    [waiting] = session.pending_tool_calls
    session.branch("fork", switch=False)
    session.send("Meanwhile, hello.", branch="fork").result(DEADLINE)
    answer = session.history("fork")[2]
    assert "has no result on this branch" in answer.content
    assert answer.metadata.tool_status is ToolCallStatus.FAILED

    session.approve(waiting.id)
    turn.result(DEADLINE)
    assert session.history("fork")[1].tool_calls[0].status is ToolCallStatus.DONE
    session.send("And now?", branch="fork").result(DEADLINE)
    [sent] = _results(fake.requests[-1].messages)
    assert (sent["content"], sent["is_error"]) == (answer.content, True)
    [ran] = _results(session.history("main"))
    assert (ran["content"], "is_error" in ran) == ("3", False)
