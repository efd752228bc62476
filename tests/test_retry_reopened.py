"""retry() of a failure this process did not see: the context reopened since (a
restarted kernel, once the key is set), or the turn failed in another process.

The failure is on disk (the branch's head is the failed reply, with the parameters it
was asked with), so the request is made again: the branch's provider, the failed
reply's parameters. Nothing else counts as a failure to retry.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from session_ops_child import OpsChild
from test_session_support import DEADLINE, Recorder, seen

from cm_notebook.errors import PermanentProviderError, StateError
from cm_notebook.events import StateChanged
from cm_notebook.fsm import State
from cm_notebook.model import MessageStatus
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def _failed_context(data_dir: Path) -> str:
    session = ContextSession.create(
        "keys", provider=ScriptedProvider(strict=True).error("permanent"), data_dir=data_dir
    )
    with session:
        with pytest.raises(PermanentProviderError):
            session.send("question", temperature=0.5).result(DEADLINE)
        return session.id


@pytest.fixture
def reopened(data_dir: Path) -> Iterator[tuple[ContextSession, ScriptedProvider]]:
    """A context whose reply failed for good, reopened with a provider that answers."""
    context_id = _failed_context(data_dir)
    working = ScriptedProvider().reply("ANSWER")  # then echoes
    with ContextSession.open(context_id, data_dir=data_dir, provider=working) as session:
        yield session, working


def test_a_failure_from_before_the_context_was_reopened_is_retried(
    reopened: tuple[ContextSession, ScriptedProvider],
) -> None:
    session, working = reopened
    # Said as the failure left it (not Idle, which a client polling for the end of a
    # turn would read as done).
    assert session.state_of("main") is State.PERMANENT_FAILURE
    failed = session.history()[-1]
    assert failed.status is MessageStatus.ERROR
    recorder = Recorder(session)
    reply = session.retry().result(DEADLINE)
    assert reply.content == "ANSWER"
    # Asked as it was: the same parameters, the same question.
    assert working.last_request.params["temperature"] == 0.5
    assert [m.content for m in session.history()] == ["question", "ANSWER"]
    assert [m.id for m in session.siblings(reply.id)] == [failed.id, reply.id]
    # The views hear the failure taken up, then the turn as usual.
    recorder.wait(seen(StateChanged, branch="main", old=State.IDLE, new=State.PERMANENT_FAILURE))
    recorder.wait(seen(StateChanged, branch="main", new=State.IDLE))
    assert session.state_of("main") is State.IDLE


def test_a_failure_found_on_disk_is_over_once_the_branch_moves_on(
    reopened: tuple[ContextSession, ScriptedProvider],
) -> None:
    session, _ = reopened
    session.branch("side", switch=False)  # a fork at the failed reply: failed too
    assert session.state_of("side") is State.PERMANENT_FAILURE
    session.send("something else").result(DEADLINE)
    assert session.state_of("main") is State.IDLE
    assert session.state_of("side") is State.PERMANENT_FAILURE
    session.delete_branch("side")
    assert session.state_of("side") is State.IDLE  # no such branch: nothing failed


def test_only_a_failed_reply_at_the_head_is_retried(
    reopened: tuple[ContextSession, ScriptedProvider],
) -> None:
    session, _ = reopened
    session.retry().result(DEADLINE)
    head = session.branches["main"].head
    with pytest.raises(StateError, match=r"its last reply did not fail; use regenerate\(\)"):
        session.retry()
    assert session.branches["main"].head == head  # nothing rewound
    session.send("and now?").result(DEADLINE)
    session.branch("side", switch=False)
    with pytest.raises(StateError, match="nothing to retry on branch 'side'"):
        session.retry(branch="side")


def test_another_process_retries_a_failure_it_only_followed(data_dir: Path) -> None:
    session = ContextSession.create(
        "shared", provider=ScriptedProvider(strict=True).error("permanent"), data_dir=data_dir
    )
    with session:
        other = OpsChild(data_dir, session.id)
        try:
            with pytest.raises(PermanentProviderError):
                session.send("question from A").result(DEADLINE)
            recorder = Recorder(session)
            # The other process (a second kernel, the server) echoes.
            assert other.run(op="retry", branch="main") == "echo: question from A"
            recorder.wait(seen(StateChanged, branch="main", new=State.IDLE))
            assert session.state_of("main") is State.IDLE
            assert [m.content for m in session.history()] == [
                "question from A",
                "echo: question from A",
            ]
            # Nothing failed any more: neither process retries.
            with pytest.raises(StateError, match="nothing to retry"):
                session.retry()
            other.tell(op="retry", branch="main")
            assert other.answer()["err"] == "StateError"
        finally:
            other.close()
