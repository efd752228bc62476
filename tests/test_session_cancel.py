"""Cancelling a turn: partial text kept as ``interrupted``, the machine back to Idle,
and cancel() harmless twice, after completion, from another thread, or before the
reply has even started."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest
from test_session_support import (
    DEADLINE,
    Recorder,
    entered,
    message_files,
    roles,
    seen,
)

from cm_notebook import tool
from cm_notebook._session_core import SESSION_CLOSED
from cm_notebook.errors import BusyError
from cm_notebook.events import (
    ContentDelta,
    Event,
    MessageAdded,
    MessageCompleted,
    StateChanged,
)
from cm_notebook.fsm import State
from cm_notebook.model import MessageStatus
from cm_notebook.retry import RetryPolicy
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def streamed(messages: int = 1, *, at_least: int = 1) -> Callable[[list[Event]], bool]:
    """A predicate: text deltas of ``messages`` messages were published, each carrying at
    least ``at_least`` characters (a batch of chunks may come as one delta)."""

    def check(events: list[Event]) -> bool:
        lengths: Counter[str] = Counter()
        for event in events:
            if isinstance(event, ContentDelta):
                lengths[event.message_id] += len(event.text)
        return sum(length >= at_least for length in lengths.values()) >= messages

    return check


def test_cancel_mid_stream_keeps_the_partial_text(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider().hang(after_chunks=2, text="partial reply").reply("next")
    session = new_session(provider=fake)
    recorder = Recorder(session)
    turn = session.send("Tell me a story")
    recorder.wait(streamed(at_least=len("partial reply")))
    assert session.state is State.STREAMING
    assert turn.text == "partial reply"

    turn.cancel()
    message = turn.result(DEADLINE)
    assert message.status is MessageStatus.INTERRUPTED
    assert message.content == "partial reply"
    assert session.get(message.id) == message
    assert session.state is State.IDLE
    recorder.wait(entered(State.IDLE))
    assert recorder.states() == [
        State.IDLE,
        State.AWAITING_RESPONSE,
        State.STREAMING,
        State.IDLE,
    ]
    assert seen(MessageCompleted, message_id=message.id, status=MessageStatus.INTERRUPTED)(
        recorder.snapshot()
    )

    # Harmless: again, and after the turn has finished.
    turn.cancel()
    turn.cancel()
    assert turn.result(DEADLINE) == message

    # The branch is free again; the next reply follows the interrupted one.
    follow = session.send("go on").result(DEADLINE)
    assert follow.content == "next"
    assert roles(session.history()) == ["user", "assistant", "user", "assistant"]
    assert len(message_files(data_dir, session)) == 4


def test_cancel_after_completion_changes_nothing(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider(["done"]))
    turn = session.send("Hi")
    message = turn.result(DEADLINE)
    seq = session.last_seq
    turn.cancel()
    turn.cancel()
    assert turn.result(DEADLINE) == message
    assert session.get(message.id).status is MessageStatus.COMPLETE
    assert session.state is State.IDLE
    assert session.events(since=seq) == []


def test_a_send_right_after_a_cancel_says_the_reply_is_being_stopped(
    new_session: Callable[..., ContextSession],
) -> None:
    # The cancel reaches the turn on the session's loop and the turn still stores its
    # text: a send in between is refused, and must not advise the cancel just made.
    fake = ScriptedProvider()
    session = new_session(provider=fake)
    refused: list[str] = []
    for attempt in range(20):
        fake.hang(after_chunks=1, text=f"partial {attempt}")
        turn = session.send(f"question {attempt}")
        deadline = time.monotonic() + DEADLINE
        while not turn.text:  # poll until the reply is under way, with a deadline
            assert time.monotonic() < deadline
            time.sleep(0.005)
        turn.cancel()
        try:
            late = session.send("at once")
        except BusyError as exc:
            refused.append(str(exc))
        else:  # the cancelled turn was already over: this one is let go too
            late.cancel()
            late.result(DEADLINE)
        turn.result(DEADLINE)
        assert not turn.stopping()
        if len(refused) >= 3:
            break
    assert refused  # the window is there on every machine: the turn must write first
    for message in refused:
        assert "is being stopped" in message
        assert "turn.cancel()" not in message


def test_cancel_before_the_reply_started_gives_an_interrupted_reply(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    # cancel() right after send(): the request has not been made yet. The turn still
    # ends with an assistant message (empty, interrupted), not with an error.
    for _ in range(5):
        session = new_session(provider=ScriptedProvider().hang())
        turn = session.send("Hi")
        turn.cancel()
        message = turn.result(DEADLINE)
        assert message.role == "assistant"
        assert message.status is MessageStatus.INTERRUPTED
        assert session.state is State.IDLE
        history = session.history()
        assert history[-1].id == message.id
        assert roles(history) == ["user", "assistant"]


@pytest.mark.anyio
async def test_cancel_mid_stream_in_async_code(data_dir: Path) -> None:
    text = "one two three four five six seven eight"
    fake = ScriptedProvider().reply(text, chunks="words", delay=0.02)
    session = ContextSession.create(provider=fake, data_dir=data_dir)
    recorder = Recorder(session)
    turn = session.send("count")
    await recorder.await_(streamed(at_least=len("one two")))
    turn.cancel()
    message = await turn
    assert message.status is MessageStatus.INTERRUPTED
    assert message.content
    assert text.startswith(message.content)
    assert message.content != text
    assert session.state is State.IDLE
    assert session.history()[-1] == message


@pytest.mark.anyio
async def test_cancel_from_another_thread(data_dir: Path) -> None:
    session = ContextSession.create(
        provider=ScriptedProvider().hang(after_chunks=1, text="Hel"), data_dir=data_dir
    )
    recorder = Recorder(session)
    turn = session.send("Hi")
    await recorder.await_(streamed())
    await anyio.to_thread.run_sync(turn.cancel)
    await anyio.to_thread.run_sync(turn.cancel)
    message = await turn
    assert (message.status, message.content) == (MessageStatus.INTERRUPTED, "Hel")


@pytest.mark.anyio
async def test_cancel_while_waiting_to_retry(data_dir: Path) -> None:
    fake = ScriptedProvider().error(
        "transient", after_chunks=2, text="Hello wor", message="the line dropped"
    )
    fake.reply("Fine.")
    session = ContextSession.create(
        provider=fake, data_dir=data_dir, retry=RetryPolicy(initial_delay=60, jitter=0)
    )
    recorder = Recorder(session)
    turn = session.send("Hi")
    await recorder.await_(entered(State.TRANSIENT_FAILURE))
    # Waiting to retry, the reply holds what the next attempt wrote: nothing yet.
    assert turn.text == ""
    assert turn.message_id is not None
    assert session.get(turn.message_id).content == ""
    turn.cancel()
    message = await turn
    assert message.status is MessageStatus.INTERRUPTED
    # The failed attempt's text is kept once, in failed_attempts, not as the reply.
    assert message.content == ""
    assert message.metadata.error is not None
    assert message.metadata.error.startswith("cancelled by the user while waiting to retry")
    assert "the line dropped" in message.metadata.error
    (attempt,) = message.metadata.failed_attempts
    assert attempt["text"] == "Hello wor"
    assert session.state is State.IDLE
    assert len(fake.requests) == 1  # the retry never happened
    reopened = ContextSession.open(session.id, data_dir=data_dir)
    assert reopened.history()[-1].content == ""
    reopened.close()
    # The model is not shown the cut text as a reply of its own.
    await session.send("Still there?")
    assert [m.content for m in fake.requests[-1].messages] == ["Hi", "Still there?"]


def test_busy_branch_refuses_a_second_send_until_cancelled(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider().hang().reply("after")
    session = new_session(provider=fake)
    recorder = Recorder(session)
    turn = session.send("first")
    recorder.wait(seen(MessageAdded, role="assistant"))
    before = message_files(data_dir, session)
    with pytest.raises(BusyError, match=r"session\.stop\(branch='main'\)"):
        session.send("second")
    with pytest.raises(BusyError):
        session.regenerate()
    with pytest.raises(BusyError):
        session.delete_branch("main")
    assert message_files(data_dir, session) == before
    turn.cancel()
    turn.result(DEADLINE)
    assert session.send("second").result(DEADLINE).content == "after"


def test_close_cancels_every_running_turn(data_dir: Path) -> None:
    fake = ScriptedProvider().hang(after_chunks=1, text="a").hang(after_chunks=1, text="b")
    session = ContextSession.create(provider=fake, data_dir=data_dir)
    recorder = Recorder(session)
    first = session.send("1")
    session.branch("other", from_message=session.history()[0].id, switch=False)
    second = session.send("2", branch="other")
    recorder.wait(streamed(2))
    session.close()
    assert first.result(DEADLINE).status is MessageStatus.INTERRUPTED
    assert second.result(DEADLINE).status is MessageStatus.INTERRUPTED
    assert session.state_of("main") is State.IDLE
    assert session.state_of("other") is State.IDLE
    recorder.wait(lambda events: sum(isinstance(e, StateChanged) for e in events) >= 6)


# -- closing a session mid-turn ---------------------------------------------------------


def test_a_reply_cut_by_closing_the_session_says_why_not_the_user(data_dir: Path) -> None:
    fake = ScriptedProvider().hang(after_chunks=1, text="partial")
    session = ContextSession.create("closing", provider=fake, data_dir=data_dir)
    recorder = Recorder(session)
    session.send("Tell me a story")
    recorder.wait(streamed(at_least=len("partial")))
    session.close(reason="the kernel was restarted")
    with ContextSession.open(session.id, data_dir=data_dir) as reopened:
        reply = reopened.history()[-1]
    assert reply.status is MessageStatus.INTERRUPTED
    assert reply.content == "partial"
    assert reply.metadata.error == "the kernel was restarted"


def test_a_call_awaiting_approval_when_the_session_closes_is_not_blamed_on_the_user(
    data_dir: Path,
) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    fake = ScriptedProvider().tool_call("add", {"a": 1, "b": 2})
    session = ContextSession.create("closing", provider=fake, data_dir=data_dir, tools=[add])
    turn = session.send("What is 1 + 2?")
    assert len(asyncio.run(turn.wait_for_approval())) == 1
    session.close()  # the default reason
    with ContextSession.open(session.id, data_dir=data_dir) as reopened:
        asked, answer = reopened.history()[-2:]
    assert asked.tool_calls[0].reason == SESSION_CLOSED
    assert answer.role == "tool"
    assert SESSION_CLOSED in answer.content
    assert "by the user" not in answer.content


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["this loop", "the background loop"])
async def test_a_send_right_after_a_stream_closed_early_is_taken(
    where: str, data_dir: Path
) -> None:
    # Leaving a stream closed with aclosing stops its reply and ends once the stop is
    # over: the next send on the branch is taken at once, not refused as "being
    # stopped"; the stopped reply is stored as a stop leaves it.
    fake = ScriptedProvider()
    fake.reply("one two three four five six seven eight", chunks="words", delay=0.05)
    fake.reply("the next reply")
    if where == "this loop":
        session = ContextSession.create(provider=fake, data_dir=data_dir)
    else:  # made outside any loop: its turns run on the background loop's thread
        session = await anyio.to_thread.run_sync(
            lambda: ContextSession.create(provider=fake, data_dir=data_dir)
        )
    try:
        async with contextlib.aclosing(session.stream("count")) as deltas:
            async for delta in deltas:
                assert delta == "one "
                break
        turn = session.send("after")  # it used to raise BusyError ("being stopped")
        assert (await turn).content == "the next reply"
        history = session.history()
        assert roles(history) == ["user", "assistant", "user", "assistant"]
        stopped = history[1]
        assert stopped.status is MessageStatus.INTERRUPTED
        assert stopped.metadata.error == "cancelled by the user"
        assert "one two three four five six seven eight".startswith(stopped.content)
        assert stopped.content != "one two three four five six seven eight"
    finally:
        await session.aclose()


@pytest.mark.anyio
async def test_a_send_right_after_a_plain_break_says_how_to_close_the_stream(
    data_dir: Path,
) -> None:
    # Left with a plain break, the stream is closed (and its reply stopped) a moment
    # later, on the loop: a send at once is refused, naming the stream and how to close
    # it at once, not advising the cancel of a turn the caller never had.
    fake = ScriptedProvider()
    fake.reply("one two three four five six seven eight", chunks="words", delay=0.05)
    fake.reply("the next reply")
    session = ContextSession.create(provider=fake, data_dir=data_dir)
    try:
        async for _delta in session.stream("count"):
            break
        with pytest.raises(BusyError) as refused:
            session.send("at once")
        assert "session.stream()" in str(refused.value)
        assert "contextlib.aclosing" in str(refused.value)
        assert "turn.cancel()" not in str(refused.value)
        running = session.turn()
        assert running is not None
        stopped = await running  # the stream closed meanwhile: the reply is stopped
        assert stopped.status is MessageStatus.INTERRUPTED
        assert (await session.send("after")).content == "the next reply"
    finally:
        await session.aclose()
