"""Edges of the turn engine: a provider (or store) that fails in a way it should not,
a tool taken away while its call waits, retries after a tool round, cancelling in every
state, and what a view sees (events, stored text) along the way.

Every check of the tree on disk reopens the context with a fresh
:meth:`ContextSession.open`, so it reads what was written, not what the session holds."""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from test_session_support import DEADLINE, Recorder, entered, roles, seen

from cm_notebook.errors import (
    PermanentProviderError,
    StoreError,
    ToolCallNotFoundError,
    ToolError,
    TransientProviderError,
)
from cm_notebook.events import (
    ContentDelta,
    ErrorReported,
    Event,
    MessageAdded,
    MessageCompleted,
    StateChanged,
    ToolApprovalRequested,
    ToolCallResolved,
)
from cm_notebook.fsm import State
from cm_notebook.model import Message, MessageStatus, ToolCall, ToolCallStatus
from cm_notebook.providers.base import Finish, TextDelta, ToolCallRequest, Usage
from cm_notebook.retry import RetryPolicy
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import ToolRegistry, tool

FAST = RetryPolicy(initial_delay=0.01, multiplier=1.0, max_attempts=3, jitter=0.0)


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def stored(data_dir: Path, session: ContextSession, branch: str | None = None) -> list[Message]:
    """The branch's messages as a fresh session reads them from disk."""
    fresh = ContextSession.open(session.id, data_dir=data_dir)
    try:
        return fresh.history(branch)
    finally:
        fresh.close()


def assert_tree_valid(tree: list[Message]) -> None:
    """No message is left half-written; every tool call is settled and answered once."""
    assert all(m.status is not MessageStatus.STREAMING for m in tree), tree
    answers = [m.tool_call_id or "" for m in tree if m.role == "tool"]
    asked = [c.id for m in tree for c in m.tool_calls]
    assert sorted(answers) == sorted(asked)
    for message in tree:
        for call in message.tool_calls:
            assert call.status in (
                ToolCallStatus.DONE,
                ToolCallStatus.FAILED,
                ToolCallStatus.DENIED,
            ), call


def assert_consistent(events: list[Event], tree: list[Message]) -> None:
    """The invariants every view relies on, over a session's signals and its tree."""
    assert_tree_valid(tree)
    # The state chain of each branch is continuous and ends Idle or PermanentFailure.
    branches = {e.branch for e in events if isinstance(e, StateChanged)}
    for branch in branches:
        changes = [e for e in events if isinstance(e, StateChanged) and e.branch == branch]
        for before, after in itertools.pairwise(changes):
            assert before.new == after.old, (before, after)
        assert changes[-1].new in (State.IDLE, State.PERMANENT_FAILURE)
    # Every assistant message completes exactly once.
    added = [e.message_id for e in events if isinstance(e, MessageAdded) and e.role == "assistant"]
    completed = [e.message_id for e in events if isinstance(e, MessageCompleted)]
    assert sorted(completed) == sorted(added)
    # Every call put up for approval is resolved.
    requested = {i for e in events if isinstance(e, ToolApprovalRequested) for i in e.tool_call_ids}
    resolved = {e.tool_call_id for e in events if isinstance(e, ToolCallResolved)}
    assert requested <= resolved


def idle_and_settled(events: list[Event]) -> bool:
    """A predicate: the last state change went to Idle and the tree writes are done."""
    changes = [e for e in events if isinstance(e, StateChanged)]
    return bool(changes) and changes[-1].new in (State.IDLE, State.PERMANENT_FAILURE)


# -- a provider that raises what it should not --------------------------------------------


@pytest.mark.parametrize("after_chunks", [0, 2])
def test_a_provider_bug_fails_the_turn_with_a_clear_error(
    data_dir: Path, new_session: Callable[..., ContextSession], after_chunks: int
) -> None:
    fake = ScriptedProvider().error(ValueError("bad chunk"), after_chunks=after_chunks)
    fake.reply("Fine now.")
    session = new_session(provider=fake)
    recorder = Recorder(session)
    turn = session.send("Hi")
    with pytest.raises(
        PermanentProviderError, match="internal error in provider 'scripted'"
    ) as caught:
        turn.result(DEADLINE)
    assert "ValueError: bad chunk" in str(caught.value)
    assert isinstance(caught.value.__cause__, ValueError)
    assert session.state is State.PERMANENT_FAILURE
    recorder.wait(seen(ErrorReported))
    assert [e.kind for e in recorder.of(ErrorReported)] == ["internal"]
    failed = stored(data_dir, session)[-1]
    assert failed.status is MessageStatus.ERROR
    assert failed.metadata.error is not None
    assert "bad chunk" in failed.metadata.error
    assert_consistent(recorder.snapshot(), stored(data_dir, session))

    # Not stuck: the user can retry.
    assert session.retry().result(DEADLINE).content == "Fine now."
    assert session.state is State.IDLE
    assert roles(stored(data_dir, session)) == ["user", "assistant"]


