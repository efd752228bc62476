"""A process killed mid-turn, and this one sending on its branch at once.

The killed process never says that its turn ended. This session takes the branch over
for a turn of its own before its log follower has noticed the death (a silent owner is
taken for a dead one only after a grace of a tenth of a second): the dead turn's end is
then announced by this session, before the new turn's first signal, and once. Views
that build their picture from the signals (a widget, an SSE client of the server, which
relays this session's signals from the log) see the dead reply end ``interrupted`` and
one turn after the other.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_session_support import Recorder, entered, seen

from cm_notebook._follower import LogFollower
from cm_notebook._remote_turns import RemoteTurn
from cm_notebook.errors import BusyError
from cm_notebook.events import (
    ContentDelta,
    ContextUpdated,
    Event,
    MessageAdded,
    MessageCompleted,
    StateChanged,
)
from cm_notebook.fsm import State
from cm_notebook.model import MessageStatus
from cm_notebook.session import ContextSession
from cm_notebook.signal_log import LOG_NAME, LogReader, SignalLog
from cm_notebook.testing import ScriptedProvider

DEADLINE = 30.0

#: What the killed writer streams (in three chunks) before it waits to be killed.
HUNG_TEXT = "Once upon a time there was"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")


def _writer(data_dir: Path, context_id: str, script: str) -> subprocess.Popen[bytes]:
    # Another process (a second kernel, say) sends on ``main`` with ``script``'s model.
    code = textwrap.dedent(
        f"""
        from cm_notebook.session import ContextSession
        from cm_notebook.testing import ScriptedProvider
        session = ContextSession.open({context_id!r}, data_dir={str(data_dir)!r},
                                      provider={script})
        print(session.send("Tell me a story").result(60).status.value, flush=True)
        session.close()
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


@pytest.fixture
def session(tmp_path: Path) -> Iterator[ContextSession]:
    made = ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider())
    yield made
    made.close()


def _streamed(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, ContentDelta))


def _settled(session: ContextSession, recorder: Recorder) -> list[Event]:
    # Everything this session will say of what happened so far, said. Its follower
    # reads the log once more (a step begun now: had it kept the dead turn for live,
    # that step would find its claim free and announce it over), and what that
    # published comes before the signal of a rename made after it.
    assert session._follower is not None
    assert session._follower.caught_up(DEADLINE)
    session.rename("settled")
    recorder.wait(seen(ContextUpdated))
    return recorder.snapshot()


def _others_replies(events: list[Event], own: str) -> list[str]:
    # The replies the other process began (all but this session's ``own``).
    added = [e for e in events if isinstance(e, MessageAdded) and e.role == "assistant"]
    return [e.message_id for e in added if e.message_id != own]


def _states_follow_each_other(events: list[Event]) -> list[StateChanged]:
    # The changes on ``main``, each from the state the one before it entered.
    changes = [e for e in events if isinstance(e, StateChanged) and e.branch == "main"]
    entered_last = State.IDLE
    for change in changes:
        assert change.old is entered_last, f"{change} after one that entered {entered_last}"
        entered_last = change.new
    return changes


def test_a_send_right_after_the_writer_was_killed_announces_its_turn_over_first(
    tmp_path: Path, session: ContextSession
) -> None:
    recorder = Recorder(session)
    child = _writer(
        tmp_path, session.id, f"ScriptedProvider().hang(after_chunks=3, text={HUNG_TEXT!r})"
    )
    try:
        recorder.wait(lambda events: _streamed(events) == HUNG_TEXT, DEADLINE)
        recorder.wait(entered(State.STREAMING, "main"))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(DEADLINE)
        assert child.stdout is not None
        child.stdout.close()
    # At once: before this session's follower can have noticed the death.
    turn = session.send("Go on", provider=ScriptedProvider().reply("The end."))
    reply = turn.result(DEADLINE)
    events = _settled(session, recorder)

    [dead] = _others_replies(events, reply.id)
    assert session.get(dead).status is MessageStatus.INTERRUPTED
    assert session.get(dead).content == HUNG_TEXT
    ended = [e for e in events if isinstance(e, MessageCompleted) and e.message_id == dead]
    assert [e.status for e in ended] == [MessageStatus.INTERRUPTED]  # said, and once

    changes = _states_follow_each_other(events)
    # The dead turn ends, then the new one runs, and nothing is said after it ends.
    dead_turn = changes[0].turn_id
    assert dead_turn is not None
    assert dead_turn != turn.id
    assert [(c.turn_id, c.new) for c in changes if c.turn_id != turn.id] == [
        (dead_turn, State.AWAITING_RESPONSE),
        (dead_turn, State.STREAMING),
        (dead_turn, State.IDLE),
    ]
    assert (changes[-1].turn_id, changes[-1].new) == (turn.id, State.IDLE)
    # Before the new turn's first signal: its prompt.
    prompt = events.index(
        next(e for e in events if getattr(e, "message_id", None) == reply.parent_id)
    )
    assert events.index(ended[0]) < events.index(changes[2]) < prompt


