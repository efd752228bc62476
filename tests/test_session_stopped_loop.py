"""A session made inside ``loop.run_until_complete()``, used from plain code after it
returned: its loop is stopped, not closed. A turn sent then waits for that loop to run
again; waiting for it from plain code says so instead of waiting for ever, and closing
the session cancels it, so it writes nothing if the loop runs again."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_session_support import DEADLINE

from cm_notebook.errors import StateError
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


@pytest.fixture
def stopped_loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    try:
        yield loop
    finally:
        loop.close()


def made_in(loop: asyncio.AbstractEventLoop, data_dir: Path) -> ContextSession:
    async def make() -> ContextSession:
        return ContextSession.create(provider=ScriptedProvider(), data_dir=data_dir)

    return loop.run_until_complete(make())


def test_waiting_for_a_turn_on_a_stopped_loop_says_so(
    stopped_loop: asyncio.AbstractEventLoop, data_dir: Path
) -> None:
    session = made_in(stopped_loop, data_dir)
    try:
        turn = session.send("hello")
        with pytest.raises(StateError, match="is not running"):
            turn.result(DEADLINE)  # it used to wait (for ever without a timeout)
        # Run on its loop, as the error says, it finishes.
        assert stopped_loop.run_until_complete(turn).content == "echo: hello"
    finally:
        session.close()


def test_closing_cancels_a_turn_queued_on_a_stopped_loop(
    stopped_loop: asyncio.AbstractEventLoop, data_dir: Path
) -> None:
    session = made_in(stopped_loop, data_dir)
    turn = session.send("hello")
    session.close()
    assert turn.done()
    with pytest.raises(concurrent.futures.CancelledError):  # as any turn cancelled in a script
        turn.result(DEADLINE)
    for _ in range(3):  # the loop runs again: what was queued on it gets its turn
        stopped_loop.run_until_complete(asyncio.sleep(0))
    with ContextSession.open(session.id, data_dir=data_dir) as reopened:
        # Nothing written after the close; the branch is free for the next send.
        assert [(m.role, m.content) for m in reopened.history()] == [("user", "hello")]
        assert reopened.send("next").result(DEADLINE).content == "echo: next"


def test_a_loop_stopped_while_result_waits_is_said(data_dir: Path) -> None:
    # The loop runs in a thread when the turn is sent, and is stopped while result()
    # waits: the wait notices and says so, rather than waiting for ever.
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()

    async def make() -> ContextSession:
        return ContextSession.create(provider=ScriptedProvider().hang(), data_dir=data_dir)

    session = asyncio.run_coroutine_threadsafe(make(), loop).result(DEADLINE)
    turn = session.send("hello")
    stopper = threading.Timer(0.3, loop.call_soon_threadsafe, (loop.stop,))
    stopper.start()
    started = time.monotonic()
    try:
        with pytest.raises(StateError, match="is not running"):
            turn.result(DEADLINE)  # it used to wait until the timeout (or for ever)
        assert time.monotonic() - started < DEADLINE / 2
    finally:
        stopper.join()
        runner.join(DEADLINE)
        runner = threading.Thread(target=loop.run_forever, daemon=True)
        runner.start()  # its turn is stopped and the session released on it
        session.close()
        loop.call_soon_threadsafe(loop.stop)
        runner.join(DEADLINE)
        loop.close()


def test_a_loop_stopped_while_a_turn_is_awaited_from_another_is_said(data_dir: Path) -> None:
    # As above, the turn awaited from another loop (asyncio.run() in plain code).
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()

    async def make() -> ContextSession:
        return ContextSession.create(provider=ScriptedProvider().hang(), data_dir=data_dir)

    session = asyncio.run_coroutine_threadsafe(make(), loop).result(DEADLINE)
    turn = session.send("hello")
    stopper = threading.Timer(0.3, loop.call_soon_threadsafe, (loop.stop,))
    stopper.start()

    async def wait() -> None:
        with pytest.raises(StateError, match="is not running"):
            await asyncio.wait_for(turn, DEADLINE)  # it used to wait until the timeout

    try:
        asyncio.run(wait())
    finally:
        stopper.join()
        runner.join(DEADLINE)
        runner = threading.Thread(target=loop.run_forever, daemon=True)
        runner.start()
        session.close()
        loop.call_soon_threadsafe(loop.stop)
        runner.join(DEADLINE)
        loop.close()
