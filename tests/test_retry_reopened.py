"""retry() of a failure this process did not see: the context reopened since (a
restarted kernel, once the key is set), or the turn failed in another process.

The failure is on disk (the branch's head is the failed reply, with the parameters it
was asked with), so the request is made again: the branch's provider, the failed
reply's parameters. Nothing else counts as a failure to retry.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
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
    did_not_fail = r"its last reply did not fail \(status 'complete'\); use regenerate\(\)"
    with pytest.raises(StateError, match=did_not_fail):
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


def _dies_waiting_to_retry(data_dir: Path) -> str:
    # A real process whose reply's first try fails (a 503 after "Paris is the"), killed
    # (SIGKILL, as a kernel restart kills it) while it waits to try again.
    code = textwrap.dedent(
        f"""
        import time
        from cm_notebook.fsm import State
        from cm_notebook.session import ContextSession
        from cm_notebook.testing import ScriptedProvider

        model = ScriptedProvider().error(
            "transient", after_chunks=2, text="Paris is the", message="503", retry_after=60
        )
        session = ContextSession.create(
            "restart in backoff", data_dir={str(data_dir)!r}, provider=model
        )
        session.send("What is the capital of France?", temperature=0.3)
        while session.state is not State.TRANSIENT_FAILURE:
            time.sleep(0.01)
        print(session.id, flush=True)
        time.sleep(600)
        """
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as child:
        try:
            assert child.stdout is not None
            context_id = child.stdout.readline().strip()
            assert context_id, "the child ended before its reply failed"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(DEADLINE)
    return context_id


def test_a_reply_whose_process_died_waiting_to_retry_is_retried(data_dir: Path) -> None:
    context_id = _dies_waiting_to_retry(data_dir)
    working = ScriptedProvider().reply("Paris is the capital.")
    with ContextSession.open(context_id, data_dir=data_dir, provider=working) as session:
        failed = session.history()[-1]
        assert failed.status is MessageStatus.INTERRUPTED  # its writer died
        assert [a["text"] for a in failed.metadata.failed_attempts] == ["Paris is the"]
        reply = session.retry().result(DEADLINE)
        assert reply.content == "Paris is the capital."
        assert working.last_request.params["temperature"] == 0.3  # asked as it was
        assert [m.id for m in session.siblings(reply.id)] == [failed.id, reply.id]


def test_a_reply_stopped_waiting_to_retry_is_retried_one_stopped_otherwise_is_not(
    new_session: Callable[..., ContextSession],
) -> None:
    model = ScriptedProvider().error("transient", after_chunks=1, text="Par", retry_after=60)
    model.hang(after_chunks=1, text="Lyon").reply("Paris.")
    session = new_session(provider=model)
    recorder = Recorder(session)
    turn = session.send("Capital?")
    recorder.wait(seen(StateChanged, branch="main", new=State.TRANSIENT_FAILURE))
    turn.cancel()  # the Stop button while it waits to try again
    assert turn.result(DEADLINE).status is MessageStatus.INTERRUPTED
    stopped = session.retry()  # it did fail: a try of it failed
    deadline = time.monotonic() + DEADLINE
    while not stopped.text:  # poll until the new reply is under way, with a deadline
        assert time.monotonic() < deadline
        time.sleep(0.005)
    stopped.cancel()  # stopped, and no try of it failed
    assert stopped.result(DEADLINE).status is MessageStatus.INTERRUPTED
    with pytest.raises(StateError) as refused:
        session.retry()
    assert "was stopped before it finished (status 'interrupted'), no try of it failed" in str(
        refused.value
    )
    assert "use regenerate() for a new reply" in str(refused.value)
    assert session.regenerate().result(DEADLINE).content == "Paris."
