"""Closing a session stops what runs on it: sweeps and replays start no turn after it,
and a closed session refuses new work with a clear error."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from test_session_support import DEADLINE, Recorder, entered

from cm_notebook.errors import StateError
from cm_notebook.fsm import State
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def test_a_closed_session_refuses_to_send(new_session: Callable[..., ContextSession]) -> None:
    session = new_session(provider=ScriptedProvider(["never"]))
    session.close()
    with pytest.raises(StateError, match=r"is closed; open the context again with ContextSession"):
        session.send("Hi")


def test_close_stops_a_running_replay(new_session: Callable[..., ContextSession]) -> None:
    session = new_session(provider=ScriptedProvider(["A1", "A2", "A3"]))
    for text in ("one", "two", "three"):
        session.send(text).result(DEADLINE)
    other = ScriptedProvider().hang(after_chunks=1, text="partial").reply("B2").reply("B3")
    recorder = Recorder(session)
    replay = session.replay("main", provider=other, name="again")
    recorder.wait(entered(State.STREAMING, "again"))
    session.close()
    replay.result(DEADLINE)  # stopped, not failed
    assert len(other.requests) == 1  # the later turns were never sent
    assert [m.role for m in session.history("again")] == ["user", "assistant"]


def test_close_stops_a_running_sweep(new_session: Callable[..., ContextSession]) -> None:
    fake = ScriptedProvider().hang(after_chunks=1, text="partial").reply("second").reply("third")
    session = new_session(provider=fake)
    recorder = Recorder(session)
    sweep = session.sweep(
        ["first?", "second?", "third?"], [{}], name="cl", concurrency=1, progress=False
    )
    recorder.wait(entered(State.STREAMING))
    session.close()
    sweep.run(DEADLINE)
    assert len(fake.requests) == 1  # no cell started after close()
    assert sweep.counts()["pending"] == 2  # left for a later run to resume
