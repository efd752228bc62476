"""Follow-ups on a sweep's cells: running the sweep again keeps each cell's answer the
reply to its own prompt, never a follow-up's reply, and never answers a follow-up."""

from __future__ import annotations

import time
from collections.abc import Callable

from test_session_support import DEADLINE

from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool


def test_a_follow_up_on_a_cell_is_not_taken_for_its_answer_when_run_again(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(strict=True).reply("Paris.").reply("Paris.")
    session = new_session(provider=fake)
    first = session.sweep(
        "Capital of France?", [{}], repeat=2, name="cap", concurrency=1, progress=False
    ).run(DEADLINE)
    answer = first.cells[0].message_id
    fake.reply("Lyon is the third-largest city.")
    session.send("And Lyon?", branch="cap-p0-v0-r0").result(DEADLINE)
    fake.reply("Paris.")  # the new repeat
    again = session.sweep(
        "Capital of France?", [{}], repeat=3, name="cap", concurrency=1, progress=False
    ).run(DEADLINE)
    cell = again.cell("p0-v0-r0")
    assert (cell.status, cell.reply, cell.message_id) == ("done", "Paris.", answer)
    assert len(fake.requests) == 4  # only the new repeat was asked
    found = again.stability().groups[0].stability
    assert (found.total, found.agreement) == (3, 1.0)
    # The follow-up stays on the cell's branch, exported with the sweep's rows.
    assert [m.content for m in session.history(cell.branch)][-1] == (
        "Lyon is the third-largest city."
    )
    assert len([r for r in again.to_records() if r["cell"] == "p0-v0-r0"]) == 2


def test_a_cell_answered_through_a_tool_keeps_its_final_reply_after_a_follow_up(
    new_session: Callable[..., ContextSession],
) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("3")
    session = new_session(provider=fake, tools=[add], approval="auto")
    session.sweep("1 + 2?", [{}], name="sum", progress=False).run(DEADLINE)
    branch = "sum-p0-v0-r0"
    assert [m.role for m in session.history(branch)] == ["user", "assistant", "tool", "assistant"]
    fake.reply("6")
    session.send("Doubled?", branch=branch).result(DEADLINE)
    again = session.sweep("1 + 2?", [{}], name="sum", progress=False).run(DEADLINE)
    assert (again.cells[0].status, again.cells[0].reply) == ("done", "3")
    assert len(fake.requests) == 3


def test_a_failed_cell_with_follow_ups_is_not_answered_again_in_their_place(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(strict=True).error("permanent")
    session = new_session(provider=fake)
    first = session.sweep("Q", [{}], name="oops", progress=False).run(DEADLINE)
    assert first.cells[0].status == "failed"
    branch = first.cells[0].branch
    fake.reply("an answer to the follow-up")
    session.send("Try harder?", branch=branch).result(DEADLINE)
    head = session.branches[branch].head
    fake.reply("would be taken for the cell's answer")
    again = session.sweep("Q", [{}], name="oops", progress=False).run(DEADLINE)
    cell = again.cells[0]
    assert cell.status == "failed"
    assert "messages were sent after it" in (cell.error or "")
    assert f"delete_branch({branch!r})" in (cell.error or "")
    assert len(fake.requests) == 2  # nothing asked: the follow-up is not answered again
    assert session.branches[branch].head == head  # and stays on the branch


def test_a_reply_to_another_prompt_on_a_cells_empty_branch_is_not_its_answer(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(strict=True).hang()
    session = new_session(provider=fake)
    first = session.sweep("Capital of France?", [{}], repeat=2, name="cap", concurrency=1)
    deadline = time.monotonic() + DEADLINE
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)  # poll for the first cell's request, with a deadline
    first.cancel()
    first.run(DEADLINE)
    branch = "cap-p0-v0-r1"
    assert session.branches[branch].head is None  # made, never sent on
    fake.reply("Why did the chicken cross the road?")
    session.send("Tell me a joke", branch=branch).result(DEADLINE)
    head = session.branches[branch].head

    fake.reply("Paris.")  # the interrupted first cell, asked again
    again = session.sweep(
        "Capital of France?", [{}], repeat=2, name="cap", concurrency=1, progress=False
    ).run(DEADLINE)
    assert again.cell("p0-v0-r0").reply == "Paris."
    cell = again.cell("p0-v0-r1")
    assert cell.status == "failed"
    assert cell.reply != "Why did the chicken cross the road?"
    assert "is not the cell's prompt" in (cell.error or "")
    assert f"delete_branch({branch!r})" in (cell.error or "")
    assert len(fake.requests) == 3  # the joke is not asked again in the cell's place
    assert session.branches[branch].head == head
    found = again.stability().groups[0].stability
    assert found.total == 1  # only the cell's own answer
    # Its record is that reply, not the cell's answer: it carries the cell's failure.
    rows = {row["cell"]: row for row in again.to_records()}
    assert rows["p0-v0-r0"]["failure"] is None
    joke = rows["p0-v0-r1"]
    assert joke["output"] == "Why did the chicken cross the road?"
    assert joke["failure"] == cell.error
    answers = [row for row in rows.values() if row["failure"] is None]
    assert len(answers) == again.counts()["done"] == 1
