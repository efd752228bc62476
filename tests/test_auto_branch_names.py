"""The branches the package names itself (an edit's fork, a replay, a system prompt's
fork) get a valid name that neither is nor looks like an existing branch, whatever the
branch they come from is called: never an error about a name the user did not choose."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from store_helpers import TakenMeanwhile
from test_session_support import DEADLINE

from cm_notebook.errors import BranchExistsError
from cm_notebook.ids import MAX_BRANCH_NAME_LENGTH, branch_name_key, validate_branch_name
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider

#: A branch name as long as a name may be.
LONGEST = "experiment-" + "x" * (MAX_BRANCH_NAME_LENGTH - len("experiment-"))


def _is_new_and_distinct(session: ContextSession, name: str, before: set[str]) -> None:
    # Valid, new, and unlike every branch that was there before it.
    assert validate_branch_name(name) == name
    assert name not in before
    assert branch_name_key(name) not in {branch_name_key(other) for other in before}


@pytest.fixture
def on_longest(new_session: Callable[..., ContextSession]) -> ContextSession:
    """A context with one exchange on a branch whose name is 100 characters long."""
    session = new_session(provider=ScriptedProvider())
    session.branch(LONGEST)
    session.send("hello", branch=LONGEST).result(DEADLINE)
    return session


def test_an_edit_on_a_branch_with_the_longest_name_forks_a_valid_branch(
    on_longest: ContextSession,
) -> None:
    before = set(on_longest.branches)
    first = on_longest.history(LONGEST)[0]
    turn = on_longest.edit(first.id, "edited", from_branch=LONGEST)
    turn.result(DEADLINE)
    _is_new_and_distinct(on_longest, turn.branch, before)
    assert turn.branch.startswith("experiment-xxx")
    assert [m.content for m in on_longest.history(turn.branch)] == ["edited", "echo: edited"]


def test_a_replay_of_a_branch_with_the_longest_name_writes_a_valid_branch(
    on_longest: ContextSession,
) -> None:
    before = set(on_longest.branches)
    replay = on_longest.replay(LONGEST)
    replay.result(DEADLINE)
    _is_new_and_distinct(on_longest, replay.branch, before)
    assert [m.content for m in on_longest.history(replay.branch)] == ["hello", "echo: hello"]


def test_a_new_system_prompt_on_a_branch_with_the_longest_name_forks_a_valid_branch(
    on_longest: ContextSession,
) -> None:
    before = set(on_longest.branches)
    fork = on_longest.edit_system("Talk like a pirate.", branch=LONGEST)
    _is_new_and_distinct(on_longest, fork.name, before)
    assert on_longest.system_prompt_of(fork.name) == "Talk like a pirate."


def test_names_picked_again_and_again_stay_distinct(on_longest: ContextSession) -> None:
    # Every fork of the cut stem is numbered on: the tenth still fits and is new.
    first = on_longest.history(LONGEST)[0]
    for _ in range(10):
        before = set(on_longest.branches)
        turn = on_longest.edit(first.id, "again", from_branch=LONGEST)
        turn.result(DEADLINE)
        _is_new_and_distinct(on_longest, turn.branch, before)


def test_an_edit_skips_a_name_that_looks_like_an_existing_branch(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.send("hi").result(DEADLINE)
    # "main-edit-1" would be the first choice, then "main-edit-2": these differ from
    # them only in case.
    session.branch("MAIN-edit-1", switch=False)
    session.branch("Main-Edit-2", switch=False)
    before = set(session.branches)
    turn = session.edit(session.history("main")[0].id, "other", from_branch="main")
    turn.result(DEADLINE)
    _is_new_and_distinct(session, turn.branch, before)
    assert turn.branch == "main-edit-3"


def test_a_replay_skips_a_name_that_looks_like_an_existing_branch(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.send("hi").result(DEADLINE)
    session.branch("Main-Replay-1", switch=False)
    before = set(session.branches)
    replay = session.replay("main")
    replay.result(DEADLINE)
    _is_new_and_distinct(session, replay.branch, before)
    assert replay.branch == "main-replay-2"


def test_a_name_that_fits_keeps_its_whole_stem(new_session: Callable[..., ContextSession]) -> None:
    # Cut only as far as the limit needs: "<95 characters>-cf-1" is 100, and fits.
    session = new_session(provider=ScriptedProvider())
    name = LONGEST[:95]
    session.branch(name)
    session.send("hello", branch=name).result(DEADLINE)
    replay = session.counterfactual(session.history(name)[0].id, "changed")
    replay.result(DEADLINE)
    assert replay.branch == f"{name}-cf-1"


def test_a_fan_out_from_a_branch_with_the_longest_name_names_its_arms_by_variant(
    on_longest: ContextSession,
) -> None:
    # The arms must still say which variant each is: the base name is cut, not the label.
    before = set(on_longest.branches)
    fan = on_longest.fan_out(
        "Why?",
        [{"system": "Answer in five words."}, {"system": "Answer like a pirate."}],
        branch=LONGEST,
    )
    fan.result(DEADLINE)
    for name in fan.branches:
        _is_new_and_distinct(on_longest, name, before)
        assert name.startswith("experiment-xxx")
    assert [name[-20:] for name in fan.branches] == [
        "answer-in-five-words",
        "answer-like-a-pirate",
    ]


def test_a_name_another_process_takes_first_is_chosen_again(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    # Each operation's first free name is created elsewhere just before its own
    # creation (the same operation in another process at the same moment): it takes
    # the next one, as it would have in one process. A name the user gave is refused.
    inner = FileStore(data_dir)
    taken = {"main-replay-1", "main-cf-1", "main-cf-2", "main-system-1", "mine"}
    store = TakenMeanwhile(inner, data_dir, taken)
    session = new_session(provider=ScriptedProvider(), store=store)
    try:
        session.send("hi").result(DEADLINE)
        first = session.history()[0].id
        assert session.replay("main").result(DEADLINE).other == "main-replay-2"
        assert session.counterfactual(first, "edited").result(DEADLINE).other == "main-cf-3"
        session.switch("main")
        replay = session.counterfactual("system", "Be brief.")  # from the root
        assert replay.result(DEADLINE).other == "main-cf-4"
        session.switch("main")
        assert session.edit_system("Be terse.", branch="main").name == "main-system-2"
        with pytest.raises(BranchExistsError, match="'mine'"):
            session.replay("main", name="mine")
        assert store.taken == ["main-replay-1", "main-cf-1", "main-cf-2", "main-system-1", "mine"]
    finally:
        session.close()  # before the store it writes through
        anyio.run(inner.close)
