"""Two writers on one branch: no acknowledged message is lost, no reply answers the
other writer's question, and a second send on a busy branch is refused up front."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from test_session_support import DEADLINE, Recorder, seen

from cm_notebook.errors import BusyError, ToolCallAlreadyResolvedError
from cm_notebook.events import (
    BranchCreated,
    StateChanged,
    ToolApprovalRequested,
    ToolCallResolved,
)
from cm_notebook.fsm import State
from cm_notebook.magics._remedies import for_magics
from cm_notebook.model import Message, MessageStatus
from cm_notebook.server.wording import for_http
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool

CHILD = Path(__file__).with_name("branch_writer_child.py")
STREAMER = Path(__file__).with_name("streaming_writer_child.py")


def on_some_branch(data_dir: Path, context_id: str) -> dict[str, Message]:
    """Every message reachable from some branch head, read by a fresh store."""

    async def read() -> dict[str, Message]:
        async with FileStore(data_dir) as store:
            metadata = await store.get_metadata(context_id)
            found: dict[str, Message] = {}
            for name in metadata.branches:
                ids = await store.path(context_id, name)
                for message in await store.get_messages(context_id, ids):
                    found[message.id] = message
            return found

    return anyio.run(read)


def test_two_processes_sending_on_one_branch_lose_nothing(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    context_id = new_session(provider=ScriptedProvider()).id
    count = 30
    children = [
        subprocess.Popen(
            [sys.executable, str(CHILD), str(data_dir), context_id, "main", name, str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    outputs = []
    for child in children:
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        out, _ = child.communicate(timeout=120)
        assert child.returncode == 0
        outputs.append([json.loads(line) for line in out.splitlines()])
    assert [len(lines) for lines in outputs] == [count, count]
    reachable = on_some_branch(data_dir, context_id)
    for line in (line for lines in outputs for line in lines):
        # Every acknowledged message is on a branch, and each reply answers its question.
        assert line["user"] in reachable, line
        assert line["reply"] in reachable, line
        assert reachable[line["user"]].content == line["q"]
        assert reachable[line["reply"]].parent_id == line["user"]
        assert line["text"] == f"echo: {line['q']}"


def test_a_second_store_on_a_busy_branch_is_refused_up_front(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    first = new_session(provider=ScriptedProvider().hang(after_chunks=1, text="slow"))
    other_store = FileStore(data_dir)
    try:
        second = ContextSession.open(first.id, store=other_store, provider=ScriptedProvider())
        recorder = Recorder(second)
        turn = first.send("long question")
        # The other writer's turn, as this session follows it (its signals).
        recorder.wait(seen(StateChanged, branch="main", new=State.STREAMING))
        with pytest.raises(BusyError, match="in use by another writer") as refused:
            second.send("cutting in")
        # What to do, whatever was asked (a send, a deletion): the turn is not this
        # process's, so no turn.cancel(); as a REST client and a notebook of magics say it.
        message = str(refused.value)
        # Its reply may also wait for a decision on its calls, which no waiting brings.
        assert (
            "a reply is being generated there, or waits for a decision on its tool calls. "
            "Wait for it to finish and try again, decide its calls with "
            "session.approve(branch='main') or session.deny(branch='main') "
            "(session.pending_tool_calls lists them), stop it (session.stop(branch='main')), "
            "or work on another branch (session.branch(name))." in message
        )
        rest = for_http(message, data_dir=data_dir, api="/cm/api", context_id=first.id)
        here = f"/cm/api/contexts/{first.id}"
        assert (
            f"Wait for its MessageCompleted signal (GET {here}/events) and try again, decide "
            f"its calls with POST {here}/tools/approve or POST {here}/tools/deny with "
            f'{{"branch": "main"}} (GET {here}/tools lists them), stop it (POST {here}/stop '
            f'with {{"branch": "main"}}), or work on another branch (POST {here}/branches).' in rest
        )
        assert "stop it with `%cm stop --branch main`, or work on another branch" in (
            for_magics(message)
        )
        with pytest.raises(BusyError) as refused:
            second.edit_system("Be brief.", branch="main")
        assert str(refused.value).endswith(
            "wait for it, or stop it with session.stop(branch='main')"
        )
        # Not at the head: that reply is still being generated.
        with pytest.raises(BusyError, match="still being generated"):
            second.branch("elsewhere", switch=False)
        second.branch("elsewhere", from_message=second.history()[0].id, switch=False)
        second.switch("elsewhere")
        with pytest.raises(BusyError, match="in use by another writer") as refused:
            second.delete_branch("main")  # the first writer is replying there
        assert "send again" not in str(refused.value)
        assert "stop it (session.stop(branch='main'))" in str(refused.value)
        second.switch("main")
        assert "cutting in" not in [m.content for m in second.history()]
        turn.cancel()
        assert turn.result(DEADLINE).status is MessageStatus.INTERRUPTED
        # Once the first writer's turn is over, the branch is free for the other.
        assert second.send("now").result(DEADLINE).content == "echo: now"
        second.close()
    finally:
        anyio.run(other_store.close)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def test_deciding_a_call_another_writer_denied_says_so_and_why(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    # The other writer's refusal said only "already approved or denied".
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("fine")
    first = new_session(provider=fake, tools=[add])
    other_store = FileStore(data_dir)
    try:
        second = ContextSession.open(first.id, store=other_store, tools=[add])
        recorder, following = Recorder(first), Recorder(second)
        turn = first.send("1 + 2?")
        recorder.wait(seen(ToolApprovalRequested))
        (call,) = first.pending_tool_calls
        first.deny(call.id, reason="not now")
        following.wait(seen(ToolCallResolved, tool_call_id=call.id))  # stored, relayed
        with pytest.raises(ToolCallAlreadyResolvedError) as refused:
            second.approve(call.id)
        assert str(refused.value) == f"tool call {call.id!r} was already denied (not now)"
        assert turn.result(DEADLINE).content == "fine"
        second.close()
    finally:
        anyio.run(other_store.close)


def test_a_turn_whose_head_moved_goes_on_a_conflict_branch(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    # A writer that does not claim the branch (here: a store used directly) moves the
    # head while the turn waits for a tool approval. The turn's messages are kept on a
    # new branch forked at its own head, never appended after the stranger's.
    fake = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("three")
    session = new_session(provider=fake, tools=[add])
    recorder = Recorder(session)
    turn = session.send("1 + 2?")
    recorder.wait(seen(ToolApprovalRequested))
    asking = session.history()[-1]

    async def intrude() -> str:
        async with FileStore(data_dir) as store:
            stray = Message(role="user", parent_id=asking.id, content="from elsewhere")
            await store.append_message(session.id, stray, branch="main", expected_head=asking.id)
            return stray.id

    stray = anyio.run(intrude)
    session.approve()
    final = turn.result(DEADLINE)
    assert final.content == "three"
    assert session.branches["main"].head == stray  # the stranger's message stays put
    conflict = session.history("main-conflict-1")
    assert [m.content for m in conflict] == ["1 + 2?", "", "3", "three"]
    assert conflict[1].id == asking.id
    recorder.wait(seen(BranchCreated, branch="main-conflict-1", head=asking.id))
    assert session.state_of("main").value == "Idle"


_CLAIMING_CHILD = textwrap.dedent(
    """
    import sys, threading
    from cm_notebook.session import ContextSession
    from cm_notebook.testing import ScriptedProvider

    fake = ScriptedProvider().hang(after_chunks=1, text="busy")
    session = ContextSession.open(sys.argv[2], data_dir=sys.argv[1], provider=fake)
    started = threading.Event()
    session.subscribe(lambda e: started.set(), kinds={"ContentDelta"})
    session.send("mine")
    if not started.wait(30):
        sys.exit("the reply never started")
    print("claimed", flush=True)
    threading.Event().wait()  # holds the branch until killed
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")
def test_a_killed_writers_claim_is_recovered(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider())
    # A turn first: this session's claim file is then open and names this process.
    assert session.send("before").result(DEADLINE).content == "echo: before"
    child = subprocess.Popen(
        [sys.executable, "-c", _CLAIMING_CHILD, str(data_dir), session.id],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "claimed"
        with pytest.raises(BusyError, match=f"pid {child.pid} on "):
            session.send("mine too")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(DEADLINE)
        if child.stdout is not None:
            child.stdout.close()
    # The OS dropped the dead writer's lock: the branch is free, no clean-up needed.
    assert session.send("after").result(DEADLINE).content == "echo: after"
    # The reply had not been checkpointed yet: its text came from the signal log.
    contents = [m.content for m in session.history()]
    assert contents == ["before", "echo: before", "mine", "busy", "after", "echo: after"]
    assert session.history()[3].status is MessageStatus.INTERRUPTED
    # The claim names its owner again for the next refusal.
    claim_file = FileStore(data_dir).branch_claim_path(session.id, "main")
    assert claim_file.read_text() == f"pid {os.getpid()} on {socket.gethostname()}"


def test_renames_from_another_process_beside_its_stream_keep_every_turn_on_its_branch(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    # A second kernel (or the server) renaming the context while this one streams: the
    # rename that folds the message index's journal must not write old heads back.
    renamer = new_session(provider=ScriptedProvider())
    count = 60
    child = subprocess.Popen(
        [sys.executable, str(STREAMER), str(data_dir), renamer.id, str(count)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        renames = 0
        while child.poll() is None:
            renamer.rename(f"title {renames}")
            renames += 1
            time.sleep(0.01)
        out, _ = child.communicate(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=120)
    assert child.returncode == 0
    acknowledged = out.split()
    assert len(acknowledged) == count
    assert renames > count  # the renames came while the replies streamed

    async def main_path() -> list[str]:
        async with FileStore(data_dir) as store:  # read afresh, as another process would
            return await store.path(renamer.id, "main")

    on_main = anyio.run(main_path)
    assert [m for m in acknowledged if m not in on_main] == []
    assert len(on_main) == 2 * count
