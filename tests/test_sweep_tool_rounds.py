"""A sweep cancelled while a cell is in its tool round: the cell ends failed, saying
where it stopped, in the listeners, the counts, the grid and the records, and the next
run of the sweep asks it again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from test_session_support import DEADLINE

from cm_notebook.errors import PermanentProviderError
from cm_notebook.session import ContextSession
from cm_notebook.sweep import SweepCell
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool
from cm_notebook.widgets.sweep_grid import grid_html


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def _until(check: Callable[[], object]) -> None:
    # Poll for ``check()``, with a deadline.
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_cell_stopped_while_its_tool_calls_wait_for_approval_fails_and_runs_again(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider().tool_call("add", {"a": 1, "b": 2})
    session = new_session(provider=fake, tools=[add])  # approval: ask
    sweep = session.sweep("Add 1 and 2", [{}], name="sc", progress=False)
    seen: list[tuple[str, str | None]] = []

    def heard(cell: SweepCell) -> None:
        seen.append((cell.status, cell.error))

    sweep.listen(heard)
    _until(lambda: session.pending_tool_calls)
    sweep.cancel()
    sweep.run(DEADLINE)

    cell = sweep.cells[0]
    assert cell.status == "failed"
    assert cell.error is not None
    assert "stopped while its tool calls waited for approval" in cell.error
    assert "cancelled by the user" in cell.error
    assert seen[-1] == ("failed", cell.error)  # never "done" on the way
    assert "done" not in [status for status, _error in seen]
    assert sweep.counts() == {"pending": 0, "running": 0, "done": 0, "failed": 1}
    assert "1 failed" in repr(sweep)
    assert "waited for approval" in grid_html(sweep)
    rows = sweep.to_records()
    assert [(r["output"], r["tool_calls"], r["failure"]) for r in rows] == [("", 1, cell.error)]

    fake.reply("3")
    again = session.sweep("Add 1 and 2", [{}], name="sc", progress=False).run(DEADLINE)
    assert [(c.status, c.reply) for c in again.cells] == [("done", "3")]
    assert [m.content for m in fake.last_request.messages] == ["Add 1 and 2"]
    assert [(r["output"], r["failure"]) for r in again.to_records()] == [("3", None)]


def test_a_cell_stopped_while_a_tool_runs_fails_saying_so(
    new_session: Callable[..., ContextSession],
) -> None:
    started, release = threading.Event(), threading.Event()

    @tool
    def slow(x: int) -> int:
        """Return x, slowly."""
        started.set()
        release.wait(DEADLINE)
        return x

    fake = ScriptedProvider().tool_call("slow", {"x": 1})
    session = new_session(provider=fake, tools=[slow], approval="auto")
    sweep = session.sweep("Go", [{}], name="ct", progress=False)
    seen: list[str] = []
    sweep.listen(lambda cell: seen.append(cell.status))
    assert started.wait(DEADLINE)
    sweep.cancel()
    try:
        sweep.run(DEADLINE)
    finally:
        release.set()

    cell = sweep.cells[0]
    assert (cell.status, seen[-1]) == ("failed", "failed")
    assert cell.error is not None
    assert "stopped while a tool ran" in cell.error
    assert "'slow' was interrupted while running" in cell.error
    assert [r["failure"] for r in sweep.to_records()] == [cell.error]
    assert sweep.counts()["failed"] == 1

    fake.reply("1")
    again = session.sweep("Go", [{}], name="ct", progress=False).run(DEADLINE)
    assert [(c.status, c.reply) for c in again.cells] == [("done", "1")]


def test_a_done_cell_whose_new_reply_is_stopped_in_its_tool_round_reads_as_failed(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider().reply("3")
    session = new_session(provider=fake, tools=[add])  # approval: ask
    sweep = session.sweep("Add 1 and 2", [{}], name="rg", progress=False).run(DEADLINE)
    cell = sweep.cells[0]
    assert (cell.status, cell.reply) == ("done", "3")

    fake.tool_call("add", {"a": 1, "b": 2})
    turn = session.regenerate(branch=cell.branch)
    _until(lambda: session.pending_tool_calls)
    turn.cancel()
    turn.result(DEADLINE)

    cell = sweep.cells[0]  # read again, up to date with the store
    assert cell.status == "failed"  # not pending, as a cell never run would be
    assert cell.error is not None
    assert "stopped while its tool calls waited for approval" in cell.error
    assert sweep.counts()["failed"] == 1
    assert [r["failure"] for r in sweep.to_records()] == [cell.error]


def test_an_ended_sweep_reads_a_cell_another_run_stopped_in_its_tool_round_as_failed(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider().error(PermanentProviderError("bad request"))
    session = new_session(provider=fake, tools=[add])  # approval: ask
    first = session.sweep("Add 1 and 2", [{}], name="two", progress=False).run(DEADLINE)
    assert first.cells[0].status == "failed"
    assert "bad request" in (first.cells[0].error or "")

    fake.tool_call("add", {"a": 1, "b": 2})
    second = session.sweep("Add 1 and 2", [{}], name="two", progress=False)
    _until(lambda: session.pending_tool_calls)
    second.cancel()
    second.run(DEADLINE)

    # The first handle reads the cell as the store has it now: the second run's reply.
    cell = first.cells[0]
    assert (cell.status, cell.message_id) == ("failed", second.cells[0].message_id)
    assert cell.error == second.cells[0].error
    assert "stopped while its tool calls waited for approval" in (cell.error or "")


def test_a_cell_stopped_at_its_tool_round_limit_says_so_not_that_it_waited(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).tool_call("add", {"a": 3, "b": 3})
    session = new_session(provider=fake, tools=[add], approval="auto", max_tool_rounds=1)
    sweep = session.sweep("Add twice", [{}], name="limit", progress=False).run(DEADLINE)

    [row] = sweep.to_records()
    assert row["failure"] is not None
    assert "at its tool round limit" in row["failure"]
    assert "waited for approval" not in row["failure"]
