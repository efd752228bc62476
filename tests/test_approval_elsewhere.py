"""Tool calls waiting in another process are listed and decided like one's own: a
session (and so the server, over HTTP) lists them in ``pending_tool_calls``, and
approve/deny with no call id decide them too."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from jupyter_server_proc import JupyterServer
from server_client import create_context, read_events, wait_for
from test_session_support import until
from test_signal_follow import DEADLINE, _wait_for
from tool_writer import start_tool_writer

from cm_notebook import fsm
from cm_notebook._remote_decisions import DecisionBox
from cm_notebook.errors import (
    InvalidInputError,
    ToolCallAlreadyResolvedError,
    ToolCallNotFoundError,
)
from cm_notebook.model import Message
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.store.folders import context_folder_of
from cm_notebook.testing import ScriptedProvider
from cm_notebook.turn import Turn


@pytest.fixture
def context(tmp_path: Path) -> str:
    session = ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider())
    context_id = session.id
    session.close()
    return context_id


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=DEADLINE)  # reaped, its pipe closed


def _finish(child: subprocess.Popen[bytes]) -> str:
    out, _ = child.communicate(timeout=DEADLINE)
    return out.decode().strip()


def _asking(
    data_dir: Path,
    context_id: str,
    children: list[subprocess.Popen[bytes]],
    branch: str = "main",
    arguments: tuple[int, int] = (1, 2),
) -> None:
    # A kernel's turn on ``branch`` waiting for approval of add(...); returns once asked.
    children.append(
        start_tool_writer(
            data_dir, context_id, print_tool_result=True, branch=branch, arguments=arguments
        )
    )
    with ContextSession.open(context_id, data_dir=data_dir) as watcher:
        _wait_for(
            lambda: any(
                c.arguments == dict(zip("ab", arguments, strict=True))
                for c in watcher.pending_tool_calls
            ),
            "the other process to ask",
        )


def test_a_call_asked_before_opening_is_listed_and_approved_with_all(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    _asking(tmp_path, context, children)
    # Opened after the call was asked for: found in the log read when following starts.
    with ContextSession.open(context, data_dir=tmp_path) as session:
        # Listed once this process has read the log (milliseconds after opening).
        _wait_for(lambda: bool(session.pending_tool_calls), "the call to be listed")
        [call] = session.pending_tool_calls
        assert (call.name, call.arguments, call.status) == ("add", {"a": 1, "b": 2}, "pending")
        with pytest.raises(ToolCallNotFoundError, match="on branch 'other'"):
            session.approve(branch="other")  # none there; the one on main stays waiting
        assert [c.id for c in session.pending_tool_calls] == [call.id]
        [approved] = session.approve(by="ada")
        assert approved.id == call.id
        assert _finish(children[0]) == "3"
        _wait_for(lambda: not session.pending_tool_calls, "the decided call to leave the list")
        [record] = session.approval_log()
        assert (record.tool_call_id, record.by, record.remote) == (call.id, "ada", True)


def test_an_edited_approval_of_a_call_elsewhere_returns_it_as_edited(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    _asking(tmp_path, context, children)
    with ContextSession.open(context, data_dir=tmp_path) as session:
        _wait_for(lambda: bool(session.pending_tool_calls), "the call to be listed")
        [call] = session.pending_tool_calls
        [approved] = session.approve(call.id, arguments={"a": 40, "b": 2})
        # What runs in the other process, and why it is not what the model asked.
        assert approved.arguments == {"a": 40, "b": 2}
        assert approved.reason == "arguments edited before approval"
        assert _finish(children[0]) == "42"


def test_deny_all_reaches_the_waiting_process(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    _asking(tmp_path, context, children)
    with ContextSession.open(context, data_dir=tmp_path) as session:
        [denied] = session.deny(reason="not now", branch="main")
        assert denied.name == "add"
        assert "not now" in _finish(children[0])
        _wait_for(lambda: not session.pending_tool_calls, "the denied call to leave the list")
        with pytest.raises(ToolCallNotFoundError):
            session.deny()


def test_a_dead_process_s_call_is_not_listed(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    _asking(tmp_path, context, children)
    with ContextSession.open(context, data_dir=tmp_path) as watching:
        assert watching.state_of("main") is fsm.State.AWAITING_TOOL_APPROVAL
        assert watching.running_turn_id("main") is not None
        children[0].kill()
        children[0].communicate(timeout=DEADLINE)
        # At once, not at the follower's next step: its calls, turn and state agree.
        assert watching.state_of("main") is fsm.State.IDLE
        assert watching.running_turn_id("main") is None
        assert watching.pending_tool_calls == []
    with ContextSession.open(context, data_dir=tmp_path) as session:
        # Nobody is left to pick a decision up: nothing to approve, or to list.
        with pytest.raises(ToolCallNotFoundError):
            session.approve()  # with the log read as it is: the call was found dead
        assert session.pending_tool_calls == []


def test_the_server_lists_and_approves_a_kernel_s_call(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, [])
        url = f"contexts/{context_id}"
        asked = read_events(
            client,
            f"{url}/events",
            lambda e: e.event == "ToolApprovalRequested",
            started=lambda: children.append(
                start_tool_writer(server.data_dir, context_id, print_tool_result=True)
            ),
        )
        [call_id] = json.loads(asked[-1].data)["tool_call_ids"]
        # Listed once the server's session has read the log too (milliseconds).
        wait_for(lambda: bool(client.get(url).json()["pending_tool_calls"]))
        detail = client.get(url).json()
        assert [c["id"] for c in detail["pending_tool_calls"]] == [call_id]
        assert detail["states"]["main"] == "AwaitingToolApproval"
        assert detail["running"]["main"]  # the kernel's turn, by its id
        listed = client.get(f"{url}/tools").json()["tool_calls"]
        assert [(c["id"], c["status"]) for c in listed] == [(call_id, "pending")]
        approved = client.post(f"{url}/tools/approve", json={})
        assert approved.status_code == 200, approved.text
        assert [c["id"] for c in approved.json()["tool_calls"]] == [call_id]
        assert _finish(children[0]) == "3"
        read_events(
            client,
            f"{url}/events?since={asked[-1].id}",
            lambda e: e.event == "StateChanged" and json.loads(e.data)["new"] == "Idle",
        )
        detail = client.get(url).json()
        assert detail["pending_tool_calls"] == []
        assert detail["running"] == {}
        nothing = client.post(f"{url}/tools/approve", json={})
        assert nothing.status_code == 409, nothing.text


def test_two_processes_may_number_their_calls_alike(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    with ContextSession.open(context, data_dir=tmp_path) as session:
        session.branch("other", switch=False)
    _asking(tmp_path, context, children, "main", (1, 2))
    _asking(tmp_path, context, children, "other", (5, 6))
    with ContextSession.open(context, data_dir=tmp_path) as session:
        _wait_for(lambda: len(session.pending_tool_calls) == 2, "both calls to be listed")
        calls = session.pending_tool_calls
        assert sorted(c.arguments["a"] for c in calls) == [1, 5]
        [same_id] = {c.id for c in calls}  # both processes' first call
        with pytest.raises(InvalidInputError, match="say which with branch="):
            session.approve(same_id)
        [other] = session.approve(same_id, branch="other")
        assert other.arguments == {"a": 5, "b": 6}
        assert _finish(children[1]) == "11"
        [main] = session.approve()  # the one left
        assert main.arguments == {"a": 1, "b": 2}
        assert _finish(children[0]) == "3"


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@pytest.fixture
def waiting(tmp_path: Path) -> Iterator[tuple[ContextSession, Turn, Message, DecisionBox]]:
    # A turn here waiting for approval of add(1, 2), and the context's decision records,
    # where another process writes its decision (as ``approve()`` there does).
    provider = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("done")
    here = ContextSession.create(data_dir=tmp_path, provider=provider, tools=[add])
    try:
        turn = here.send("sum?")
        _wait_for(lambda: bool(here.pending_tool_calls), "the call to be asked")
        asking = here.history()[-1]
        assert here.signal_log_path is not None
        yield here, turn, asking, DecisionBox(context_folder_of(here.signal_log_path))
    finally:
        here.close()


def test_a_decision_made_where_the_call_waits_wins_over_a_later_one(
    waiting: tuple[ContextSession, Turn, Message, DecisionBox],
) -> None:
    here, turn, asking, box = waiting
    [call] = asking.tool_calls
    here.deny(call.id, reason="no")
    # Another process deciding at the same moment is refused, not told it approved.
    assert not box.post(call.id, asking.id, approved=True, reason=None)
    assert turn.result(DEADLINE).content == "done"
    [record] = here.approval_log()
    assert (record.reason, record.by) == ("no", "user")


def test_a_decision_another_process_made_first_wins(
    waiting: tuple[ContextSession, Turn, Message, DecisionBox],
) -> None:
    here, turn, asking, box = waiting
    [call] = asking.tool_calls
    assert box.post(call.id, asking.id, approved=True, reason=None, by="remote-reviewer")
    # Applied here already, or about to be: either way this later decision is refused.
    with pytest.raises(ToolCallAlreadyResolvedError):
        here.deny(call.id)
    assert turn.result(DEADLINE).content == "done"
    [record] = here.approval_log()
    assert record.by == "remote-reviewer"


def test_a_decision_too_large_to_pass_is_refused_and_blocks_nothing(
    waiting: tuple[ContextSession, Turn, Message, DecisionBox],
) -> None:
    # Larger than the waiting process reads, it would be taken for damage there (the
    # call left pending) while its file refused every later decision.
    here, turn, asking, box = waiting
    [call] = asking.tool_calls
    with pytest.raises(InvalidInputError, match="more than the 8,388,608 that can pass"):
        box.post(call.id, asking.id, approved=False, reason="r" * 9_000_000)
    assert box.post(call.id, asking.id, approved=False, reason="no", by="remote-reviewer")
    assert turn.result(DEADLINE).content == "done"
    [record] = here.approval_log()
    assert (record.reason, record.by) == ("no", "remote-reviewer")


@pytest.mark.anyio
async def test_the_approval_view_names_the_branch_of_a_call_asked_before_it(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    pytest.importorskip("anywidget")
    from cm_notebook.widgets import ToolApproval

    _asking(tmp_path, context, children)
    session = ContextSession.open(context, data_dir=tmp_path)
    panel = ToolApproval(session)
    try:
        [row] = panel.rows.values()
        assert "on branch <b><bdi>main</bdi></b>" in row.title.value
        row.approve_button.click()
        await until(lambda: "approved" in row.status.value or "done" in row.status.value)
        assert _finish(children[0]) == "3"
    finally:
        panel.close()
        session.close()


@pytest.mark.anyio
async def test_the_approval_view_edits_a_call_whose_tool_only_the_other_process_has(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    # As approve(arguments=...) does: the shape is checked here, the schema there.
    pytest.importorskip("anywidget")
    from cm_notebook.widgets import ToolApproval

    _asking(tmp_path, context, children)
    session = ContextSession.open(context, data_dir=tmp_path)  # no tools here
    panel = ToolApproval(session)
    try:
        [row] = panel.rows.values()
        row.arguments.value = "[10, 20]"  # not an object: refused here already
        await until(lambda: "must be a JSON object" in row.check.value)
        assert row.approve_button.disabled
        row.arguments.value = json.dumps({"a": 10, "b": 20})
        await until(lambda: "checks them against its tool" in row.check.value)
        assert "no tool named" not in row.check.value
        assert not row.approve_button.disabled
        row.approve_button.click()
        await until(lambda: "edited arguments" in row.status.value or "done" in row.status.value)
        assert _finish(children[0]) == "30"  # the edit ran in the process with the tool
    finally:
        panel.close()
        session.close()


@pytest.mark.anyio
async def test_the_approval_view_shows_two_processes_calls_of_one_id_apart(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    pytest.importorskip("anywidget")
    from cm_notebook.widgets import ToolApproval

    with ContextSession.open(context, data_dir=tmp_path) as session:
        session.branch("other", switch=False)
    _asking(tmp_path, context, children, "main", (1, 2))
    _asking(tmp_path, context, children, "other", (5, 6))
    session = ContextSession.open(context, data_dir=tmp_path)
    panel = ToolApproval(session)
    try:
        await until(lambda: len(panel.rows) == 2)
        [same_id] = {call_id for call_id, _branch in panel.rows}  # both processes' call_1
        with pytest.raises(InvalidInputError, match="say which with branch="):
            panel.row(same_id)
        other = panel.row(same_id, branch="other")
        assert json.loads(other.arguments.value) == {"a": 5, "b": 6}
        assert "on branch <b><bdi>other</bdi></b>" in other.title.value
        other.approve_button.click()
        await until(lambda: "approved" in other.status.value or "done" in other.status.value)
        assert _finish(children[1]) == "11"  # the other branch's call, and only it, ran
        main = panel.row(same_id, branch="main")
        assert not main.decided
        assert children[0].poll() is None  # still waiting for its decision
        assert [c.arguments for c in session.pending_tool_calls] == [{"a": 1, "b": 2}]
        main.deny_button.click()
        await until(lambda: "denied" in main.status.value)
        assert "denied" in _finish(children[0])
    finally:
        panel.close()
        session.close()


def test_a_call_whose_turn_was_stopped_cannot_be_decided_from_elsewhere(
    waiting: tuple[ContextSession, Turn, Message, DecisionBox],
) -> None:
    _here, turn, asking, box = waiting
    [call] = asking.tool_calls
    turn.cancel()
    _wait_for(lambda: turn.done(), "the turn to end")
    assert not box.post(call.id, asking.id, approved=True, reason=None)


@pytest.fixture
def both_waiting(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> Iterator[tuple[ContextSession, Turn, str]]:
    # A turn here on main waiting for add(1, 2), and another process's turn on "other"
    # (forked before either asked) waiting for add(5, 6): each numbers its first call
    # ``call_1``. Yields this session, its turn and that id.
    provider = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("done")
    here = ContextSession.create(data_dir=tmp_path, provider=provider, tools=[add])
    try:
        here.branch("other", switch=False)
        turn = here.send("sum?")
        _wait_for(lambda: bool(here.pending_tool_calls), "the call to be asked")
        children.append(
            start_tool_writer(
                tmp_path, here.id, print_tool_result=True, branch="other", arguments=(5, 6)
            )
        )
        _wait_for(lambda: len(here.pending_tool_calls) == 2, "the other process to ask")
        [same_id] = {c.id for c in here.pending_tool_calls}
        yield here, turn, same_id
    finally:
        here.close()


def test_a_call_here_and_another_process_s_of_one_id_are_decided_apart(
    both_waiting: tuple[ContextSession, Turn, str], children: list[subprocess.Popen[bytes]]
) -> None:
    here, turn, same_id = both_waiting
    with pytest.raises(InvalidInputError, match="'main', 'other' all have the id"):
        here.approve(same_id)  # which one is meant cannot be told
    [other] = here.approve(same_id, branch="other")
    assert other.arguments == {"a": 5, "b": 6}
    assert _finish(children[0]) == "11"  # the other process's call ran, not this one's
    assert not turn.done()
    assert [c.arguments for c in here.pending_tool_calls] == [{"a": 1, "b": 2}]
    with pytest.raises(ToolCallNotFoundError, match="on branch 'other'"):
        here.deny(same_id, branch="other")  # decided: this one's stays waiting
    [main] = here.approve(same_id, branch="main")
    assert main.arguments == {"a": 1, "b": 2}
    assert turn.result(DEADLINE).content == "done"


@pytest.mark.anyio
async def test_the_approval_view_decides_a_call_here_and_another_process_s_apart(
    both_waiting: tuple[ContextSession, Turn, str], children: list[subprocess.Popen[bytes]]
) -> None:
    pytest.importorskip("anywidget")
    from cm_notebook.widgets import ToolApproval

    here, turn, same_id = both_waiting
    panel = ToolApproval(here)
    try:
        await until(lambda: len(panel.rows) == 2)
        other = panel.row(same_id, branch="other")
        assert json.loads(other.arguments.value) == {"a": 5, "b": 6}
        other.approve_button.click()
        await until(lambda: "approved" in other.status.value or "done" in other.status.value)
        assert _finish(children[0]) == "11"  # its buttons decided the other process's call
        main = panel.row(same_id, branch="main")
        assert not main.decided
        assert not turn.done()
        main.approve_button.click()
        assert (await turn).content == "done"
    finally:
        panel.close()


def _approve_or_refusal(session: ContextSession, call_id: str) -> str:
    # "" if approve() reports the call approved, else why it refused (nothing decided).
    try:
        session.approve(call_id)
    except ToolCallAlreadyResolvedError as exc:
        return str(exc)
    return ""


def test_a_decision_its_turn_stopped_before_it_arrived_is_not_reported_made(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    # Stopping the turn and approving its call at once: whichever reaches the waiting
    # process first, approve() says what happened there. Either it raises and nothing
    # was decided, or it returns and the call was approved (the audit log says so).
    _asking(tmp_path, context, children)
    with ContextSession.open(context, data_dir=tmp_path) as session:
        [call] = session.pending_tool_calls
        session.stop("main")
        refusal = _approve_or_refusal(session, call.id)
        decided = not refusal
        assert decided or "ended before this decision reached" in refusal or "already" in refusal
        children[0].communicate(timeout=DEADLINE)
        _wait_for(lambda: session.state_of("main") == fsm.State.IDLE, "the turn to end")
        assert [record.approved for record in session.approval_log()] == ([True] if decided else [])


def test_deciding_all_leaves_out_a_call_its_turn_stopped_first(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    _asking(tmp_path, context, children)
    with ContextSession.open(context, data_dir=tmp_path) as session:
        session.stop("main")
        try:
            denied = session.deny(reason="not now")
        except (ToolCallNotFoundError, ToolCallAlreadyResolvedError):
            denied = []  # stopped before the deny looked, or before it arrived
        children[0].communicate(timeout=DEADLINE)
        _wait_for(lambda: session.state_of("main") == fsm.State.IDLE, "the turn to end")
        assert [call.id for call in denied] == [r.tool_call_id for r in session.approval_log()]


def test_a_decision_its_diverted_turn_stopped_first_is_not_reported_made(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    # As above, with the branch's head moved by a writer that does not claim it: the
    # stopped turn answers its call on a conflict branch forked at the asking reply,
    # and that still tells the poster that nothing was decided.
    _asking(tmp_path, context, children)
    with ContextSession.open(context, data_dir=tmp_path) as session:
        [call] = session.pending_tool_calls
        asking = session.history("main")[-1]

        async def intrude() -> None:
            async with FileStore(tmp_path) as store:
                stray = Message(role="user", parent_id=asking.id, content="from elsewhere")
                await store.append_message(context, stray, branch="main", expected_head=asking.id)

        anyio.run(intrude)
        session.stop("main")
        refusal = _approve_or_refusal(session, call.id)
        decided = not refusal
        children[0].communicate(timeout=DEADLINE)
        _wait_for(lambda: "main-conflict-1" in session.branches, "the turn to divert")
        assert [record.approved for record in session.approval_log()] == ([True] if decided else [])
