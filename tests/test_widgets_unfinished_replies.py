"""Replies that are no answer (failed, interrupted, only tool calls) in the views: the
transcript offers no rating for them, as the compare view does not, and the status bar
shows no tokens or speed for a reply that did not complete (those are an attempt's)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest

pytest.importorskip("anywidget")

from test_session_support import until

from cm_notebook import ContextSession, tool
from cm_notebook.testing import ScriptedProvider
from cm_notebook.widgets import ChatView, StatusBar

pytestmark = pytest.mark.anyio

NewSession = Callable[..., ContextSession]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


async def _settled(turn: Any) -> None:
    # A cancelled turn ends with its interrupted reply (or the cancellation).
    with contextlib.suppress(asyncio.CancelledError):
        await turn


def _replies(chat: ChatView) -> list[dict[str, Any]]:
    return [f.data for f in chat.transcript.frozen if f.data["role"] == "assistant"]


async def test_only_complete_replies_with_text_offer_a_rating(new_session: NewSession) -> None:
    fake = ScriptedProvider().tool_call("add", {"a": 2, "b": 3}).reply("The sum is 5.")
    fake.error("permanent", after_chunks=3, message="the model went away")
    fake.reply(" ".join(f"w{i}" for i in range(400)), chunks="words", delay=0.01)
    session = new_session(provider=fake, tools=[add], approval="auto")
    chat = ChatView(session)
    await session.send("add 2 and 3")
    with pytest.raises(Exception, match="went away"):
        await session.send("and then?")
    turn = session.send("a long one")
    await until(lambda: session.turn("main") is not None and session.turn("main").text)
    turn.cancel()
    await _settled(turn)
    replies = await until(
        lambda: (r := _replies(chat)) and len(r) == 4 and r[-1]["status"] == "interrupted" and r
    )
    tool_only, answer, failed, interrupted = replies
    assert (tool_only["status"], tool_only["html"]) == ("complete", "")
    assert answer["rating"] == {"thumbs": None, "score": None}
    assert failed["status"] == "error"
    for reply in (tool_only, failed, interrupted):
        assert "rating" not in reply, reply["status"]
    chat.close()


async def test_the_status_bar_shows_no_speed_for_a_failed_reply(new_session: NewSession) -> None:
    fake = ScriptedProvider().reply("fine, thanks", chunks="words")
    fake.error("permanent", after_chunks=4, message="the model went away")
    session = new_session(provider=fake)
    status = StatusBar(session)
    await session.send("hi")
    row = await until(
        lambda: (
            status.rows and "output_tokens" in status.rows[0].get("stats", {}) and status.rows[0]
        )
    )
    assert row["stats"]["output_tokens"] > 0
    with pytest.raises(Exception, match="went away"):
        await session.send("and then?")
    row = await until(
        lambda: status.rows and status.rows[0]["state"] == "PermanentFailure" and status.rows[0]
    )
    assert row["stats"] == {"model": "scripted"}
    status.close()
