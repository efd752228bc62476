"""Errors name the mistake first, and in a notebook of magics give remedies in the
magics' terms (a magic has no ``turn`` and no ``session`` variable)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from IPython.core.error import UsageError

from cm_notebook._claims import turn_running
from cm_notebook.errors import BranchNotFoundError, BusyError, InvalidInputError, StateError
from cm_notebook.magics._remedies import said, translated
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def test_retry_on_a_branch_that_does_not_exist_says_so(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider())
    with pytest.raises(BranchNotFoundError, match="there is no branch 'nosuch'"):
        session.retry(branch="nosuch")


def test_compare_names_an_unknown_branch_before_counting(
    new_session: Callable[..., ContextSession],
) -> None:
    pytest.importorskip("anywidget")
    from cm_notebook.widgets import CompareView

    session = new_session(provider=ScriptedProvider())
    with pytest.raises(InvalidInputError, match="there is no branch 'nosuch'"):
        CompareView(session, "nosuch")


@pytest.mark.parametrize(
    ("error", "says", "not_said"),
    [
        (turn_running("main"), "`%cm stop --branch main`", "session."),
        # Not the active branch: `%cm stop` alone would stop the active one's reply.
        (turn_running("side"), "`%cm stop --branch side`", "`%cm stop`,"),
        (turn_running("side", stopping=True), "run the cell again in a moment", "session."),
        (
            StateError(
                "nothing to retry on branch 'main': its state is Idle; use regenerate() "
                "for a new reply"
            ),
            "send again for a new reply",
            "regenerate()",
        ),
        (
            BusyError(
                "message 'm1' is still being generated, so a branch forked at it would build "
                "on an unfinished reply. Wait for the turn to finish (await it), or fork at "
                "an earlier message (from_message=...)."
            ),
            "(--from MESSAGE_ID)",
            "from_message",
        ),
        (
            InvalidInputError(
                "compare needs two or more branches, got ['main']; create one with "
                "session.branch(name) or session.fan_out(...)"
            ),
            "`%cm branch NAME`",
            "session.",
        ),
    ],
)
def test_remedies_are_given_as_magics(error: Exception, says: str, not_said: str) -> None:
    with pytest.raises(UsageError) as caught, translated():
        raise error
    assert says in str(caught.value)
    assert not_said not in str(caught.value)


def test_a_closed_session_s_remedy_names_the_magic_with_its_id(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.close()
    with pytest.raises(UsageError) as caught, translated():
        session.send("hello")
    assert f"make it current again with `%cm use {session.id}`" in str(caught.value)
    assert "ContextSession.open" not in str(caught.value)


def test_a_deleted_context_and_a_taken_branch_name_are_said_as_magics(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    # The store's own errors, as a magic meets them (the current context deleted by
    # `cm-notebook rm` in a terminal; `%cm branch main`): no Python call to make.
    session = new_session(provider=ScriptedProvider())
    with pytest.raises(UsageError) as taken, translated():
        session.branch("main")
    assert str(taken.value).endswith("already has a branch 'main'; pick another name.")
    with pytest.raises(UsageError) as gone, translated():
        ContextSession.open("c-deleted-meanwhile", data_dir=data_dir)
    said = str(gone.value)
    assert "It may have been deleted: `%cm ls` lists the stored contexts" in said
    assert "FileStore" not in said


def test_a_view_says_a_usage_error_in_its_own_words() -> None:
    # A queued cell whose send failed showed `not sent: UsageError("...")`.
    assert (
        said(UsageError("{x} in the cell: no variable 'x'")) == "{x} in the cell: no variable 'x'"
    )
    assert said(RuntimeError("boom")) == "RuntimeError('boom')"


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (turn_running("my branch"), "stop it with `%cm stop --branch 'my branch'`,"),
        (
            BusyError(
                "branch 'my branch' is in use by another writer: a reply is being generated "
                "there. Wait for it to finish and try again, stop it "
                "(session.stop(branch='my branch')), or work on another branch "
                "(session.branch(name))."
            ),
            "stop it with `%cm stop --branch 'my branch'`, or work on another branch",
        ),
        (
            BusyError(
                "a reply is still being generated on branch 'my branch' under its current "
                "reply: wait for it, or stop it with session.stop(branch='my branch')"
            ),
            "stop it with `%cm stop --branch 'my branch'`",
        ),
    ],
)
def test_a_branch_name_in_a_remedy_is_quoted_to_paste(error: Exception, says: str) -> None:
    # `%cm stop --branch my branch` would be refused: "branch" is one more word.
    with pytest.raises(UsageError) as caught, translated():
        raise error
    assert says in str(caught.value)
