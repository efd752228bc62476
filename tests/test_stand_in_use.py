"""A stand-in (what ``check --repair`` writes in place of a message whose file could not
be read) is never taken for what was said: its record is marked ``unreadable``, scoring
leaves it out, and replays, counterfactuals and sweeps refuse to send or count it.

Real files: the index is lost and one message file cut short, then a real repair
(``FileStore.check(repair=True)``) writes the stand-in.
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import DEADLINE

from cm_notebook.errors import StateError
from cm_notebook.model import Message
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.testing import ScriptedProvider

PROMPTS = ["Capital of France?", "Capital of Italy?", "Capital of Germany?"]


async def _compact(data_dir: Path, context_id: str) -> None:
    async with FileStore(data_dir) as store:
        await store.compact(context_id)


async def _repair(data_dir: Path, context_id: str) -> None:
    async with FileStore(data_dir) as store:
        report = await store.check(context_id, repair=True)
        assert report.ok, str(report)


def _damaged(
    data_dir: Path, session: ContextSession, victim: Message, fake: ScriptedProvider | None = None
) -> ContextSession:
    """``session`` closed, its index lost and ``victim``'s file cut short, repaired
    (a stand-in takes its place), and opened again."""
    context_id = session.id
    session.close()
    asyncio.run(_compact(data_dir, context_id))  # the branch heads as they are now
    folder = data_dir / "contexts" / context_id
    file = folder / "messages" / f"{victim.id}.json"
    file.write_bytes(file.read_bytes()[:150])
    (folder / "message_index.json").unlink()
    (folder / "message_index.journal").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        asyncio.run(_repair(data_dir, context_id))
    provider = fake if fake is not None else ScriptedProvider()
    return ContextSession.open(context_id, data_dir=data_dir, provider=provider)


@pytest.fixture
def three_turns(
    new_session: Callable[..., ContextSession],
) -> tuple[ContextSession, list[Message]]:
    fake = ScriptedProvider().reply("Paris.").reply("Rome.").reply("Berlin.")
    session = new_session(provider=fake)
    for prompt in PROMPTS:
        session.send(prompt).result(DEADLINE)
    return session, session.history()


def _branch_through(session: ContextSession, message_id: str) -> str:
    tree = session.tree()
    return next(name for name in tree.heads if message_id in [n.id for n in tree.path(name)])


def test_a_stand_in_reply_is_marked_unreadable_in_the_records_and_not_scored(
    three_turns: tuple[ContextSession, list[Message]], data_dir: Path
) -> None:
    session, history = three_turns
    reopened = _damaged(data_dir, session, history[3])  # "Rome."
    try:
        results = reopened.score(lambda m: len(m.content.split()), name="words", progress=False)
        assert results.left_out == (history[3].id,)
        assert results.left_out_unreadable == (history[3].id,)
        assert "left out 1 reply that could not be read" in results.summary()
        assert "restore the files from a backup" in results.summary()
        assert "only ask for tools" not in results.summary()
        rows = {row["message_id"]: row for row in reopened.to_records()}
        lost = rows[history[3].id]
        assert lost["status"] == "unreadable"
        assert lost["output"] is None
        assert lost["prompt"] == "Capital of Italy?"  # its place stays
        assert lost["turn"] == 2
        assert lost["metric_words"] is None
        assert (lost["provider"], lost["refusal"], lost["tool_calls"]) == (None, None, None)
        for whole in (history[1].id, history[5].id):
            assert rows[whole]["status"] == "complete"
            assert rows[whole]["metric_words"] == 1
    finally:
        reopened.close()


def test_a_stand_in_prompt_has_no_prompt_in_the_records_and_is_never_replayed(
    three_turns: tuple[ContextSession, list[Message]], data_dir: Path
) -> None:
    session, history = three_turns
    reopened = _damaged(data_dir, session, history[2])  # "Capital of Italy?"
    try:
        rows = {row["message_id"]: row for row in reopened.to_records()}
        assert rows[history[3].id]["prompt"] is None
        assert rows[history[3].id]["output"] == "Rome."  # the reply itself is whole
        branch = _branch_through(reopened, history[2].id)
        fake = ScriptedProvider()
        before = set(reopened.branches)
        with pytest.raises(StateError) as refused:
            reopened.replay(branch, provider=fake)
        text = str(refused.value)
        assert history[2].id in text
        assert f"damaged/{history[2].id}.json" in text
        assert "Restore the message's file from a backup" in text
        assert fake.requests == []
        assert set(reopened.branches) == before  # nothing made

        # Nor sent again after an edit before it, nor edited itself.
        path = [node.id for node in reopened.tree().path(branch)]
        assert path[0] == history[0].id  # the stand-in kept its parent: one chain
        reopened.switch(branch)  # the branch an edit of an earlier message goes on from
        with pytest.raises(StateError, match="a user turn after it"):
            reopened.counterfactual(history[0].id, "Capital of Spain?")
        with pytest.raises(StateError, match="a user turn sent again"):
            reopened.counterfactual("system", "Answer in French.")
        with pytest.raises(StateError, match="the message to edit"):
            reopened.counterfactual(history[2].id, "Capital of Spain?")
        assert set(reopened.branches) == before
    finally:
        reopened.close()


def test_a_sweep_cell_whose_answer_is_a_stand_in_is_no_answer(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    session = new_session(provider=ScriptedProvider().reply("Paris.").reply("Lyon."))
    sweep = session.sweep("Capital of France?", [{}], name="cap", progress=False).run(DEADLINE)
    cell = sweep.cells[0]
    session.send("And its second city?", branch=cell.branch).result(DEADLINE)
    answer = session.history(cell.branch)[1]
    fake = ScriptedProvider(strict=True)
    reopened = _damaged(data_dir, session, answer, fake)
    try:
        again = reopened.sweep("Capital of France?", [{}], name="cap", progress=False)
        again.run(DEADLINE)
        found = again.cells[0]
        assert found.status == "failed"
        assert found.error is not None
        assert "stand-in" in found.error
        assert f"damaged/{answer.id}.json" in found.error
        assert fake.requests == []
        with pytest.warns(StoreWarning, match="stand-in"):
            rows = again.to_records()
        mine = next(row for row in rows if row["message_id"] == answer.id)
        assert (mine["status"], mine["output"]) == ("unreadable", None)
        assert "stand-in" in mine["error"]
    finally:
        reopened.close()


def test_a_branch_ending_at_a_stand_in_reply_has_no_answer_in_stability(
    three_turns: tuple[ContextSession, list[Message]], data_dir: Path
) -> None:
    session, history = three_turns
    reopened = _damaged(data_dir, session, history[3])  # "Rome."
    try:
        reopened.branch("at-rome", from_message=history[3].id, switch=False)
        reopened.branch("at-paris", from_message=history[1].id, switch=False)
        found = reopened.stability(["at-rome", "at-paris"])
        assert found.total == 1  # only "Paris.": the placeholder is no answer
    finally:
        reopened.close()
