"""Two real processes over one context: the second sees the first's reply live, with
the same sequence numbers, and recovers the branch when the first is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tool_writer import start_tool_writer

from cm_notebook.errors import ToolCallAlreadyResolvedError, ToolCallNotFoundError
from cm_notebook.events import ContentDelta, Event, MessageCompleted, ToolApprovalRequested
from cm_notebook.fsm import State
from cm_notebook.model import MessageStatus
from cm_notebook.session import ContextSession
from cm_notebook.signal_log import LogReader
from cm_notebook.testing import ScriptedProvider

DEADLINE = 30.0


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.01)  # a poll interval, not a wait for an outcome


class Recorder:
    """Collects the signals a session delivers, with its state at each one."""

    def __init__(self, session: ContextSession) -> None:
        self.session = session
        self.events: list[Event] = []
        self.states: list[State] = []
        session.subscribe(self._on)

    def _on(self, event: Event) -> None:
        self.events.append(event)
        if isinstance(event, ContentDelta):
            self.states.append(self.session.state_of("main"))

    def completed(self) -> list[MessageCompleted]:
        return [e for e in list(self.events) if isinstance(e, MessageCompleted)]


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[tuple[ContextSession, Recorder]]:
    session = ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider())
    yield session, Recorder(session)
    session.close()


#: What a hanging writer streams (in three chunks) before it waits to be stopped.
HUNG_TEXT = "Once upon a time there was"


def _streamed(events: list[Event] | list[ContentDelta]) -> str:
    # The text the deltas among ``events`` carry (chunks may come merged in one delta).
    return "".join(e.text for e in events if isinstance(e, ContentDelta))


def _writer(data_dir: Path, context_id: str, script: str) -> subprocess.Popen[bytes]:
    code = textwrap.dedent(
        f"""
        from cm_notebook.session import ContextSession
        from cm_notebook.testing import ScriptedProvider
        provider = {script}
        session = ContextSession.open({context_id!r}, data_dir={str(data_dir)!r},
                                      provider=provider)
        turn = session.send("Tell me a story")
        print(turn.result(60).status.value, flush=True)
        session.close()
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)


def _logged(data_dir: Path, context_id: str) -> list[dict[str, object]]:
    path = data_dir / "contexts" / context_id / "signals" / "signals.log"
    return [json.loads(line)["e"] for line in path.read_bytes().splitlines() if line.strip()]


def test_a_second_process_sees_the_reply_live_with_the_same_numbers(
    tmp_path: Path, shared: tuple[ContextSession, Recorder]
) -> None:
    session, seen = shared
    story = " ".join(f"word{n}" for n in range(30))
    child = _writer(
        tmp_path, session.id, f'ScriptedProvider().reply({story!r}, chunks="words", delay=0.01)'
    )
    out, _ = child.communicate(timeout=DEADLINE)
    assert out.decode().strip() == "complete"
    _wait_for(lambda: bool(seen.completed()), "the other process's MessageCompleted")

    deltas = [e for e in seen.events if isinstance(e, ContentDelta)]
    assert "".join(d.text for d in deltas) == story
    # While the other process streamed, this one reported its state.
    assert State.STREAMING in seen.states
    # The numbers are the log's, the same in both processes.
    logged = {int(str(e["seq"])): e["type"] for e in _logged(tmp_path, session.id)}
    assert all(logged[e.seq] == e.type for e in seen.events)
    assert [e.seq for e in seen.events] == sorted(e.seq for e in seen.events)
    assert session.last_seq == max(logged)
    _wait_for(lambda: session.state is State.IDLE, "the branch to be idle again")


