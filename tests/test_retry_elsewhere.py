"""retry() after a permanent failure, with the context open in another process too.

The failure is known only to the process whose turn failed. Once another process has
written to the branch, a retry there would replace that process's good reply with a
new answer to the failed question: it is refused, and nothing is written. A process
that follows the other's writes also stops reporting the stale failure as the
branch's state.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from session_ops_child import OpsChild
from test_session_support import DEADLINE, Recorder, seen

from cm_notebook.errors import PermanentProviderError, StateError
from cm_notebook.events import MessageAdded, StateChanged
from cm_notebook.fsm import State
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


@pytest.fixture
def failed(new_session: Callable[..., ContextSession]) -> ContextSession:
    """A session whose turn on ``main`` failed for good; its retry would answer
    ``RETRIED REPLY``."""
    provider = ScriptedProvider(strict=True).error("permanent").reply("RETRIED REPLY")
    return new_session(provider=provider)


@pytest.fixture
def other(data_dir: Path, failed: ContextSession) -> Iterator[OpsChild]:
    """Another process with the context open from before the failure on."""
    child = OpsChild(data_dir, failed.id)
    yield child
    child.close()


def _fail(session: ContextSession) -> None:
    with pytest.raises(PermanentProviderError):
        session.send("question from A").result(DEADLINE)
    assert session.state_of("main") is State.PERMANENT_FAILURE


def _contents(session: ContextSession, branch: str = "main") -> list[str]:
    return [m.content for m in session.history(branch)]


def test_a_retry_after_another_process_sent_on_the_branch_is_refused(
    failed: ContextSession, other: OpsChild
) -> None:
    _fail(failed)
    recorder = Recorder(failed)
    assert other.run(op="send", text="question from B") == "echo: question from B"
    # Its reply, as this process's follower relays it: the branch has moved on.
    recorder.wait(seen(MessageAdded, branch="main", role="assistant"))
    assert failed.state_of("main") is State.IDLE  # no longer the stale failure
    with pytest.raises(StateError, match="nothing to retry on branch 'main'"):
        failed.retry(branch="main")
    expected = ["question from A", "", "question from B", "echo: question from B"]
    assert _contents(failed) == expected
    assert len(failed.siblings(failed.history()[-1].id)) == 1  # not replaced


# Another process writing with the store alone: no signal tells this process's
# follower, so only the branch's head says it moved.
_STORE_WRITER = textwrap.dedent(
    """
    import sys, anyio
    from cm_notebook.model import Message
    from cm_notebook.store import FileStore

    async def write() -> None:
        async with FileStore(sys.argv[1]) as store:
            head = (await store.get_metadata(sys.argv[2])).branches["main"].head
            note = Message(role="user", parent_id=head, content="written elsewhere")
            await store.append_message(sys.argv[2], note, branch="main", expected_head=head)

    anyio.run(write)
    """
)


def test_a_retry_after_another_process_wrote_unannounced_is_refused_and_writes_nothing(
    data_dir: Path, failed: ContextSession
) -> None:
    _fail(failed)
    subprocess.run(
        [sys.executable, "-c", _STORE_WRITER, str(data_dir), failed.id],
        check=True,
        timeout=60,
    )
    before = failed.branches["main"].head
    recorder = Recorder(failed)
    with pytest.raises(StateError, match="branch 'main' moved on since this failure") as caught:
        failed.retry(branch="main")
    assert "send again or regenerate()" in str(caught.value)
    assert failed.branches["main"].head == before  # nothing rewound, nothing sent
    assert _contents(failed) == ["question from A", "", "written elsewhere"]
    # The failure is over here too, and the views are told so.
    assert failed.state_of("main") is State.IDLE
    recorder.wait(seen(StateChanged, branch="main", new=State.IDLE))
    # The branch takes a new turn as usual.
    assert failed.send("next").result(DEADLINE).content == "RETRIED REPLY"


def test_a_retry_after_another_process_only_followed_or_wrote_elsewhere_still_works(
    failed: ContextSession, other: OpsChild
) -> None:
    failed.branch("side", switch=False)
    recorder = Recorder(failed)  # this process announces no Idle on main: it failed
    _fail(failed)
    # The other process sends on another branch. The failed turn ended (in
    # PermanentFailure): the other process takes it for over, not for a turn whose
    # owner died, so it announces nothing on main.
    assert other.run(op="send", text="elsewhere", branch="side") == "echo: elsewhere"
    recorder.wait(seen(MessageAdded, branch="side", role="assistant"))
    assert not seen(StateChanged, branch="main", new=State.IDLE)(recorder.events)
    assert failed.state_of("main") is State.PERMANENT_FAILURE
    assert failed.retry(branch="main").result(DEADLINE).content == "RETRIED REPLY"
    assert _contents(failed) == ["question from A", "RETRIED REPLY"]
