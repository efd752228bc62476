"""``turn.wait_for_approval()``: the calls one turn asks about, or why it asked none."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_session_support import DEADLINE
from test_session_tools import Calculator

from cm_notebook.errors import PermanentProviderError
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.anyio


async def test_it_returns_the_calls_the_turn_asks_about(
    new_session: Callable[..., ContextSession],
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("3.")
    session = new_session(provider=fake, tools=calc.tools)
    turn = session.send("1 + 2?")
    calls = await turn.wait_for_approval(timeout=DEADLINE)
    assert [(c.id, c.name, c.arguments) for c in calls] == [("call_1", "add", {"a": 1, "b": 2})]
    session.approve(calls[0].id)
    reply = await turn
    assert reply.content == "3."
    assert calc.calls == [("add", 1, 2)]
    # Over: nothing more to wait for.
    assert await turn.wait_for_approval(timeout=DEADLINE) == []


async def test_a_turn_that_failed_before_asking_raises_its_error(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(strict=True).error("permanent", message="no API key: set one")
    session = new_session(provider=fake, tools=Calculator().tools)
    turn = session.send("1 + 2?")
    with pytest.raises(PermanentProviderError, match="no API key"):
        await turn.wait_for_approval(timeout=DEADLINE)
    # The session-wide wait has no turn to blame: it still says "nothing waiting".
    assert await session.wait_for_approval(timeout=DEADLINE) == []


async def test_a_turn_that_answered_without_a_tool_returns_no_calls(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider(strict=True).reply("Hi."))
    turn = session.send("Hello")
    assert await turn.wait_for_approval(timeout=DEADLINE) == []
    assert (await turn).content == "Hi."


async def test_each_turn_sees_only_the_calls_of_its_own_branch(
    new_session: Callable[..., ContextSession],
) -> None:
    calc = Calculator()
    fake = (
        ScriptedProvider(strict=True)
        .reply("Hi.")
        .tool_call("add", {"a": 1, "b": 2}, id="call_a")
        .tool_call("divide", {"a": 6, "b": 3}, id="call_b")
        .reply("done")
        .reply("done")
    )
    session = new_session(provider=fake, tools=calc.tools)
    await session.send("Hello")
    session.branch("other", switch=False)
    first = session.send("add", branch="main")
    [on_main] = await first.wait_for_approval(timeout=DEADLINE)
    second = session.send("divide", branch="other")
    [on_other] = await second.wait_for_approval(timeout=DEADLINE)
    assert (on_main.id, on_other.id) == ("call_a", "call_b")
    assert [c.id for c in await first.wait_for_approval(timeout=DEADLINE)] == ["call_a"]
    session.approve("call_b")
    await second
    session.deny("call_a")
    await first


async def test_it_gives_up_after_the_timeout(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider(strict=True).hang())
    turn = session.send("Hello")
    with pytest.raises(TimeoutError, match=r"asked for no decision within 0\.2 s"):
        await turn.wait_for_approval(timeout=0.2)
    turn.cancel()
    await turn
