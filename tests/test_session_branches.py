"""Branches as a tree of messages: fork, switch, edit (a sibling user message),
regenerate (a sibling reply), siblings, delete; all O(1) writes, checked on disk."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import (
    DEADLINE,
    Recorder,
    message_files,
    seen,
)

from cm_notebook.errors import (
    BranchExistsError,
    BranchNotFoundError,
    BusyError,
    InvalidInputError,
    StateError,
)
from cm_notebook.events import BranchCreated, BranchSwitched, BranchUpdated, ContentDelta, Event
from cm_notebook.fsm import State
from cm_notebook.sampling import REGENERATE_TEMPERATURE
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


@pytest.fixture
def fake() -> ScriptedProvider:
    return ScriptedProvider(strict=True)


@pytest.fixture
def session(
    data_dir: Path, fake: ScriptedProvider, new_session: Callable[..., ContextSession]
) -> ContextSession:
    """A context with two exchanges on main: Q1 A1 Q2 A2."""
    fake.reply("A1").reply("A2")
    made = new_session(provider=fake)
    made.send("Q1").result(DEADLINE)
    made.send("Q2").result(DEADLINE)
    return made


def contents(session: ContextSession, branch: str | None = None) -> list[str]:
    return [m.content for m in session.history(branch)]


def test_branch_forks_at_the_head_without_copying(
    session: ContextSession, fake: ScriptedProvider, data_dir: Path
) -> None:
    recorder = Recorder(session)
    files = len(message_files(data_dir, session))
    head = session.history()[-1].id
    created = session.branch("side", description="try another angle")
    assert (created.name, created.head, created.forked_from) == ("side", head, head)
    assert session.active_branch == "side"
    assert session.branches["side"].description == "try another angle"
    assert contents(session, "side") == contents(session, "main")
    assert len(message_files(data_dir, session)) == files  # nothing copied
    recorder.wait(seen(BranchSwitched, branch="side"))
    assert seen(BranchCreated, branch="side", head=head)(recorder.snapshot())

    fake.reply("side answer")
    session.send("Q3 on side").result(DEADLINE)
    assert contents(session) == ["Q1", "A1", "Q2", "A2", "Q3 on side", "side answer"]
    assert contents(session, "main") == ["Q1", "A1", "Q2", "A2"]


def test_branch_from_an_earlier_message_and_switch(
    session: ContextSession, fake: ScriptedProvider
) -> None:
    first_reply = session.history()[1]
    session.branch("early", from_message=first_reply.id, switch=False)
    assert session.active_branch == "main"
    assert contents(session, "early") == ["Q1", "A1"]
    session.switch("early")
    assert session.active_branch == "early"
    fake.reply("other A2")
    session.send("other Q2").result(DEADLINE)
    assert contents(session) == ["Q1", "A1", "other Q2", "other A2"]
    session.switch("main")
    assert contents(session) == ["Q1", "A1", "Q2", "A2"]
    # The two second questions are siblings in the tree.
    q2 = session.history()[2]
    assert [m.content for m in session.siblings(q2.id)] == ["Q2", "other Q2"]


def test_no_branch_is_forked_at_a_reply_still_being_generated(
    session: ContextSession, fake: ScriptedProvider
) -> None:
    # Its first request would show the model a reply it has not finished (empty, or cut
    # short), while the stored history would later show the whole of it.
    recorder = Recorder(session)
    fake.reply("an answer that takes a while to come", chunks="words", delay=0.05)
    turn = session.send("Q3")
    recorder.wait(seen(ContentDelta))
    prompt, reply = session.history()[-2:]
    assert reply.status.value == "streaming"
    with pytest.raises(BusyError, match="still being generated"):
        session.branch("at the head")
    with pytest.raises(BusyError, match="still being generated"):
        session.branch("at the reply", from_message=reply.id, switch=False)
    session.branch("at the prompt", from_message=prompt.id, switch=False)  # finished: fine
    turn.result(DEADLINE)
    session.branch("after", switch=False)
    assert contents(session, "after")[-1] == "an answer that takes a while to come"
    assert sorted(session.branches) == ["after", "at the prompt", "main"]


def test_branch_errors(session: ContextSession) -> None:
    with pytest.raises(BranchExistsError):
        session.branch("main")
    with pytest.raises(BranchNotFoundError):
        session.switch("missing")
    with pytest.raises(KeyError):
        session.branch("x", from_message="m01doesnotexist000000000")
    with pytest.raises(BranchNotFoundError):
        session.history("missing")
    assert list(session.branches) == ["main"]


def test_edit_makes_a_sibling_on_a_new_branch_and_replies(
    session: ContextSession, fake: ScriptedProvider, data_dir: Path
) -> None:
    files = len(message_files(data_dir, session))
    q1, a1, q2, _a2 = session.history()
    fake.reply("A2 for the edit")
    turn = session.edit(q2.id, "Q2, edited")
    reply = turn.result(DEADLINE)
    # Exactly two new messages: the edited question and its reply; nothing copied.
    assert len(message_files(data_dir, session)) == files + 2
    assert session.active_branch == "main-edit-1"
    assert turn.branch == "main-edit-1"
    assert contents(session) == ["Q1", "A1", "Q2, edited", "A2 for the edit"]
    edited = session.history()[2]
    assert edited.parent_id == a1.id
    assert [m.id for m in session.siblings(q2.id)] == [q2.id, edited.id]
    assert reply.parent_id == edited.id
    assert session.branches["main-edit-1"].forked_from == q2.id
    # The original conversation is untouched, and the model only saw the edited path.
    assert contents(session, "main") == ["Q1", "A1", "Q2", "A2"]
    assert [m.content for m in fake.last_request.messages] == ["Q1", "A1", "Q2, edited"]

    fake.reply("A1 for the edit")
    session.edit(q1.id, "Q1, edited", branch="root-edit").result(DEADLINE)
    assert contents(session) == ["Q1, edited", "A1 for the edit"]
    assert session.history()[0].parent_id is None
    assert [m.content for m in session.siblings(q1.id)] == ["Q1", "Q1, edited"]
    assert len(message_files(data_dir, session)) == files + 4
    assert set(session.branches) == {"main", "main-edit-1", "root-edit"}


def test_edit_refuses_an_existing_branch_name(session: ContextSession, data_dir: Path) -> None:
    q1 = session.history()[0]
    files = message_files(data_dir, session)
    with pytest.raises(BranchExistsError):
        session.edit(q1.id, "again", branch="main")
    assert message_files(data_dir, session) == files


def test_regenerate_adds_a_sibling_reply(
    session: ContextSession, fake: ScriptedProvider, data_dir: Path
) -> None:
    files = len(message_files(data_dir, session))
    old = session.history()[-1]
    fake.reply("A2, take two")
    recorder = Recorder(session)
    new = session.regenerate().result(DEADLINE)
    # The rewind to the prompt is a change of its own, signalled before the new reply.
    rewound = recorder.of(BranchUpdated)
    assert [(e.branch, e.head, e.changed) for e in rewound] == [("main", old.parent_id, ["head"])]
    assert recorder.events.index(rewound[0]) < recorder.types().index("MessageAdded")
    assert len(message_files(data_dir, session)) == files + 1
    assert new.parent_id == old.parent_id
    assert contents(session) == ["Q1", "A1", "Q2", "A2, take two"]
    assert [m.content for m in session.siblings(new.id)] == ["A2", "A2, take two"]
    assert session.active_branch == "main"
    # The model was asked the same question again, without the old answer.
    assert [m.content for m in fake.last_request.messages] == ["Q1", "A1", "Q2"]
    fake.reply("with params")
    again = session.regenerate(temperature=1.5).result(DEADLINE)
    assert again.metadata.parameters["temperature"] == 1.5
    assert len(session.siblings(new.id)) == 3


def test_a_fork_at_a_replaced_reply_answers_as_the_branch_it_was_written_on(
    session: ContextSession, fake: ScriptedProvider
) -> None:
    # A reply regenerate replaced is on no branch: its fork (or an edit after it)
    # takes the defaults of the branch that holds its nearest ancestor.
    session.branch("pirate", system="Talk like a pirate.", temperature=0.1)
    fake.reply("Arr").reply("Arr, again")
    session.send("Q3").result(DEADLINE)
    old = session.history()[-1]
    session.regenerate().result(DEADLINE)
    session.switch("main")
    session.branch("from-old", from_message=old.id)
    assert session.system_prompt_of("from-old") == "Talk like a pirate."
    assert session.branches["from-old"].params == {"temperature": 0.1}
    fake.reply("Aye")
    session.send("go on").result(DEADLINE)
    request = fake.last_request
    assert (request.messages[0].role, request.messages[0].content) == (
        "system",
        "Talk like a pirate.",
    )
    assert request.params["temperature"] == 0.1


def test_regenerate_samples_so_a_greedy_model_does_not_repeat_itself(
    session: ContextSession, fake: ScriptedProvider
) -> None:
    for n in range(5):
        fake.reply(f"take {n}")
    first = session.regenerate().result(DEADLINE)
    params = fake.last_request.params
    # A fresh seed and a temperature above zero, sent and stored alike.
    assert params["temperature"] == REGENERATE_TEMPERATURE > 0
    assert isinstance(params["seed"], int)
    assert first.metadata.parameters == dict(params)
    second = session.regenerate().result(DEADLINE)
    assert second.metadata.parameters["seed"] != first.metadata.parameters["seed"]
    # What the user chose is kept: in the call, or as the branch's default.
    session.regenerate(temperature=0, seed=7).result(DEADLINE)
    assert fake.last_request.params == {"temperature": 0, "seed": 7}
    session.branch("cool", temperature=0.1)
    session.regenerate().result(DEADLINE)
    assert fake.last_request.params["temperature"] == 0.1
    # A plain send is not sampled: it stays greedy on a greedy model.
    session.send("Q3").result(DEADLINE)
    assert fake.last_request.params == {"temperature": 0.1}


def test_regenerate_samples_a_fresh_seed_on_a_branch_with_a_seed_of_its_own(
    session: ContextSession, fake: ScriptedProvider
) -> None:
    # A branch's seed makes its sends reproducible; a regenerate resending it would
    # repeat the reply it is asked to replace.
    session.branch("study", seed=42, temperature=0.5)
    fake.reply("first")
    session.send("Name a colour.").result(DEADLINE)
    seeds = []
    for n in range(3):
        fake.reply(f"take {n}")
        session.regenerate().result(DEADLINE)
        seeds.append(fake.last_request.params["seed"])
        assert fake.last_request.params["temperature"] == 0.5  # the branch's, kept
    assert 42 not in seeds
    assert len(set(seeds)) == 3
    # A seed given to the regenerate itself is sent, to reproduce a sample.
    fake.reply("again")
    session.regenerate(seed=seeds[0]).result(DEADLINE)
    assert fake.last_request.params["seed"] == seeds[0]
    # Sends on the branch keep its seed.
    fake.reply("next")
    session.send("Another.").result(DEADLINE)
    assert fake.last_request.params == {"seed": 42, "temperature": 0.5}


def test_regenerate_on_an_empty_branch_is_refused(data_dir: Path) -> None:
    session = ContextSession.create(provider=ScriptedProvider(), data_dir=data_dir)
    with pytest.raises(StateError, match="no message"):
        session.regenerate()
    with pytest.raises(StateError, match="nothing to retry"):
        session.retry()
    with pytest.raises(InvalidInputError):
        session.regenerate(temperature=-1)


def test_delete_branch_keeps_the_messages(
    session: ContextSession, fake: ScriptedProvider, data_dir: Path
) -> None:
    session.branch("doomed")
    fake.reply("on doomed")
    reply = session.send("extra").result(DEADLINE)
    files = message_files(data_dir, session)
    with pytest.raises(StateError, match=r"session\.switch"):
        session.delete_branch("doomed")  # the active branch
    session.switch("main")
    deleted: list[str] = []
    done = threading.Event()

    def on_deleted(event: Event) -> None:
        deleted.append(event.branch or "")
        done.set()

    # Subscribed from another thread (a comm handler may run on one), filtered by kind.
    worker = threading.Thread(target=lambda: session.subscribe(on_deleted, kinds={"BranchDeleted"}))
    worker.start()
    worker.join()
    session.delete_branch("doomed")
    assert done.wait(DEADLINE)
    assert deleted == ["doomed"]
    assert list(session.branches) == ["main"]
    assert message_files(data_dir, session) == files
    assert session.get(reply.id).content == "on doomed"  # still in the tree
    with pytest.raises(BranchNotFoundError):
        session.delete_branch("doomed")
    reopened = ContextSession.open(session.id, data_dir=data_dir)
    assert list(reopened.branches) == ["main"]


def test_each_branch_has_its_own_turn(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider().hang(after_chunks=1, text="slow").reply("quick")
    session = new_session(provider=fake)
    recorder = Recorder(session)
    slow = session.send("first")
    recorder.wait(seen(ContentDelta, branch="main"))
    session.branch("other", from_message=session.history()[0].id)
    assert session.active_branch == "other"
    # "main" is busy, "other" is not.
    with pytest.raises(BusyError):
        session.send("blocked", branch="main")
    assert session.send("parallel").result(DEADLINE).content == "quick"
    assert session.state_of("other") is State.IDLE
    assert session.state_of("main") is State.STREAMING
    assert session.turn("main") is slow
    slow.cancel()
    assert slow.result(DEADLINE).content == "slow"
    assert contents(session, "other") == ["first", "parallel", "quick"]
