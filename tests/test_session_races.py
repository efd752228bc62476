"""Concurrent callers and consumers that stop early."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import roles

from cm_notebook.errors import BusyError
from cm_notebook.fsm import State
from cm_notebook.model import MessageStatus
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def test_two_threads_sending_on_one_branch_write_one_prompt(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider().reply("slow reply", chunks="words", delay=0.05)
    session = new_session(provider=fake)
    barrier = threading.Barrier(8)
    outcomes: list[object] = []
    lock = threading.Lock()

    def send() -> None:
        barrier.wait()
        try:
            result: object = session.send("hello")
        except BusyError as exc:
            result = exc
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    turns = [o for o in outcomes if not isinstance(o, BusyError)]
    assert len(outcomes) == 8
    assert len(turns) == 1
    turns[0].result(10)  # type: ignore[attr-defined]
    assert roles(session.history()) == ["user", "assistant"]


@pytest.mark.anyio
async def test_breaking_out_of_stream_stops_the_reply(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    words = " ".join(f"w{i}" for i in range(200))
    fake = ScriptedProvider().reply(words, chunks="words", delay=0.01)
    session = new_session(provider=fake)
    received = []
    async for delta in session.stream("talk"):
        received.append(delta)
        if len(received) == 3:
            break
    turn = session.turn()
    if turn is not None:  # still winding down: wait for its end
        await turn
    reply = session.history()[-1]
    assert reply.status is MessageStatus.INTERRUPTED
    assert reply.content.startswith("".join(received))
    assert len(reply.content) < len(words)
    assert session.state is State.IDLE