def test_a_send_as_soon_as_a_live_turn_let_go_of_the_branch_announces_nothing_of_it(
    tmp_path: Path, session: ContextSession
) -> None:
    # A turn that ends lets go of its claim a moment before it writes its Idle: a send
    # made in that moment may find the other process's turn still listed, and must not
    # take it for a dead one (its end would be said twice). Sent again and again until
    # the branch is free, whichever moment that send gets it in.
    recorder = Recorder(session)
    words = " ".join(f"word{n}" for n in range(20))
    child = _writer(
        tmp_path, session.id, f'ScriptedProvider().reply({words!r}, chunks="words", delay=0.01)'
    )
    try:
        recorder.wait(entered(State.STREAMING, "main"))
        deadline = time.monotonic() + DEADLINE
        while True:  # until the other turn lets go of the branch
            try:
                turn = session.send("Go on", provider=ScriptedProvider().reply("The end."))
            except BusyError:
                assert time.monotonic() < deadline, "the other turn never let go"
                continue
            break
        turn.result(DEADLINE)
        out, _ = child.communicate(timeout=DEADLINE)
        assert out.decode().strip() == "complete"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(DEADLINE)
    events = _settled(session, recorder)

    [other] = _others_replies(events, turn.result(DEADLINE).id)
    ended = [e for e in events if isinstance(e, MessageCompleted) and e.message_id == other]
    assert [e.status for e in ended] == [MessageStatus.COMPLETE]
    changes = _states_follow_each_other(events)
    assert [c.new for c in changes] == [
        State.AWAITING_RESPONSE,
        State.STREAMING,
        State.IDLE,
        State.AWAITING_RESPONSE,
        State.STREAMING,
        State.IDLE,
    ]
    assert changes[-1].turn_id == turn.id


def _record(log: SignalLog, event: Event) -> None:
    log.record(lambda seq: event.model_copy(update={"seq": seq, "context_id": "c1"}))


def test_the_follower_hands_a_turn_over_once_and_only_a_dead_one(tmp_path: Path) -> None:
    # Two writers of one log, as two processes: "other" runs a turn on "done" that
    # ends, and one on "main" whose process dies; this process then takes each
    # branch's claim. Neither is waited for before: taking over reads the log first.
    (tmp_path / "c1").mkdir()
    path = tmp_path / "c1" / LOG_NAME
    here, other = SignalLog(path), SignalLog(path)
    held = [True]  # whether main's claim is held (here, once taken over)
    gone: list[str] = []
    relayed: list[Event] = []
    follower = LogFollower(
        LogReader(path),
        here.writer,
        relay=relayed.append,
        claim_held=lambda branch: held[0],
        on_dead=lambda branch, turn: gone.append(branch),
    )
    try:
        for branch in ("done", "main"):
            said = [
                StateChanged(branch=branch, old=State.IDLE, new=State.STREAMING, turn_id=branch),
                MessageAdded(branch=branch, message_id=f"{branch}-1", role="assistant"),
                MessageCompleted(
                    branch=branch, message_id=f"{branch}-1", status=MessageStatus.COMPLETE
                ),
            ]
            for event in said:
                _record(other, event)
        _record(other, StateChanged(branch="done", old=State.STREAMING, new=State.IDLE))
        # On main, the turn's next reply (a tool round's answer, say), of which the log
        # has kept the text only: the process dies streaming it.
        _record(other, ContentDelta(branch="main", message_id="main-2", text="Once", offset=0))

        assert follower.take_over("done") is None  # it said it ended
        turn = follower.take_over("main")
        assert turn == RemoteTurn(State.STREAMING, "main", reply="main-2")
        # Everything it said is relayed before the caller announces its end.
        assert len(relayed) == 8
        assert follower.take_over("main") is None  # handed over once
        held[0] = False  # this process lets go: the turn is not found dead later
        assert follower.caught_up(DEADLINE)
        assert follower.caught_up(DEADLINE)
        assert gone == []
    finally:
        follower.close()
        here.close()
        other.close()
