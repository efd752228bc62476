"""A hypothesis state machine over the whole session: random conversations stay valid.

Random sequences of sends (text replies, tool calls, transient then successful replies,
permanent failures), approvals, denials, cancellations, forks, switches, edits,
regenerations and reopenings, on real files through the public API in script mode.
After every step, with no turn running, the invariants that views and providers rely
on must hold:

- no stored message is left ``streaming``;
- on every branch's path, each assistant tool call is answered by exactly one tool
  message, and tool messages answer only calls made just before them;
- every branch is ``Idle`` or ``PermanentFailure``;
- signal numbers are consecutive;
- a fresh ``ContextSession.open`` sees the same branches and paths.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from cm_notebook import ContextSession, tool
from cm_notebook.errors import PermanentProviderError, StateError
from cm_notebook.fsm import State
from cm_notebook.model import Message, MessageStatus
from cm_notebook.retry import RetryPolicy
from cm_notebook.testing import ScriptedProvider
from cm_notebook.turn import Turn

DEADLINE = 10.0
FAST_RETRY = RetryPolicy(initial_delay=0.001, max_delay=0.002, max_attempts=2, jitter=0.0)


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return f"value of {key}"


class SessionMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="cm-stateful-"))
        self.model = ScriptedProvider(strict=True)
        self.session = ContextSession.create(
            "stateful",
            provider=self.model,
            data_dir=self.dir,
            tools=[lookup],
            retry=FAST_RETRY,
        )
        self.seqs: list[int] = []
        self.session.subscribe(lambda event: self.seqs.append(event.seq))
        self.turn: Turn | None = None
        self.counter = 0

    def teardown(self) -> None:
        self.session.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- helpers -------------------------------------------------------------------------

    def _settle(self) -> None:
        """Wait until the running turn is done or waits for a decision."""
        turn = self.turn
        if turn is None:
            return
        deadline = time.monotonic() + DEADLINE
        while not turn.done() and not self.session.pending_tool_calls:
            assert time.monotonic() < deadline, "the turn neither finished nor asked"
            time.sleep(0.002)
        if turn.done():
            self.turn = None
            if isinstance(turn.exception(), PermanentProviderError):
                return
            assert turn.exception() is None, turn.exception()

    def _script(self, kind: str) -> None:
        self.counter += 1
        n = self.counter
        if kind == "text":
            self.model.reply(f"reply {n}", chunks="words")
        elif kind == "tool":
            self.model.tool_call("lookup", {"key": f"k{n}"}).reply(f"looked up {n}")
        elif kind == "flaky":
            self.model.error("transient", after_chunks=1, text=f"partial {n} words")
            self.model.reply(f"recovered {n}")
        else:
            self.model.error("permanent", message=f"refused {n}")

    @property
    def idle(self) -> bool:
        return self.turn is None

    # -- rules ---------------------------------------------------------------------------

    @precondition(lambda self: self.idle)
    @rule(kind=st.sampled_from(["text", "text", "tool", "flaky", "fail"]))
    def send(self, kind: str) -> None:
        self._script(kind)
        self.turn = self.session.send(f"message {self.counter}")
        self._settle()

    @precondition(lambda self: self.turn is not None and bool(self.session.pending_tool_calls))
    @rule(approve=st.booleans())
    def decide(self, approve: bool) -> None:
        if approve:
            self.session.approve()
        else:
            self.session.deny(reason="not now")
        self._settle()

    @precondition(lambda self: self.turn is not None)
    @rule()
    def cancel(self) -> None:
        assert self.turn is not None
        self.turn.cancel()
        self.turn.result(DEADLINE)
        self.turn = None
        # A reply scripted for the cancelled turn may still be queued; the next request
        # takes it, which is just another valid conversation.

    @precondition(lambda self: self.idle)
    @rule()
    def fork(self) -> None:
        self.counter += 1
        self.session.branch(f"b{self.counter}")

    @precondition(lambda self: self.idle)
    @rule(data=st.data())
    def switch(self, data: st.DataObject) -> None:
        self.session.switch(data.draw(st.sampled_from(sorted(self.session.branches))))

    @precondition(lambda self: self.idle)
    @rule(data=st.data())
    def edit(self, data: st.DataObject) -> None:
        users = [m for m in self.session.history() if m.role == "user"]
        if not users:
            return
        target = data.draw(st.sampled_from(users))
        self._script("text")
        self.turn = self.session.edit(target.id, f"edited {self.counter}")
        self._settle()

    @precondition(lambda self: self.idle)
    @rule()
    def regenerate(self) -> None:
        self._script("text")
        try:
            self.turn = self.session.regenerate()
        except StateError:  # nothing to reply to on this branch (its reply stays queued)
            return
        self._settle()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def signals_are_numbered_consecutively(self) -> None:
        assert self.seqs == list(range(1, len(self.seqs) + 1))

    @precondition(lambda self: self.idle)
    @invariant()
    def the_tree_is_valid_on_every_branch(self) -> None:
        session = self.session
        for name in session.branches:
            assert session.state_of(name) in (State.IDLE, State.PERMANENT_FAILURE)
            _check_path(session.history(name))

    @precondition(lambda self: self.idle)
    @invariant()
    def a_fresh_open_sees_the_same_conversation(self) -> None:
        again = ContextSession.open(self.session.id, data_dir=self.dir)
        try:
            assert again.branches == self.session.branches
            for name in again.branches:
                assert [m.id for m in again.history(name)] == [
                    m.id for m in self.session.history(name)
                ]
        finally:
            again.close()


def _check_path(path: list[Message]) -> None:
    open_calls: list[str] = []
    for message in path:
        assert message.status is not MessageStatus.STREAMING, message
        if message.role == "tool":
            assert message.tool_call_id in open_calls, (message.tool_call_id, open_calls)
            open_calls.remove(message.tool_call_id)
            continue
        assert not open_calls, f"tool calls {open_calls} were never answered"
        open_calls = [call.id for call in message.tool_calls]
    assert not open_calls, f"tool calls {open_calls} were never answered"


TestSessionMachine = SessionMachine.TestCase
TestSessionMachine.settings = settings(
    max_examples=25,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