def test_turns_that_end_in_another_process_are_not_taken_for_dead_ones(
    tmp_path: Path, shared: tuple[ContextSession, Recorder]
) -> None:
    # A turn lets go of its claim a moment before it writes its Idle. An observer that
    # looked in that moment announced the turn's end itself: a second Idle, numbered
    # before the real one was relayed (delivered out of order).
    session, seen = shared
    turns = 40
    code = textwrap.dedent(
        f"""
        from cm_notebook.session import ContextSession
        from cm_notebook.testing import ScriptedProvider
        session = ContextSession.open({session.id!r}, data_dir={str(tmp_path)!r},
                                      provider=ScriptedProvider())
        for n in range({turns}):
            session.send(f"turn {{n}}").result(60)
        session.close()
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=DEADLINE)
    idle = lambda: [e for e in list(seen.events) if getattr(e, "new", None) is State.IDLE]  # noqa: E731
    _wait_for(lambda: len(idle()) >= turns, "every turn's Idle")
    time.sleep(0.3)  # an observer's own (wrong) announcements would come by now
    assert len(idle()) == turns
    assert [e.seq for e in seen.events] == sorted(e.seq for e in seen.events)


def test_a_killed_writer_leaves_the_reply_interrupted_and_the_branch_usable(
    tmp_path: Path, shared: tuple[ContextSession, Recorder]
) -> None:
    session, seen = shared
    child = _writer(
        tmp_path,
        session.id,
        f"ScriptedProvider().hang(after_chunks=3, text={HUNG_TEXT!r})",
    )
    try:
        _wait_for(
            lambda: _streamed(list(seen.events)) == HUNG_TEXT,
            "the other process's deltas",
        )
        assert session.state is State.STREAMING
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(DEADLINE)
        assert child.stdout is not None
        child.stdout.close()

    _wait_for(lambda: bool(seen.completed()), "the reply to be marked interrupted")
    [done] = seen.completed()
    assert done.status is MessageStatus.INTERRUPTED
    assert session.get(done.message_id).status is MessageStatus.INTERRUPTED
    _wait_for(lambda: session.state is State.IDLE, "the branch to be free again")

    reply = session.send("Go on", provider=ScriptedProvider().reply("The end.")).result(DEADLINE)
    assert reply.content == "The end."


def _tool_writer(data_dir: Path, context_id: str) -> subprocess.Popen[bytes]:
    return start_tool_writer(data_dir, context_id)


def test_a_tool_call_waiting_in_another_process_is_approved_from_here(
    tmp_path: Path, shared: tuple[ContextSession, Recorder]
) -> None:
    session, seen = shared
    child = _tool_writer(tmp_path, session.id)
    try:
        _wait_for(
            lambda: any(isinstance(e, ToolApprovalRequested) for e in list(seen.events)),
            "the other process to ask for approval",
        )
        [asked] = [e for e in seen.events if isinstance(e, ToolApprovalRequested)]
        assert session.state is State.AWAITING_TOOL_APPROVAL
        [call] = session.approve(asked.tool_call_ids[0])
        assert call.name == "add"
        with pytest.raises(ToolCallAlreadyResolvedError):
            session.deny(call.id)
        out, _ = child.communicate(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(DEADLINE)
    assert out.decode().strip() == "It is 3."
    _wait_for(lambda: session.state is State.IDLE, "the branch to be idle again")
    with pytest.raises(ToolCallNotFoundError):
        session.approve("no-such-call")


def test_a_call_asked_before_this_process_opened_the_context_can_be_approved(
    tmp_path: Path,
) -> None:
    created = ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider())
    context_id, log_path = created.id, created.signal_log_path
    created.close()
    assert log_path is not None
    child = _tool_writer(tmp_path, context_id)
    try:
        reader = LogReader(log_path, since=0)
        asked: list[ToolApprovalRequested] = []

        def requested() -> bool:
            asked.extend(e for _, e in reader.poll() if isinstance(e, ToolApprovalRequested))
            return bool(asked)

        _wait_for(requested, "the other process to ask for approval")
        reader.close()
        with ContextSession.open(context_id, data_dir=tmp_path) as late:
            [call] = late.approve(asked[0].tool_call_ids[0])
            assert call.name == "add"
        out, _ = child.communicate(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(DEADLINE)
    assert out.decode().strip() == "It is 3."


def _hanging_writer(data_dir: Path, context_id: str) -> subprocess.Popen[bytes]:
    return _writer(
        data_dir,
        context_id,
        f"ScriptedProvider().hang(after_chunks=3, text={HUNG_TEXT!r})",
    )


def _finish(child: subprocess.Popen[bytes]) -> str:
    try:
        out, _ = child.communicate(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(DEADLINE)
        if child.stdout is not None:
            child.stdout.close()
    return out.decode().strip()


def test_a_reply_streaming_in_another_process_is_stopped_from_here(
    tmp_path: Path, shared: tuple[ContextSession, Recorder]
) -> None:
    session, seen = shared
    assert session.stop() is None  # nothing is being generated anywhere
    child = _hanging_writer(tmp_path, session.id)
    try:
        _wait_for(
            lambda: _streamed(list(seen.events)) == HUNG_TEXT,
            "the other process's deltas",
        )
        turn_id = session.stop()
        assert turn_id is not None
        assert session.stop() == turn_id  # asking again is harmless
    finally:
        # The other process stops its turn as a local stop would, and says so.
        assert _finish(child) == "interrupted"

    _wait_for(lambda: bool(seen.completed()), "the other process's MessageCompleted")
    [done] = seen.completed()
    assert done.status is MessageStatus.INTERRUPTED
    stopped = session.get(done.message_id)
    assert stopped.status is MessageStatus.INTERRUPTED
    # The text so far is kept.
    assert stopped.content == "".join(e.text for e in seen.events if isinstance(e, ContentDelta))
    assert stopped.content == HUNG_TEXT
    _wait_for(lambda: session.state is State.IDLE, "the branch to be idle again")
    assert session.stop() is None
    reply = session.send("Go on", provider=ScriptedProvider().reply("The end.")).result(DEADLINE)
    assert reply.content == "The end."


def test_a_reply_begun_before_this_process_opened_the_context_can_be_stopped(
    tmp_path: Path,
) -> None:
    created = ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider())
    context_id, log_path = created.id, created.signal_log_path
    created.close()
    assert log_path is not None
    child = _hanging_writer(tmp_path, context_id)
    try:
        reader = LogReader(log_path, since=0)
        deltas: list[ContentDelta] = []

        def streaming() -> bool:
            deltas.extend(e for _, e in reader.poll() if isinstance(e, ContentDelta))
            return _streamed(deltas) == HUNG_TEXT

        _wait_for(streaming, "the other process's deltas")
        reader.close()
        with ContextSession.open(context_id, data_dir=tmp_path) as late:
            assert late.stop("main") is not None
    finally:
        assert _finish(child) == "interrupted"


def test_a_writer_killed_while_nobody_followed_is_announced_over_by_the_next_opener(
    tmp_path: Path,
) -> None:
    # No process followed the log when the writer died (a server killed and started
    # again): its last signal says Streaming. The next session to open the context,
    # doing nothing but read its state, announces the reply's end and the branch free,
    # so clients replaying the log do not show it streaming for ever.
    made = ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider())
    context_id = made.id
    made.close()
    child = _writer(
        tmp_path, context_id, f"ScriptedProvider().hang(after_chunks=3, text={HUNG_TEXT!r})"
    )
    try:
        log = tmp_path / "contexts" / context_id / "signals" / "signals.log"
        _wait_for(
            lambda: (
                log.exists()
                and any(e.get("type") == "ContentDelta" for e in _logged(tmp_path, context_id))
            ),
            "the writer's deltas",
        )
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(DEADLINE)
        assert child.stdout is not None
        child.stdout.close()

    records = [json.loads(line) for line in log.read_bytes().splitlines() if line.strip()]
    writer = records[-1]["w"]  # the killed process's
    states = [r["e"]["new"] for r in records if r["e"]["type"] == "StateChanged"]
    assert states[-1] != "Idle"  # it died mid-turn, and said nothing since

    reopened = ContextSession.open(context_id, data_dir=tmp_path)
    try:
        assert reopened.title is not None  # reads the metadata only

        def announced() -> list[dict[str, Any]]:
            lines = log.read_bytes().splitlines()
            return [json.loads(line)["e"] for line in lines[len(records) :] if line.strip()]

        _wait_for(
            lambda: any(e["type"] == "StateChanged" and e["new"] == "Idle" for e in announced()),
            "the branch announced free in the log",
        )
        completed = [e for e in announced() if e["type"] == "MessageCompleted"]
        assert [e["status"] for e in completed] == ["interrupted"]
        assert all(
            json.loads(line)["w"] != writer
            for line in log.read_bytes().splitlines()[len(records) :]
        )
    finally:
        reopened.close()
