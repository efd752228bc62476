"""Edges of making and using a session: a loop that has ended, provider=None."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pytest
from test_session_support import DEADLINE, close_all

from cm_notebook import ContextSession
from cm_notebook.errors import BranchExistsError, BusyError, InvalidInputError, StateError
from cm_notebook.fsm import State
from cm_notebook.model import Branch, MessageStatus
from cm_notebook.testing import ScriptedProvider


def test_sending_after_the_session_s_loop_ended_writes_nothing_and_says_what_to_do(
    data_dir: Path,
) -> None:
    async def made_here() -> ContextSession:
        session = ContextSession.create(
            "ended", provider=ScriptedProvider(["one"]), data_dir=data_dir
        )
        await session.send("q1")
        return session

    session = asyncio.run(made_here())  # the loop its turns ran on is closed now
    for _ in range(2):  # and again: no branch is left "busy"
        with pytest.raises(StateError, match=r"ContextSession\.open"):
            session.send("q2")
    close_all([session])
    reopened = ContextSession.open(session.id, data_dir=data_dir)
    try:
        assert [m.content for m in reopened.history()] == ["q1", "one"]
        reopened.send("q3").result(DEADLINE)  # nothing left half-done either
    finally:
        close_all([reopened])


def test_create_with_provider_none_takes_the_default(data_dir: Path) -> None:
    session = ContextSession.create("default", provider=None, data_dir=data_dir)
    try:
        assert session.metadata.provider.spec == "local"
    finally:
        close_all([session])


def test_bad_message_metadata_is_said_in_one_line(data_dir: Path) -> None:
    session = ContextSession.create("meta", provider=ScriptedProvider(["x"]), data_dir=data_dir)
    try:
        with pytest.raises(InvalidInputError) as info:
            session.send("hi", metadata={"stats": 5})
        assert str(info.value).startswith("metadata: stats: ")
        assert "pydantic.dev" not in str(info.value)
        assert session.history() == []  # refused before anything was written
        # JSON has no NaN: stored, it would come back as None.
        with pytest.raises(InvalidInputError, match=r"metadata runs\[1\] is NaN or an inf"):
            session.send("hi", metadata={"runs": [0.5, float("nan")]})
        assert session.history() == []
    finally:
        close_all([session])


def test_a_fork_at_the_head_never_lands_on_a_prompt_still_unanswered(data_dir: Path) -> None:
    # One thread forks main at its head while another sends on main: the fork is either
    # at the answered head before the send, or refused (BusyError), never at the
    # send's prompt, which main then answers without it.
    session = ContextSession.create(
        "race", provider=ScriptedProvider(delay=0.01), data_dir=data_dir
    )
    session.send("seed").result(DEADLINE)
    made: list[Branch] = []
    try:
        for turn in range(30):
            go = threading.Event()
            old = session.branches["main"].head

            def fork(turn: int = turn, go: threading.Event = go, old: str | None = old) -> None:
                # Forks again and again until one is not at the head before the send.
                go.wait()
                for attempt in range(100_000):
                    with contextlib.suppress(BusyError):
                        branch = session.branch(f"f{turn}-{attempt}", switch=False)
                        if branch.head != old:
                            made.append(branch)
                            return
                        session.delete_branch(branch.name)

            forker = threading.Thread(target=fork)
            forker.start()
            go.set()
            time.sleep(0.002 * (turn % 5))
            session.send(f"q{turn}").result(DEADLINE)
            forker.join(DEADLINE)
        assert made
        assert all(session.get(b.head).role == "assistant" for b in made if b.head)
    finally:
        close_all([session])


def test_a_taken_branch_name_is_refused_as_taken_even_while_a_reply_streams(
    data_dir: Path,
) -> None:
    session = ContextSession.create(
        "taken",
        provider=ScriptedProvider().load([{"hang": True, "after_chunks": 1, "text": "so far"}]),
        data_dir=data_dir,
    )
    try:
        turn = session.send("go")
        deadline = time.monotonic() + DEADLINE
        while (last := session.history()[-1]).role != "assistant" or (
            last.status is not MessageStatus.STREAMING
        ):
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(BranchExistsError, match="pick another name"):
            session.branch("main", from_message=session.history()[-1].id)
        turn.cancel()
    finally:
        close_all([session])


def test_a_turn_whose_loop_ends_is_stopped_and_keeps_its_text(data_dir: Path) -> None:
    # asyncio.run() returns while a reply streams: the loop cancels the turn's task on
    # its way out. The turn ends as a stopped one: interrupted, with its text, on disk
    # and in this process (awaiting it raises the cancellation, as any task's).
    words = " ".join(["word"] * 40)
    fake = ScriptedProvider().reply(words, chunks="words", delay=0.02)
    held: dict[str, Any] = {}

    async def start_and_leave() -> None:
        session = ContextSession.create(provider=fake, data_dir=data_dir)
        streamed = asyncio.Event()
        session.subscribe(lambda _: streamed.set(), kinds={"ContentDelta"})
        held["session"], held["turn"] = session, session.send("go")
        await streamed.wait()  # some of the reply has streamed: leave while it goes on

    asyncio.run(start_and_leave())
    session, turn = held["session"], held["turn"]
    try:
        with pytest.raises(asyncio.CancelledError):  # as any task cancelled
            turn.result(DEADLINE)
        reply = session.history()[-1]
        assert reply.status is MessageStatus.INTERRUPTED
        assert reply.content
        assert words.startswith(reply.content)
        assert reply.metadata.error == "the task running the turn was cancelled"
        assert session.state is State.IDLE
    finally:
        session.close()
    reopened = ContextSession.open(session.id, data_dir=data_dir, provider=ScriptedProvider())
    try:
        assert reopened.history()[-1].content == reply.content
    finally:
        reopened.close()


def test_metadata_json_cannot_store_is_refused_naming_its_place_and_type(
    data_dir: Path,
) -> None:
    session = ContextSession.create("json", provider=ScriptedProvider(), data_dir=data_dir)
    files = data_dir / "contexts" / session.id / "messages"
    try:
        with pytest.raises(InvalidInputError) as info:
            session.send("hi", metadata={"a": object()})
        assert str(info.value) == (
            "metadata['a'] is an object, which cannot be stored as JSON: give JSON values "
            "(str, int, float, bool, None, lists and dicts of them)"
        )
        with pytest.raises(InvalidInputError, match=r"metadata\['a'\]\['b'\]\[1\] is a set"):
            session.send("hi", metadata={"a": {"b": [1, {2}]}})
        with pytest.raises(InvalidInputError, match=r"metadata\['a'\] has the key 1.5, a float"):
            session.send("hi", metadata={"a": {1.5: "x"}})
        with pytest.raises(InvalidInputError, match=r"metadata\['a'\] has the key True, a bool"):
            session.send("hi", metadata={"a": {True: "x"}})
        looped: dict[str, Any] = {}
        looped["self"] = looped  # refused, not walked forever
        with pytest.raises(InvalidInputError, match="deeper than 100 levels"):
            session.send("hi", metadata=looped)
        # A fan-out makes no arm's branch for metadata its sends would refuse.
        with pytest.raises(InvalidInputError, match=r"metadata\['a'\] is an object"):
            session.fan_out("hi", [{}, {}], metadata={"a": object()})
        assert list(session.branches) == ["main"]
        assert session.history() == []
        assert sorted(os.listdir(files)) == []

        async def in_async_code() -> None:
            with pytest.raises(InvalidInputError, match=r"metadata\['a'\] is an object"):
                await session.send("hi", metadata={"a": object()})

        asyncio.run(in_async_code())
        assert session.history() == []
        # An int key is written as its digits, as json.dumps would (a token-id map).
        given = {"a": [1, (2, 3)], "b": {"c": None}, "bias": {50256: -100}}
        reply = session.send("hi", metadata=given).result(DEADLINE)
        assert reply.content == "echo: hi"
        assert session.history()[0].metadata.model_extra == {
            "a": [1, [2, 3]],
            "b": {"c": None},
            "bias": {"50256": -100},
        }
        with pytest.raises(InvalidInputError, match=r"parameters\['stop'\]\[0\] is an object"):
            session.send("hi", stop=[object()])
        assert len(session.history()) == 2
    finally:
        close_all([session])
    with pytest.raises(InvalidInputError, match=r"provider_options\['parameters'\]\[0\] is an"):
        ContextSession.create(
            provider="scripted", provider_options={"parameters": [object()]}, data_dir=data_dir
        )
    assert [m.id for m in ContextSession.list(data_dir)] == [session.id]


def test_a_wait_cancelled_says_the_work_goes_on_and_it_does(data_dir: Path) -> None:
    # The kernel's Interrupt cancels the cell's `await turn`: the wait, not the reply.
    fake = ScriptedProvider().reply("one two three four five six", chunks="words", delay=0.05)

    async def main() -> tuple[str, str]:
        session = ContextSession.create(provider=fake, data_dir=data_dir)
        try:
            turn = session.send("go")
            waiting = asyncio.ensure_future(turn)
            await asyncio.sleep(0.12)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError) as cancelled:
                await waiting
            return str(cancelled.value), (await turn).content
        finally:
            await session.aclose()

    said, reply = asyncio.run(main())
    # Through the session: the cell whose `r = await session.send(...)` was interrupted
    # holds no Turn.
    assert said == (
        "stopped waiting; the reply on branch 'main' goes on: session.turn('main') is its "
        "Turn while it runs (await it for the reply), session.stop(branch='main') stops it"
    )
    assert reply == "one two three four five six"


def _in_turn_result(frame: FrameType | None) -> bool:
    # Whether a thread's stack is blocked in a Turn's result() (a wait in threading).
    if frame is None or not frame.f_code.co_filename.endswith("threading.py"):
        return False
    while frame is not None:
        if frame.f_code.co_name == "result" and frame.f_code.co_filename.endswith("turn.py"):
            return True
        frame = frame.f_back
    return False


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception notes need Python 3.11")
@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="SIGINT")
def test_ctrl_c_in_a_scripts_result_says_how_to_reach_the_reply(data_dir: Path) -> None:
    # `reply = session.send(...).result()` stopped by Ctrl-C: the script holds no Turn
    # either, so the note names the session's way to it, with the branch.
    session = ContextSession.create(provider=ScriptedProvider().hang(), data_dir=data_dir)
    main = threading.main_thread()

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            if _in_turn_result(sys._current_frames().get(main.ident or 0)):
                signal.pthread_kill(main.ident or 0, signal.SIGINT)
                return
            time.sleep(0.01)  # poll the main thread's stack, with a deadline

    presser = threading.Thread(target=press_ctrl_c)
    presser.start()
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            session.send("go").result(DEADLINE)
        notes = " ".join(getattr(caught.value, "__notes__", []))
        assert "the reply on branch 'main' goes on: session.turn('main') is its Turn" in notes
        assert "session.stop(branch='main') stops it" in notes
        assert "until the process exits" in notes
        running = session.turn("main")
        assert running is not None  # as the note says
        session.stop(branch="main")
        assert running.result(DEADLINE).status is MessageStatus.INTERRUPTED
    finally:
        presser.join(DEADLINE)
        session.close()