class WrongChunks:
    """A provider whose own code builds a malformed chunk after some text."""

    name = "wrong"
    model = "wrong-1"

    def __init__(self, build: Callable[[], object]) -> None:
        self.build = build

    async def stream(self, request: Any) -> Any:
        yield TextDelta("Some text, then ")
        yield self.build()

    async def aclose(self) -> None:
        pass


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: TextDelta(123), "TextDelta.text"),  # type: ignore[arg-type]
        (lambda: ToolCallRequest(None, "add", "{}"), "ToolCallRequest.id"),  # type: ignore[arg-type]
        (lambda: Usage(-5, 1), "Usage.input_tokens"),
        (lambda: Finish(None), "Finish.reason"),  # type: ignore[arg-type]
    ],
)
def test_a_malformed_chunk_is_the_providers_bug_not_the_engines(
    new_session: Callable[..., ContextSession], build: Callable[[], object], field: str
) -> None:
    # Failing where the chunk is made, the turn names the provider and the field, stops
    # in PermanentFailure with the text kept, and can be retried.
    session = new_session(provider=WrongChunks(build))
    with pytest.raises(
        PermanentProviderError, match="internal error in provider 'wrong'"
    ) as caught:
        session.send("Hi").result(DEADLINE)
    assert field in str(caught.value)
    assert session.state is State.PERMANENT_FAILURE
    assert session.history()[-1].content == "Some text, then "


@pytest.mark.parametrize("wait", [-1.0, math.nan])
def test_a_transient_error_with_a_wait_that_is_no_wait_is_still_retried(
    new_session: Callable[..., ContextSession], wait: float
) -> None:
    fake = ScriptedProvider().error(TransientProviderError("busy", retry_after=wait))
    fake.reply("Fine now.")
    session = new_session(provider=fake, retry=FAST)
    assert session.send("Hi").result(DEADLINE).content == "Fine now."
    assert len(fake.requests) == 2


# -- a store that fails mid-turn ----------------------------------------------------------


class FlakyStore(FileStore):
    """A real FileStore whose next append of a tool message fails (a full disk, once)."""

    fail_next_tool_message = True

    async def append_message(
        self, context_id: str, message: Message, *, branch: str | None, **options: Any
    ) -> Message:
        if self.fail_next_tool_message and message.role == "tool":
            self.fail_next_tool_message = False
            raise StoreError("disk full (simulated)")
        return await super().append_message(context_id, message, branch=branch, **options)


def test_a_store_failure_mid_turn_ends_the_turn_and_frees_the_branch(
    data_dir: Path, closing: list[ContextSession], new_session: Callable[..., ContextSession]
) -> None:
    store = FlakyStore(data_dir)
    try:
        _store_failure(store, new_session)
    finally:  # the sessions first (they write until closed), then their store
        for session in closing:
            session.close()
        anyio.run(store.close)


def _store_failure(store: FlakyStore, new_session: Callable[..., ContextSession]) -> None:
    fake = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("three")
    session = new_session(provider=fake, store=store, tools=[add], approval="auto")
    recorder = Recorder(session)
    with pytest.raises(StoreError, match="disk full"):
        session.send("1 + 2?").result(DEADLINE)
    recorder.wait(idle_and_settled)
    assert session.state is State.IDLE
    assert [e.kind for e in recorder.of(ErrorReported)] == ["internal"]
    assert "disk full" in recorder.of(ErrorReported)[0].message
    # Nothing is left streaming, and the branch takes the next message.
    assert all(m.status is not MessageStatus.STREAMING for m in session.history())
    # The call whose answer could not be stored was answered by the wind-down, with
    # its own result: the tool ran, so it is not reported as denied ("not run").
    tree = session.history()
    assert_tree_valid(tree)
    assert (tree[-1].content, tree[1].tool_calls[0].status) == ("3", ToolCallStatus.DONE)
    assert session.send("again").result(DEADLINE).content == "three"
    assert_tree_valid(session.history())


