"""Branch names the package chooses, with several processes choosing at the same moment.

Each process reads the same branches and picks the same first free name; whichever
creates it second must not fail with an error about a name the user never gave: it
takes the next free one, as it would have in one process. A name the user gave is
still refused when another process took it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from session_ops_child import OpsChild
from test_session_support import DEADLINE

from cm_notebook._auto_names import AUTO_NAME_TRIES, NamePicks
from cm_notebook.errors import BranchExistsError, BusyError
from cm_notebook.ids import branch_name_key
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

#: Processes at once, and rounds of one operation each: a name clash without the fix
#: is then all but certain (in one round of four, most of them clashed).
PROCESSES = 4
ROUNDS = 2


@pytest.fixture
def context(new_session: Callable[..., ContextSession]) -> ContextSession:
    """A context with two exchanges on ``main``."""
    session = new_session(provider=ScriptedProvider())
    session.send("root").result(DEADLINE)
    session.send("second").result(DEADLINE)
    return session


@pytest.fixture
def others(data_dir: Path, context: ContextSession) -> Iterator[list[OpsChild]]:
    """Processes with the context open."""
    children: list[OpsChild] = []
    try:
        for _ in range(PROCESSES):
            children.append(OpsChild(data_dir, context.id))
        yield children
    finally:
        for child in children:
            child.close()


def _at_once(children: list[OpsChild], **command: object) -> list[dict[str, Any]]:
    # Every process is told first, then every answer read: they run together.
    for child in children:
        child.tell(**command)
    return [child.answer() for child in children]


def _distinct(names: list[str]) -> None:
    assert len({branch_name_key(name) for name in names}) == len(names), names


def test_edits_at_once_in_several_processes_each_get_a_branch(
    context: ContextSession, others: list[OpsChild]
) -> None:
    first = context.history()[0]
    made: list[str] = []
    for round_ in range(ROUNDS):
        outcomes = _at_once(others, op="edit", message=first.id, text=f"edited {round_}")
        assert all("ok" in outcome for outcome in outcomes), outcomes
        made += [outcome["ok"][0] for outcome in outcomes]
    _distinct(made)
    assert all(name.startswith("main-edit-") for name in made)
    assert set(context.branch_names) == {"main", *made}
    for name in made:
        assert [m.role for m in context.history(name)] == ["user", "assistant"]


def test_fan_outs_at_once_in_several_processes_each_get_their_arms(
    context: ContextSession, others: list[OpsChild]
) -> None:
    variants = [{"temperature": 0.1}, {"temperature": 0.9}]
    made: list[str] = []
    for round_ in range(ROUNDS):
        outcomes = _at_once(others, op="fan_out", text=f"fan {round_}", variants=variants)
        assert all("ok" in outcome for outcome in outcomes), outcomes
        for outcome in outcomes:
            low, high = outcome["ok"]
            assert low.startswith("main-temperature-0.1")
            assert high.startswith("main-temperature-0.9")
            made += [low, high]
    _distinct(made)
    assert set(context.branch_names) == {"main", *made}
    for name in made:
        assert context.history(name)[-1].content.startswith("echo: fan ")


def test_replays_at_once_in_several_processes_each_get_a_branch(
    context: ContextSession, others: list[OpsChild]
) -> None:
    made: list[str] = []
    for _round in range(ROUNDS):
        outcomes = _at_once(others, op="replay", branch="main")
        assert all("ok" in outcome for outcome in outcomes), outcomes
        made += [outcome["ok"] for outcome in outcomes]
    _distinct(made)
    assert all(name.startswith("main-replay-") for name in made)
    assert set(context.branch_names) == {"main", *made}
    for name in made:
        assert [m.content for m in context.history(name)] == [
            "root",
            "echo: root",
            "second",
            "echo: second",
        ]


def test_counterfactuals_at_once_in_several_processes_each_get_a_branch(
    context: ContextSession, others: list[OpsChild]
) -> None:
    first = context.history()[0]
    made: list[str] = []
    for round_ in range(ROUNDS):
        outcomes = _at_once(others, op="counterfactual", message=first.id, text=f"cf {round_}")
        assert all("ok" in outcome for outcome in outcomes), outcomes
        made += [outcome["ok"] for outcome in outcomes]
    _distinct(made)
    assert all(name.startswith("main-cf-") for name in made)
    assert set(context.branch_names) == {"main", *made}
    for name in made:
        contents = [m.content for m in context.history(name)]
        assert contents[0].startswith("cf ")
        assert contents[1:] == ["echo: " + contents[0], "second", "echo: second"]


def test_new_system_prompts_at_once_in_several_processes_each_fork_a_branch(
    context: ContextSession, others: list[OpsChild]
) -> None:
    made: list[str] = []
    for round_ in range(ROUNDS):
        texts = [f"prompt {round_}.{n}" for n in range(len(others))]
        for child, text in zip(others, texts, strict=True):
            child.tell(op="edit_system", text=text, branch="main")
        outcomes = [child.answer() for child in others]
        assert all("ok" in outcome for outcome in outcomes), outcomes
        forks = [outcome["ok"] for outcome in outcomes]
        assert [context.system_prompt_of(fork) for fork in forks] == texts
        made += forks
    _distinct(made)
    assert all(name.startswith("main-system-") for name in made)
    assert set(context.branch_names) == {"main", *made}


def test_a_branch_name_the_user_gave_is_still_refused_when_taken_elsewhere(
    context: ContextSession, others: list[OpsChild]
) -> None:
    first = context.history()[0]
    edits = _at_once(others, op="edit", message=first.id, text="mine", branch="chosen")
    assert sum("ok" in outcome for outcome in edits) == 1, edits
    # Refused as before: the name is in use there, or made already; not chosen again.
    for outcome in (outcome for outcome in edits if "err" in outcome):
        message = str(outcome["msg"])
        assert outcome["err"] in ("BranchExistsError", "BusyError"), outcome
        assert "'chosen' is in use by another writer" in message or (
            "already has a branch 'chosen'" in message
        ), outcome
    replays = _at_once(others, op="replay", branch="main", name="again")
    assert sum("ok" in outcome for outcome in replays) == 1, replays
    assert all(o.get("err") == "BranchExistsError" for o in replays if "err" in o), replays
    arms = [{"temperature": 0.1, "branch": "arm"}]
    fans = _at_once(others, op="fan_out", text="fan", variants=arms)
    assert sum("ok" in outcome for outcome in fans) == 1, fans
    assert all(o.get("err") == "BranchExistsError" for o in fans if "err" in o), fans
    assert set(context.branch_names) == {"main", "chosen", "again", "arm"}


def test_giving_up_after_too_many_names_taken_says_what_to_do() -> None:
    # Other processes taking name after name of one stem: the error says why and
    # what to do, rather than naming a branch the user never chose as taken.
    picks = NamePicks("the edit")
    taken = BranchExistsError("taken")
    for n in range(1, AUTO_NAME_TRIES):
        picks.taken(f"main-edit-{n}", taken)
        assert picks.refuses(f"MAIN-edit-{n}")  # by look, as branches are compared
    with pytest.raises(BusyError, match="took each of the 20 branch names chosen for the edit"):
        picks.taken(f"main-edit-{AUTO_NAME_TRIES}", taken)
