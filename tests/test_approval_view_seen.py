"""An approval view kept to one branch (a ``%%cm`` cell's) shows the decisions of its
own calls only: another process's call of the same id on another branch is not one
of them."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from test_session_support import until
from test_signal_follow import DEADLINE, _wait_for
from tool_writer import start_tool_writer

from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.turn import Turn


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=DEADLINE)  # reaped, its pipe closed


@pytest.fixture
def both_waiting(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> Iterator[tuple[ContextSession, Turn, str]]:
    # A turn here on main waiting for add(1, 2), and another process's turn on "other"
    # waiting for add(5, 6), each with its own ``call_1``. Yields this session, its
    # turn and that id.
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


@pytest.mark.anyio
async def test_a_branch_s_view_leaves_out_the_decision_on_another_branch_s_call_of_its_id(
    both_waiting: tuple[ContextSession, Turn, str], children: list[subprocess.Popen[bytes]]
) -> None:
    pytest.importorskip("anywidget")
    from cm_notebook.widgets import ToolApproval

    here, turn, same_id = both_waiting
    cell = ToolApproval(here, branch="main")  # what a %%cm cell on main shows
    everything = ToolApproval(here)  # a panel of every call waiting
    try:
        await until(lambda: len(everything.rows) == 2)
        assert list(cell.rows) == [(same_id, "main")]
        other = everything.row(same_id, branch="other")
        other.approve_button.click()
        await until(lambda: "approved" in other.status.value or "done" in other.status.value)
        children[0].communicate(timeout=DEADLINE)  # the other process's turn is over
        [decided] = here.approval_log()
        assert (decided.tool_call_id, decided.branch) == (same_id, "other")
        await until(lambda: len(everything.history.records) == 1)
        assert cell.history.records == []  # the signal of that decision was left out
        cell.history.reload()
        assert cell.history.records == []  # and so it is when the log is read again
        assert cell.history.layout.display == "none"

        await anyio.to_thread.run_sync(lambda: here.approve(same_id, branch="main"))
        assert (await turn).content == "done"
        [mine] = await until(lambda: cell.history.records)
        assert (mine.tool_call_id, mine.branch) == (same_id, "main")
        cell.history.reload()
        assert [(r.tool_call_id, r.branch) for r in cell.history.records] == [(same_id, "main")]
    finally:
        cell.close()
        everything.close()


@pytest.mark.anyio
async def test_a_branch_s_view_keeps_the_decision_of_its_call_on_the_branch_its_turn_moved_to(
    tmp_path: Path,
) -> None:
    # A turn whose branch another writer moved goes on ``<branch>-conflict-<n>``; the
    # decisions of the calls it asked on its own branch are logged with that one.
    pytest.importorskip("anywidget")
    from cm_notebook.approvals import ApprovalRecord
    from cm_notebook.widgets import ToolApproval

    provider = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("done")
    here = ContextSession.create(data_dir=tmp_path, provider=provider, tools=[add])
    cell = ToolApproval(here, branch="main")
    try:
        turn = here.send("sum?")
        [(call_id, _main)] = await until(lambda: list(cell.rows))

        def decided_on(branch: str) -> ApprovalRecord:
            return ApprovalRecord(
                branch=branch, message_id="m", tool_call_id=call_id, tool="add", approved=True
            )

        cell.history.add(decided_on("other"))
        cell.history.add(decided_on("main-other"))
        assert cell.history.records == []
        cell.history.add(decided_on("main-conflict-1"))
        assert [r.branch for r in cell.history.records] == ["main-conflict-1"]
        # Its signals too are of the call's row; another branch's are not.
        row = cell.row(call_id)
        assert cell._row_for(call_id, "main-conflict-1") is row
        assert cell._row_for(call_id, "other") is None
        turn.cancel()
    finally:
        cell.close()
        here.close()


@pytest.mark.anyio
async def test_a_branch_s_view_leaves_its_row_waiting_when_another_branch_s_call_is_decided(
    both_waiting: tuple[ContextSession, Turn, str], children: list[subprocess.Popen[bytes]]
) -> None:
    pytest.importorskip("anywidget")
    from cm_notebook.widgets import ToolApproval

    here, turn, same_id = both_waiting
    cell = ToolApproval(here, branch="main")
    everything = ToolApproval(here)
    try:
        await until(lambda: len(everything.rows) == 2)
        other = everything.row(same_id, branch="other")
        other.approve_button.click()
        await until(lambda: "done" in other.status.value)
        children[0].communicate(timeout=DEADLINE)
        await until(lambda: len(everything.history.records) == 1)
        mine = cell.row(same_id)
        assert not mine.decided  # the other branch's outcome was not shown on it
        assert mine.status.value == ""
        assert "1 tool call waiting" in cell.header.value
        mine.approve_button.click()  # and it still decides this branch's call
        assert (await turn).content == "done"
        await until(lambda: "done" in mine.status.value)
        assert "3" in mine.status.value
    finally:
        cell.close()
        everything.close()


@pytest.mark.anyio
async def test_reformatted_arguments_in_the_view_are_not_an_edit(tmp_path: Path) -> None:
    pytest.importorskip("anywidget")
    from cm_notebook.widgets import ToolApproval

    provider = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("done")
    with ContextSession.create(data_dir=tmp_path, provider=provider, tools=[add]) as here:
        turn = here.send("sum?")
        panel = ToolApproval(here)
        try:
            await until(lambda: len(panel.rows) == 1)
            [row] = panel.rows.values()
            row.arguments.value = '{"a": "x"}'  # first a wrong edit, explained
            await until(lambda: row.check.value != "")
            row.arguments.value = '{"b": 2,   "a": 1}'  # then the same arguments again
            await until(lambda: row.check.value == "", within=3)
            assert not row.approve_button.disabled
            row.approve_button.click()
            assert (await turn).content == "done"
            [record] = here.approval_log()
            assert (record.edited_arguments, record.reason) == (None, None)
        finally:
            panel.close()