# -- a tool taken away while its call waits -------------------------------------------


def test_a_tool_removed_before_it_runs_fails_the_call_not_the_turn(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider().tool_calls(("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4}))
    fake.reply("Sorry, no tool.")
    session = new_session(provider=fake, tools=[add])
    recorder = Recorder(session)
    turn = session.send("sums?")
    recorder.wait(seen(ToolApprovalRequested))
    session.tools = ToolRegistry()  # the notebook re-ran its tools cell with none

    # Editing the arguments needs the tool's schema: a clear error, the call stays.
    with pytest.raises(ToolError, match="no tool named 'add'"):
        session.approve("call_1", arguments={"a": 5, "b": 5})
    assert [c.id for c in session.pending_tool_calls] == ["call_1", "call_2"]

    session.approve("call_1")
    session.deny("call_2", reason="")
    message = turn.result(DEADLINE)
    assert message.content == "Sorry, no tool."
    assert session.state is State.IDLE
    tree = stored(data_dir, session)
    asking = tree[1]
    assert [c.status for c in asking.tool_calls] == [ToolCallStatus.FAILED, ToolCallStatus.DENIED]
    told = {m.tool_call_id: m.content for m in fake.requests[1].messages if m.role == "tool"}
    assert "no tool named 'add'" in told["call_1"]
    assert "denied by the user" in told["call_2"]
    recorder.wait(idle_and_settled)
    assert_consistent(recorder.snapshot(), tree)


# -- retries -------------------------------------------------------------------------------


def test_a_transient_error_after_a_tool_round_retries_the_same_reply(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = (
        ScriptedProvider(strict=True)
        .tool_call("add", {"a": 1, "b": 2}, text="Let me add.")
        .error("transient", after_chunks=2, text="The sum")
        .reply("The sum is 3.", chunks=4)
    )
    session = new_session(provider=fake, tools=[add], approval="auto", retry=FAST)
    recorder = Recorder(session)
    final = session.send("1 + 2?").result(DEADLINE)
    recorder.wait(idle_and_settled)
    tree = stored(data_dir, session)
    assert roles(tree) == ["user", "assistant", "tool", "assistant"]
    assert tree[-1] == final
    assert (final.content, tree[2].content, tree[1].content) == (
        "The sum is 3.",
        "3",
        "Let me add.",
    )
    assert tree[1].metadata.model_extra in (None, {})  # the asking reply did not fail
    extra = final.metadata.model_extra or {}
    assert [a["text"] for a in extra["failed_attempts"]] == ["The sum"]
    # The retry sent the same conversation, tool result included, without the failure.
    assert fake.requests[1].messages == fake.requests[2].messages
    assert roles(fake.requests[2].messages) == ["user", "assistant", "tool"]
    assert [e.kind for e in recorder.of(ErrorReported)] == ["transient"]
    assert_consistent(recorder.snapshot(), tree)


def test_a_retry_restarts_the_stored_text_with_the_offsets(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    # A view that sees offset 0 again re-pulls the message: what it pulls must be a
    # prefix of the text the new deltas build, not the failed attempt's text.
    fake = ScriptedProvider().error("transient", after_chunks=2, text="Hello wor")
    fake.hang(after_chunks=1, text="Bye")
    session = new_session(provider=fake, retry=FAST)
    recorder = Recorder(session)
    turn = session.send("Hi")
    recorder.wait(seen(ContentDelta, text="Bye"))
    delta = recorder.of(ContentDelta)[-1]
    assert delta.offset == 0
    pulled = session.get(delta.message_id)
    assert pulled.status is MessageStatus.STREAMING
    assert "Bye".startswith(pulled.content)
    turn.cancel()
    message = turn.result(DEADLINE)
    assert (message.content, message.status) == ("Bye", MessageStatus.INTERRUPTED)
    assert [a["text"] for a in (message.metadata.model_extra or {})["failed_attempts"]] == [
        "Hello wor"
    ]


# -- cancelling in every state ------------------------------------------------------------

_gate = threading.Event()


@tool(policy="auto")
def slow(x: int) -> int:
    """Wait for the test's gate, then echo x."""
    _gate.wait(DEADLINE)
    return x


@tool
def asked(x: int) -> int:
    """Echo x, after a person approved."""
    return x


def _requested(fake: ScriptedProvider, count: int) -> Callable[[list[Event]], bool]:
    # The provider has the request (its stream is open), not just the state change.
    return lambda _events: len(fake.requests) >= count


CANCEL_POINTS: dict[str, tuple[Callable[[], ScriptedProvider], Callable[..., Any]]] = {
    "AwaitingResponse": (lambda: ScriptedProvider().hang(), lambda fake: _requested(fake, 1)),
    "Streaming": (
        lambda: ScriptedProvider().hang(after_chunks=1, text="Hal"),
        lambda fake: seen(ContentDelta),
    ),
    "TransientFailure": (
        lambda: ScriptedProvider().error("transient", after_chunks=1, text="Hal"),
        lambda fake: entered(State.TRANSIENT_FAILURE),
    ),
    "AwaitingToolApproval": (
        lambda: ScriptedProvider().tool_calls(("asked", {"x": 1}), ("asked", {"x": 2})),
        lambda fake: entered(State.AWAITING_TOOL_APPROVAL),
    ),
    "ExecutingTools": (
        lambda: ScriptedProvider().tool_calls(("slow", {"x": 1}), ("slow", {"x": 2})),
        lambda fake: entered(State.EXECUTING_TOOLS),
    ),
}


@pytest.mark.parametrize("point", list(CANCEL_POINTS))
def test_cancel_in_every_state_leaves_a_valid_tree(
    data_dir: Path, new_session: Callable[..., ContextSession], point: str
) -> None:
    make_fake, ready = CANCEL_POINTS[point]
    fake = make_fake()
    session = new_session(
        provider=fake,
        tools=[slow, asked],
        retry=RetryPolicy(initial_delay=60, jitter=0),
    )
    recorder = Recorder(session)
    _gate.clear()
    turn = session.send("Hi")
    recorder.wait(ready(fake))
    if point == "AwaitingResponse":
        # No signal says "the request is out"; the fake's own record is the signal.
        with recorder._cond:
            recorder._cond.wait_for(lambda: bool(fake.requests), DEADLINE)
    # A view that re-pulls when Idle is signalled must find the tree settled.
    at_idle: list[list[Message]] = []

    def on_idle(event: Event) -> None:
        if isinstance(event, StateChanged) and event.new is State.IDLE:
            at_idle.append(session.history())

    remove = session.subscribe(on_idle)
    turn.cancel()
    message = turn.result(DEADLINE)
    _gate.set()
    remove()
    assert message.role == "assistant"
    assert session.state is State.IDLE
    (tree_at_idle,) = at_idle
    assert_tree_valid(tree_at_idle)
    tree = stored(data_dir, session)
    assert tree[-1].status in (MessageStatus.INTERRUPTED, MessageStatus.COMPLETE)
    assert_consistent(recorder.snapshot(), tree)
    assert session.send("more").result(DEADLINE).content == "echo: more"
    assert_consistent(recorder.snapshot(), stored(data_dir, session))


# -- the end of a turn, as views see it ---------------------------------------------------


def test_a_callback_may_send_the_next_message_when_idle_is_signalled(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    # "Idle" is the signal that the turn is over: a view (or an SSE client) that sends
    # the next queued message on it must not be told the branch is busy.
    fake = ScriptedProvider().reply("first").reply("second")
    session = new_session(provider=fake)
    follow_ups: list[Any] = []

    def on_event(event: Event) -> None:
        if isinstance(event, StateChanged) and event.new is State.IDLE and not follow_ups:
            try:
                follow_ups.append(session.send("next"))
            except Exception as exc:  # shown by the assertion below
                follow_ups.append(exc)

    session.subscribe(on_event)
    assert session.send("one").result(DEADLINE).content == "first"
    (follow_up,) = follow_ups
    assert not isinstance(follow_up, Exception), follow_up
    assert follow_up.result(DEADLINE).content == "second"
    assert roles(session.history()) == ["user", "assistant", "user", "assistant"]


def test_the_final_state_change_is_the_last_signal_of_a_failed_turn(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider().error("permanent", after_chunks=1, text="Hal")
    session = new_session(provider=fake)
    recorder = Recorder(session)
    with pytest.raises(PermanentProviderError):
        session.send("Hi").result(DEADLINE)
    recorder.wait(entered(State.PERMANENT_FAILURE))
    events = recorder.snapshot()
    # The context's title, named after the first message, is stored alongside the turn
    # and may be announced after it: not one of the turn's signals.
    of_turn = [e.type for e in events if e.type != "ContextUpdated"]
    assert of_turn[-3:] == ["MessageCompleted", "Error", "StateChanged"]
    assert_consistent(events, stored(data_dir, session))


class GatedStore(FileStore):
    """A real FileStore that calls ``on_final_error`` while it writes a failed reply."""

    on_final_error: Callable[[], None] | None = None

    async def update_message(self, context_id: str, message: Message) -> None:
        if message.status is MessageStatus.ERROR and self.on_final_error is not None:
            self.on_final_error()
            await anyio.lowlevel.checkpoint()  # the cancel arrives during this write
        await super().update_message(context_id, message)


def test_a_cancel_during_the_final_write_of_a_failed_turn_changes_nothing(
    data_dir: Path,
) -> None:
    store = GatedStore(data_dir)
    fake = ScriptedProvider().error("permanent", after_chunks=1, text="Hal")
    session = ContextSession.create(provider=fake, store=store)
    try:
        turn = session.send("Hi")
        store.on_final_error = turn.cancel
        with pytest.raises(PermanentProviderError):
            turn.result(DEADLINE)
        assert session.state is State.PERMANENT_FAILURE
        assert session.history()[-1].status is MessageStatus.ERROR
        assert session.retry().result(DEADLINE).content == "echo: Hi"
    finally:
        session.close()
        anyio.run(store.close)


def test_approve_and_deny_can_be_limited_to_one_branch(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    @tool
    def ping(host: str) -> str:
        """Ping a host."""
        return f"pong from {host}"

    def arm(host: str) -> ScriptedProvider:
        return ScriptedProvider(strict=True).tool_call("ping", {"host": host}).reply("done")

    session = new_session(provider=ScriptedProvider(), tools=[ping])
    recorder = Recorder(session)
    fan = session.fan_out(
        "go", [{"provider": arm("a"), "branch": "a"}, {"provider": arm("b"), "branch": "b"}]
    )
    recorder.wait(lambda events: sum(e.type == "ToolApprovalRequested" for e in events) == 2)
    with pytest.raises(ToolCallNotFoundError, match="on branch 'main'"):
        session.approve(branch="main")
    [approved] = session.approve(branch="a")
    assert approved.arguments == {"host": "a"}
    [denied] = session.deny(branch="b", reason="not b")
    assert denied.arguments == {"host": "b"}
    fan.result(DEADLINE)
    assert session.history("a")[-2].content == "pong from a"
    assert "not b" in session.history("b")[-2].content


def test_a_tool_call_left_without_a_stored_result_is_answered_in_the_request(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    # E.g. the disk filled up while the engine stored the tool message: the stored tree
    # lacks an answer, but the request sent to the model must still pair every call.
    store = FileStore(data_dir)
    fake = ScriptedProvider(strict=True).reply("carrying on")
    session = new_session(provider=fake, store=store)
    asked = Message(role="user", content="use a tool")
    calls = [ToolCall(id="c1", name="lookup", status=ToolCallStatus.DONE, result="42")]
    half = Message(role="assistant", parent_id=asked.id, tool_calls=calls)

    async def write() -> None:
        await store.append_message(session.id, asked, branch="main")
        await store.append_message(session.id, half, branch="main")

    anyio.run(write)
    session.send("and now?").result(DEADLINE)
    sent = fake.last_request.messages
    assert [m.role for m in sent] == ["user", "assistant", "tool", "user"]
    assert (sent[2].tool_call_id, sent[2].content) == ("c1", "42")
    # The next turn stored the missing answer first, from the call's recorded result.
    stored = session.history()
    assert [m.role for m in stored] == ["user", "assistant", "tool", "user", "assistant"]
    assert (stored[2].tool_call_id, stored[2].content) == ("c1", "42")
    session.close()
    anyio.run(store.close)
