"""What the views' fork and edit rely on: a branch made from a branch keeps its settings.

``session.branch()`` forked from a message of a branch (or from its head) inherits that
branch's system prompt, provider and parameters, as an edit and a fan-out arm do; what
the call gives wins. ``session.edit()`` answers as the branch holding the message.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cm_notebook import ContextSession
from cm_notebook.errors import InvalidInputError
from cm_notebook.testing import ScriptedProvider

DEADLINE = 30.0


@pytest.fixture
def session(tmp_path: Path) -> ContextSession:
    opened = ContextSession.create(provider=ScriptedProvider(), data_dir=tmp_path)
    opened.branch("pirate", system="Answer like a pirate.", top_p=0.5)
    opened.send("Ahoy?").result(DEADLINE)
    opened.switch("main")
    return opened


def test_a_fork_from_a_branchs_message_inherits_its_settings(session: ContextSession) -> None:
    reply = session.history("pirate")[-1]
    session.branch("fork", reply.id, switch=False)  # main is active and lacks the reply
    assert session.system_prompt_of("fork") == "Answer like a pirate."
    assert session.branches["fork"].params == {"top_p": 0.5}
    session.branch("at-head", from_branch="pirate", switch=False)
    assert session.branches["at-head"].head == reply.id
    assert session.system_prompt_of("at-head") == "Answer like a pirate."
    session.close()


def test_what_the_fork_gives_wins_over_what_it_inherits(session: ContextSession) -> None:
    reply = session.history("pirate")[-1]
    session.branch("plain", reply.id, system="", temperature=0.1, switch=False)
    assert session.system_prompt_of("plain") is None or session.system_prompt_of("plain") == ""
    assert session.branches["plain"].params == {"top_p": 0.5, "temperature": 0.1}
    with pytest.raises(InvalidInputError, match="not on branch"):
        session.branch("wrong", reply.id, from_branch="main", switch=False)
    session.close()


def test_an_edit_answers_as_the_branch_that_holds_the_message(session: ContextSession) -> None:
    question = session.history("pirate")[-2]
    assert session.active_branch == "main"
    edited = session.edit(question.id, "Ahoy there?").result(DEADLINE)
    assert session.active_branch == "pirate-edit-1"
    assert edited.metadata.system_prompt == "Answer like a pirate."
    assert session.branches["pirate-edit-1"].params == {"top_p": 0.5}
    session.close()
