"""Replays and counterfactual edits whose turn is in its tool round: a turn stopped
there ends the replay (it has no answer), and a reply whose tool calls still wait for a
decision cannot be edited until they are decided."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from test_session_support import DEADLINE

from cm_notebook import tool
from cm_notebook.errors import StateError
from cm_notebook.magics._remedies import for_magics
from cm_notebook.model import ToolCall
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

NewSession = Callable[..., ContextSession]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def _waiting(session: ContextSession) -> list[ToolCall]:
    # The calls waiting for a decision, polled for with a deadline.
    deadline = time.monotonic() + DEADLINE
    while not (calls := session.pending_tool_calls):
        assert time.monotonic() < deadline, "no tool call came to wait for a decision"
        time.sleep(0.01)
    return calls


def test_a_turn_stopped_while_its_tool_calls_wait_ends_the_replay(
    new_session: NewSession,
) -> None:
    session = new_session(provider=ScriptedProvider(), tools=[add])  # approval: ask
    for question in ("one", "two", "three"):
        session.send(question).result(DEADLINE)
    other = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2})
    other.reply("second").reply("third")
    replay = session.replay("main", provider=other, name="rp")
    _waiting(session)
    assert replay.turn is not None
    replay.turn.cancel()  # the Stop button on the replay's running turn
    comparison = replay.result(DEADLINE)
    # "two" and "three" are not sent after a turn that has no answer.
    assert [request.messages[-1].content for request in other.requests] == ["one"]
    assert [m.role for m in session.history("rp")] == ["user", "assistant", "tool"]
    assert len(comparison.turns) == 3
    first = comparison.turns[0].other
    assert first is not None
    assert first.unfinished


def test_a_reply_whose_tool_calls_wait_cannot_be_edited_until_they_are_decided(
    new_session: NewSession,
) -> None:
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2})
    session = new_session(provider=fake, tools=[add])  # approval: ask
    turn = session.send("Add 1 and 2")
    _waiting(session)
    asking = session.history()[1]
    before = set(session.branches)
    with pytest.raises(StateError, match=r"call_1 'add': pending.*approve or deny them") as told:
        session.counterfactual(asking.id, "Let me add them.")
    assert "session.stop(branch='main')" in str(told.value)
    # Said the magics' way too (their rewrite knows the keyword form).
    assert "`%cm stop --branch main`" in for_magics(str(told.value))
    assert "`%cm approve --branch main` / `%cm deny --branch main`" in for_magics(str(told.value))
    assert set(session.branches) == before  # nothing written
    assert len(fake.requests) == 1  # the model was told nothing

    fake.reply("It is 3.")
    session.approve()
    assert turn.result(DEADLINE).content == "It is 3."
    fake.reply("Still 3.")
    edit = session.counterfactual(asking.id, "Let me add them.")
    edit.result(DEADLINE)
    assert [m.content for m in session.history(edit.branch)] == [
        "Add 1 and 2",
        "Let me add them.",
        "3",  # the call's own result, not an error
        "Still 3.",
    ]
