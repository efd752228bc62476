"""What the session hands out is a copy: changing it changes nothing stored, nothing
a tool runs with, and nothing the model is sent next."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from test_session_support import DEADLINE, close_all

from cm_notebook import ContextSession, tool
from cm_notebook.session import ContextSession as Session
from cm_notebook.testing import ScriptedProvider

NewSession = Callable[..., Session]

ran: list[tuple[str, int]] = []


@tool
def weather(city: str, days: int = 1) -> str:
    """The forecast for ``city``."""
    ran.append((city, days))
    return f"{city}: sunny for {days} day(s)"


def _sent(fake: ScriptedProvider) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in fake.requests[-1].messages]


def test_a_branch_returned_by_branch_is_a_copy(data_dir: Path, new_session: NewSession) -> None:
    fake = ScriptedProvider(["one", "two"])
    session = new_session(provider=fake)
    session.send("hi").result(DEADLINE)
    made = session.branch("b", system="ORIG")
    made.system_prompt = "CHANGED"
    made.params["temperature"] = 1.7
    session.send("again", branch="b").result(DEADLINE)
    assert ("system", "ORIG") in _sent(fake)
    assert "temperature" not in fake.requests[-1].params
    cid = session.id
    close_all([session])
    reopened = ContextSession.open(cid, data_dir=data_dir)
    try:
        assert reopened.branches["b"].system_prompt == "ORIG"
    finally:
        close_all([reopened])


def test_calls_waiting_for_approval_are_copies(new_session: NewSession) -> None:
    ran.clear()
    fake = ScriptedProvider().tool_call("weather", {"city": "Paris"}).reply("done")
    session = new_session(provider=fake, tools=[weather])
    turn = session.send("weather?")
    calls = asyncio.run(turn.wait_for_approval())
    calls[0].arguments["city"] = "CHANGED"
    session.pending_tool_calls[0].arguments["city"] = "CHANGED TOO"
    decided = session.approve(calls[0].id)
    turn.result(DEADLINE)
    assert ran == [("Paris", 1)]  # only approve(arguments=...) edits what runs
    [record] = session.approval_log()
    assert record.arguments == {"city": "Paris", "days": 1}
    assert record.edited_arguments is None
    decided[0].arguments["city"] = "CHANGED AFTER"
    session.send("and then?").result(DEADLINE)
    [asked] = [m for m in fake.requests[-1].messages if m.tool_calls]
    assert asked.tool_calls[0].arguments["city"] == "Paris"


def test_a_turn_s_result_is_a_copy(new_session: NewSession) -> None:
    fake = ScriptedProvider(["Paris.", "two"])
    session = new_session(provider=fake)
    answer = session.send("capital?").result(DEADLINE)
    answer.content = "CHANGED"
    session.send("and?").result(DEADLINE)
    assert ("assistant", "Paris.") in _sent(fake)
    assert session.history()[1].content == "Paris."


def test_a_finished_turn_s_result_outlives_its_loop(data_dir: Path) -> None:
    async def send() -> tuple[Session, object]:
        session = ContextSession.create(
            "loop", provider=ScriptedProvider(["done"]), data_dir=data_dir
        )
        turn = session.send("q")
        await turn
        return session, turn

    session, turn = asyncio.run(send())  # its loop is closed now
    try:
        assert turn.result(1).content == "done"  # type: ignore[attr-defined]
    finally:
        close_all([session])
