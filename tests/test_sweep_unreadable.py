"""A sweep's results when a message file cannot be read (damaged or deleted by hand):
the readable replies keep their records, only what could not be read is marked, and a
StoreWarning names the sweep, the cell and the file."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import DEADLINE
from test_sweep import _compact

from cm_notebook.session import ContextSession
from cm_notebook.store import StoreWarning
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool


def _garble(data_dir: Path, context_id: str, message_id: str) -> Path:
    path = data_dir / "contexts" / context_id / "messages" / f"{message_id}.json"
    path.write_text("{garbled")
    return path


@pytest.mark.parametrize("damaged", ["answer", "follow-up prompt", "follow-up reply"])
def test_a_cell_with_follow_ups_keeps_its_readable_replies_when_one_file_is_unreadable(
    new_session: Callable[..., ContextSession], data_dir: Path, damaged: str
) -> None:
    fake = ScriptedProvider(strict=True).reply("Paris.").reply("Paris.")
    session = new_session(provider=fake)
    sweep = session.sweep("Capital of France?", [{}], repeat=2, name="cap", progress=False)
    sweep.run(DEADLINE)
    cell = sweep.cell("p0-v0-r0")
    fake.reply("Lyon is the third-largest city.").reply("Marseille is on the sea.")
    session.send("And Lyon?", branch=cell.branch).result(DEADLINE)
    session.send("And Marseille?", branch=cell.branch).result(DEADLINE)
    history = session.history(cell.branch)
    assert [m.role for m in history] == ["user", "assistant"] * 3
    target = {"answer": history[1], "follow-up prompt": history[2], "follow-up reply": history[3]}
    asyncio.run(_compact(data_dir, session.id))
    path = _garble(data_dir, session.id, target[damaged].id)

    with pytest.warns(StoreWarning, match=r"sweep 'cap': cell 'p0-v0-r0'") as caught:
        rows = sweep.to_records()
    assert any(getattr(w.message, "path", None) == path for w in caught)
    assert [r["cell"] for r in rows] == ["p0-v0-r0"] * 3 + ["p0-v0-r1"]
    mine = rows[:3]
    assert [r["message_id"] for r in mine] == [history[1].id, history[3].id, history[5].id]
    assert [r["turn"] for r in mine] == [1, 2, 3]
    assert len({tuple(r) for r in rows}) == 1  # every record has the same columns
    marked = 0 if damaged == "answer" else 1
    assert str(path) in mine[marked]["error"]
    assert "Restore" in mine[marked]["error"]  # and what to do
    whole = [r for i, r in enumerate(rows) if i != marked]
    assert [r["error"] for r in whole] == [None, None, None]
    assert {r["variant"] for r in rows} == {cell.variant}
    outputs: list[str | None] = [
        "Paris.",
        "Lyon is the third-largest city.",
        "Marseille is on the sea.",
    ]
    prompts: list[str | None] = ["Capital of France?", "And Lyon?", "And Marseille?"]
    statuses: list[str | None] = ["complete"] * 3
    if damaged == "follow-up prompt":
        prompts[1] = None  # the reply is whole, its prompt unknown
    else:  # the reply keeps its place (and turn, and prompt), nothing its file held
        outputs[marked] = statuses[marked] = None
    assert [r["output"] for r in mine] == outputs
    assert [r["prompt"] for r in mine] == prompts
    assert [r["status"] for r in mine] == statuses
    assert rows[3]["output"] == "Paris."


@pytest.mark.parametrize("damaged", ["tool result", "tool step"])
def test_an_unreadable_tool_result_or_step_marks_the_reply_after_it_which_stays_whole(
    new_session: Callable[..., ContextSession], data_dir: Path, damaged: str
) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("3")
    session = new_session(provider=fake, tools=[add], approval="auto")
    sweep = session.sweep("1 + 2?", [{}], name="sum", progress=False).run(DEADLINE)
    history = session.history(sweep.cells[0].branch)
    assert [m.role for m in history] == ["user", "assistant", "tool", "assistant"]
    asyncio.run(_compact(data_dir, session.id))
    target = history[2] if damaged == "tool result" else history[1]
    path = _garble(data_dir, session.id, target.id)
    with pytest.warns(StoreWarning, match=r"sweep 'sum': cell 'p0-v0-r0'"):
        rows = sweep.to_records()
    # The step that only asks for the tool has no record: the turn's reply has the one,
    # marked with what could not be read on the way to it (an unreadable step's call
    # cannot be counted with the turn's).
    counted = 1 if damaged == "tool result" else 0
    assert [(r["message_id"], r["tool_calls"]) for r in rows] == [(history[3].id, counted)]
    assert str(path) in rows[0]["error"]
    assert (rows[0]["output"], rows[0]["prompt"], rows[0]["status"]) == ("3", "1 + 2?", "complete")


def test_stability_warns_of_an_unreadable_answer_and_shows_it_left_out(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    fake = ScriptedProvider(strict=True).reply("A").reply("A").reply("B").reply("C")
    session = new_session(provider=fake)
    sweep = session.sweep(
        ["Q1", "Q2"], [{}], repeat=2, name="stab", concurrency=1, progress=False
    ).run(DEADLINE)
    assert [c.reply for c in sweep.cells] == ["A", "A", "B", "C"]
    asyncio.run(_compact(data_dir, session.id))
    bad = sweep.cell("p1-v0-r1")
    assert bad.message_id is not None
    path = _garble(data_dir, session.id, bad.message_id)

    with pytest.warns(StoreWarning, match=r"sweep 'stab': cell 'p1-v0-r1'") as caught:
        found = sweep.stability()
    assert any(getattr(w.message, "path", None) == path for w in caught)
    assert any(str(path) in str(w.message) for w in caught)
    whole, short = found.groups
    assert (whole.unreadable, whole.stability.total, whole.agreement) == (0, 2, 1.0)
    assert (short.unreadable, short.stability.total, short.agreement) == (1, 1, 1.0)
    records = found.to_records()
    assert [(r["answers"], r["unreadable"]) for r in records] == [(2, 0), (1, 1)]
    assert repr(found) == (
        "<SweepStability 'stab' 2 groups, mean agreement 100%, 1 unreadable answer left out>"
    )
    assert "== Q2 [variant] (1 unreadable answer left out)" in str(found)
    assert found._repr_html_().count("1 unreadable answer left out") == 2  # summary, row


def test_a_group_whose_answers_are_all_unreadable_says_so(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    session = new_session(provider=ScriptedProvider())
    sweep = session.sweep("Q", [{}], name="gone", progress=False).run(DEADLINE)
    asyncio.run(_compact(data_dir, session.id))
    message_id = sweep.cells[0].message_id
    assert message_id is not None
    _garble(data_dir, session.id, message_id)
    with pytest.warns(StoreWarning, match=r"sweep 'gone': cell 'p0-v0-r0'"):
        found = sweep.stability()
    assert (found.groups[0].agreement, found.groups[0].unreadable) == (None, 1)
    assert "no repeat finished" not in str(found)
    assert "no answers (1 unreadable answer left out" in str(found)


@pytest.mark.parametrize("damaged", ["reply", "prompt"])
def test_a_sweep_runs_again_when_one_cell_s_message_file_is_unreadable(
    new_session: Callable[..., ContextSession], data_dir: Path, damaged: str
) -> None:
    session = new_session(provider=ScriptedProvider())
    sweep = session.sweep(["Q1", "Q2"], [{}], name="again", progress=False).run(DEADLINE)
    bad = sweep.cell("p1-v0-r0")
    history = session.history(bad.branch)
    context_id = session.id
    session.close()
    asyncio.run(_compact(data_dir, context_id))
    path = _garble(data_dir, context_id, history[1 if damaged == "reply" else 0].id)

    # Two new repeats asked, none for the damaged cell: it may have its answer.
    fake = ScriptedProvider(strict=True).reply("new 1").reply("new 2")
    reopened = ContextSession.open(context_id, data_dir=data_dir, provider=fake)
    try:
        again = reopened.sweep(["Q1", "Q2"], [{}], repeat=2, name="again", progress=False)
        again.run(DEADLINE)
        assert len(fake.requests) == 2
        statuses = {cell.key: cell.status for cell in again.cells}
        assert statuses == {
            "p0-v0-r0": "done",
            "p0-v0-r1": "done",
            "p1-v0-r0": "failed",
            "p1-v0-r1": "done",
        }
        error = again.cell("p1-v0-r0").error
        assert error is not None
        assert str(path) in error
        assert "restore that file from a backup" in error
        assert f"session.delete_branch({bad.branch!r})" in error
        assert reopened.tree().heads[bad.branch] == history[-1].id  # nothing moved

        # As the error says: without a backup, the cell's branch deleted, it runs afresh.
        reopened.delete_branch(bad.branch)
        fake.reply("Q2 afresh")
        rerun = reopened.sweep(["Q1", "Q2"], [{}], repeat=2, name="again", progress=False)
        rerun.run(DEADLINE)
        assert rerun.cell("p1-v0-r0").status == "done"
        assert rerun.cell("p1-v0-r0").reply == "Q2 afresh"
    finally:
        reopened.close()
