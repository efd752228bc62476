"""Tool calls through the session: approval (as is, edited, denied), policies, failures,
time-outs, fail-closed validation, the tool-round limit, and cancelling while waiting.

The model is a ScriptedProvider; what it *saw* is read from ``fake.requests``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_session_support import (
    DEADLINE,
    Recorder,
    entered,
    roles,
    seen,
)

from cm_notebook.errors import (
    BusyError,
    InvalidInputError,
    PermanentProviderError,
    ToolArgumentsError,
    ToolCallAlreadyResolvedError,
    ToolCallNotFoundError,
)
from cm_notebook.events import ErrorReported, ToolApprovalRequested, ToolCallResolved
from cm_notebook.fsm import State
from cm_notebook.magics._remedies import for_magics
from cm_notebook.model import Message, ToolCallStatus
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import Tool, tool


class Calculator:
    """Two tools that record every call they get."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

        @tool
        def add(a: int, b: int) -> int:
            """Add two integers."""
            self.calls.append(("add", a, b))
            return a + b

        @tool
        def divide(a: int, b: int) -> float:
            """Divide a by b."""
            self.calls.append(("divide", a, b))
            return a / b

        self.add: Tool[..., Any] = add
        self.divide: Tool[..., Any] = divide

    @property
    def tools(self) -> list[Tool[..., Any]]:
        return [self.add, self.divide]


def tool_messages(request_messages: Sequence[Message]) -> dict[str, str]:
    """What the model was told about each tool call: ``{tool_call_id: content}``."""
    return {m.tool_call_id or "": m.content for m in request_messages if m.role == "tool"}


def assert_tree_valid(history: list[Message]) -> None:
    """Every tool call of the branch is settled and answered by exactly one tool message."""
    answers = [m.tool_call_id or "" for m in history if m.role == "tool"]
    for message in history:
        for call in message.tool_calls:
            assert call.status in (
                ToolCallStatus.DONE,
                ToolCallStatus.FAILED,
                ToolCallStatus.DENIED,
            ), call
            assert answers.count(call.id) == 1, (call.id, answers)
    asked = [c.id for m in history for c in m.tool_calls]
    assert sorted(answers) == sorted(asked)


def waiting(recorder: Recorder) -> None:
    recorder.wait(seen(ToolApprovalRequested))
    recorder.wait(entered(State.AWAITING_TOOL_APPROVAL))


# -- approving -----------------------------------------------------------------------------


def test_approve_runs_the_tool_and_the_model_sees_its_result(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("It is 3.")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("What is 1 + 2?")
    waiting(recorder)
    assert session.state is State.AWAITING_TOOL_APPROVAL
    (pending,) = session.pending_tool_calls
    assert (pending.id, pending.name, pending.arguments) == ("call_1", "add", {"a": 1, "b": 2})
    assert calc.calls == []
    assert not turn.done()

    (approved,) = session.approve()
    assert approved.id == "call_1"
    message = turn.result(DEADLINE)
    assert message.content == "It is 3."
    assert calc.calls == [("add", 1, 2)]
    assert tool_messages(fake.requests[1].messages) == {"call_1": "3"}
    assert [spec.name for spec in fake.requests[0].tools] == ["add", "divide"]

    history = session.history()
    assert roles(history) == ["user", "assistant", "tool", "assistant"]
    (call,) = history[1].tool_calls
    assert (call.status, call.result) == (ToolCallStatus.DONE, "3")
    assert_tree_valid(history)
    assert session.pending_tool_calls == []
    assert recorder.states() == [
        State.IDLE,
        State.AWAITING_RESPONSE,  # a reply made only of a tool call streams no text
        State.AWAITING_TOOL_APPROVAL,
        State.EXECUTING_TOOLS,
        State.AWAITING_RESPONSE,
        State.STREAMING,
        State.IDLE,
    ]
    assert [(e.tool_call_id, e.status) for e in recorder.of(ToolCallResolved)] == [
        ("call_1", ToolCallStatus.APPROVED),
        ("call_1", ToolCallStatus.DONE),
    ]


@pytest.mark.parametrize("edited", [{"a": 10, "b": 5}, '{"a": "10", "b": 5}'])
def test_approve_with_edited_arguments_runs_them_and_the_model_sees_them(
    data_dir: Path, new_session: Callable[..., ContextSession], edited: Any
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("15.")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("Add")
    waiting(recorder)
    session.approve("call_1", arguments=edited)
    turn.result(DEADLINE)
    assert calc.calls == [("add", 10, 5)]
    follow_up = fake.requests[1].messages
    (asked,) = [m for m in follow_up if m.role == "assistant"]
    assert asked.tool_calls[0].arguments == {"a": 10, "b": 5}
    assert tool_messages(follow_up) == {"call_1": "15"}
    stored = session.history()[1].tool_calls[0]
    assert stored.arguments == {"a": 10, "b": 5}
    assert stored.reason == "arguments edited before approval"


def test_invalid_edited_arguments_are_refused_and_the_call_stays_pending(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("3.")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("Add")
    waiting(recorder)
    with pytest.raises(ToolArgumentsError, match="edited arguments"):
        session.approve("call_1", arguments={"a": "one", "b": 2})
    with pytest.raises(ToolArgumentsError):
        session.approve("call_1", arguments={"a": 1, "b": 2, "c": 3})
    with pytest.raises(ToolArgumentsError):
        session.approve("call_1", arguments="{not json")
    with pytest.raises(InvalidInputError, match="tool_call_id"):
        session.approve(arguments={"a": 1, "b": 2})
    assert [c.id for c in session.pending_tool_calls] == ["call_1"]
    assert session.state is State.AWAITING_TOOL_APPROVAL
    assert calc.calls == []
    session.approve("call_1")
    assert turn.result(DEADLINE).content == "3."
    assert calc.calls == [("add", 1, 2)]


def test_approving_twice_is_a_clear_error(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("3.")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("Add")
    waiting(recorder)
    with pytest.raises(ToolCallNotFoundError, match="call_9"):
        session.approve("call_9")
    session.approve("call_1")
    with pytest.raises(ToolCallAlreadyResolvedError, match="already"):
        session.approve("call_1")
    with pytest.raises(ToolCallAlreadyResolvedError):
        session.deny("call_1")
    turn.result(DEADLINE)
    with pytest.raises(ToolCallAlreadyResolvedError):
        session.approve("call_1")
    with pytest.raises(ToolCallNotFoundError, match="no tool calls waiting"):
        session.approve()
    assert calc.calls == [("add", 1, 2)]


def test_approving_twice_on_a_branch_that_is_not_active(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("3.")
    session = new_session(provider=fake, tools=calc.tools)
    session.branch("side", switch=False)
    recorder = Recorder(session)
    turn = session.send("Add", branch="side")
    recorder.wait(seen(ToolApprovalRequested, branch="side"))
    assert session.active_branch == "main"
    session.approve("call_1")
    with pytest.raises(ToolCallAlreadyResolvedError):
        session.approve("call_1")
    assert turn.result(DEADLINE).content == "3."
    with pytest.raises(ToolCallAlreadyResolvedError):
        session.deny("call_1")


def test_deny_with_a_reason_tells_the_model(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("divide", {"a": 1, "b": 0}).reply("OK.")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("Divide")
    waiting(recorder)
    (denied,) = session.deny("call_1", reason="dividing by zero is pointless")
    assert denied.id == "call_1"
    assert turn.result(DEADLINE).content == "OK."
    assert calc.calls == []
    told = tool_messages(fake.requests[1].messages)["call_1"]
    assert "denied" in told
    assert "dividing by zero is pointless" in told
    call = session.history()[1].tool_calls[0]
    assert (call.status, call.reason) == (ToolCallStatus.DENIED, "dividing by zero is pointless")
    assert_tree_valid(session.history())
    with pytest.raises(InvalidInputError):
        session.deny("call_1", reason=5)  # type: ignore[arg-type]


def test_a_blank_denial_reason_is_the_default_one(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider(strict=True).tool_call("divide", {"a": 1, "b": 0}).reply("OK.")
    session = new_session(provider=fake, tools=Calculator().tools)
    recorder = Recorder(session)  # before the send: the request may come at once
    turn = session.send("Divide")
    waiting(recorder)
    session.deny("call_1", reason="  \n ")
    turn.result(DEADLINE)
    call = session.history()[1].tool_calls[0]
    assert call.reason == "denied by the user"
    assert "denied by the user" in tool_messages(fake.requests[1].messages)["call_1"]


def test_parallel_calls_can_be_decided_one_by_one(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    calc = Calculator()
    fake = (
        ScriptedProvider(strict=True)
        .tool_calls(("add", {"a": 1, "b": 1}), ("divide", {"a": 4, "b": 2}))
        .reply("Done.")
    )
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("Both")
    waiting(recorder)
    assert [c.id for c in session.pending_tool_calls] == ["call_1", "call_2"]
    session.deny("call_2", reason="no")
    recorder.wait(seen(ToolCallResolved, tool_call_id="call_2"))
    assert session.state is State.AWAITING_TOOL_APPROVAL
    assert not turn.done()
    session.approve("call_1")
    turn.result(DEADLINE)
    assert calc.calls == [("add", 1, 1)]
    told = tool_messages(fake.requests[1].messages)
    assert told["call_1"] == "2"
    assert "denied" in told["call_2"]
    assert list(told) == ["call_1", "call_2"]  # answered in the model's order
    assert_tree_valid(session.history())


# -- policies ------------------------------------------------------------------------------


@pytest.mark.parametrize("approval", ["auto", {"add": "auto"}, {"a*": "auto"}])
def test_auto_policy_needs_no_approval(
    data_dir: Path, new_session: Callable[..., ContextSession], approval: Any
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 2, "b": 2}).reply("4.")
    session = new_session(provider=fake, tools=calc.tools, approval=approval)
    recorder = Recorder(session)
    assert session.send("Add").result(DEADLINE).content == "4."
    assert calc.calls == [("add", 2, 2)]
    assert recorder.of(ToolApprovalRequested) == []
    assert State.AWAITING_TOOL_APPROVAL in recorder.states()  # passed through, not held


def test_a_tools_own_auto_policy_is_honoured(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    @tool(policy="auto")
    def now() -> str:
        """The time."""
        return "12:00"

    fake = ScriptedProvider(strict=True).tool_call("now").reply("Noon.")
    session = new_session(provider=fake, tools=[now])
    assert session.send("Time?").result(DEADLINE).content == "Noon."
    assert tool_messages(fake.requests[1].messages) == {"call_1": "12:00"}


def test_deny_policy_refuses_without_asking(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 2, "b": 2}).reply("Sorry.")
    session = new_session(provider=fake, tools=calc.tools, approval="deny")
    recorder = Recorder(session)
    assert session.send("Add").result(DEADLINE).content == "Sorry."
    assert calc.calls == []
    assert recorder.of(ToolApprovalRequested) == []
    assert "approval policy" in tool_messages(fake.requests[1].messages)["call_1"]
    assert session.history()[1].tool_calls[0].status is ToolCallStatus.DENIED


# -- failures ------------------------------------------------------------------------------


def test_a_tool_that_raises_fails_and_the_conversation_goes_on(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("divide", {"a": 1, "b": 0}).reply("Oops.")
    session = new_session(provider=fake, tools=calc.tools, approval="auto")
    recorder = Recorder(session)
    assert session.send("Divide").result(DEADLINE).content == "Oops."
    told = tool_messages(fake.requests[1].messages)["call_1"]
    assert told.startswith("error: ZeroDivisionError")
    call = session.history()[1].tool_calls[0]
    assert call.status is ToolCallStatus.FAILED
    assert [e.kind for e in recorder.of(ErrorReported)] == ["tool"]
    assert session.state is State.IDLE
    assert_tree_valid(session.history())


def test_a_tool_that_never_finishes_times_out(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    @tool
    async def wait_forever() -> str:
        """Wait for an event that never fires."""
        await anyio.Event().wait()
        return "unreachable"

    fake = ScriptedProvider(strict=True).tool_call("wait_forever").reply("Gave up.")
    session = new_session(provider=fake, tools=[wait_forever], approval="auto", tool_timeout=0.1)
    assert session.send("Wait").result(DEADLINE).content == "Gave up."
    told = tool_messages(fake.requests[1].messages)["call_1"]
    assert "timed out after 0.1 s" in told
    assert session.history()[1].tool_calls[0].status is ToolCallStatus.FAILED


@pytest.mark.parametrize(
    ("name", "arguments", "expected"),
    [
        ("launch_rockets", {}, "no tool named 'launch_rockets'"),
        ("add", '{"a": "one", "b": 2}', "Invalid arguments for tool 'add'"),
        ("add", '{"a": 1', "Invalid arguments for tool 'add'"),
        ("add", {"a": 1}, "missing required argument"),
    ],
)
def test_bad_calls_from_the_model_fail_closed(
    new_session: Callable[..., ContextSession], name: str, arguments: Any, expected: str
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call(name, arguments).reply("Let me fix that.")
    session = new_session(provider=fake, tools=calc.tools)  # policy "ask": nobody is asked
    recorder = Recorder(session)
    assert session.send("Go").result(DEADLINE).content == "Let me fix that."
    assert calc.calls == []
    assert recorder.of(ToolApprovalRequested) == []
    told = tool_messages(fake.requests[1].messages)["call_1"]
    assert told.startswith("error:")
    assert expected in told
    assert session.history()[1].tool_calls[0].status is ToolCallStatus.FAILED
    assert_tree_valid(session.history())


def test_too_many_tool_rounds_is_a_permanent_failure(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True)
    for n in range(3):
        fake.tool_call("add", {"a": n, "b": n})
    fake.reply("Finally.")
    session = new_session(provider=fake, tools=calc.tools, approval="auto", max_tool_rounds=2)
    recorder = Recorder(session)
    turn = session.send("Loop")
    with pytest.raises(PermanentProviderError, match="2 consecutive tool rounds"):
        turn.result(DEADLINE)
    assert session.state is State.PERMANENT_FAILURE
    assert calc.calls == [("add", 0, 0), ("add", 1, 1)]  # the third round never ran
    recorder.wait(seen(ErrorReported, kind="permanent"))
    history = session.history()
    assert_tree_valid(history)
    assert "tool round limit" in history[-1].content
    # A new message starts a new chain of rounds.
    assert session.send("Stop looping").result(DEADLINE).content == "Finally."
    assert session.state is State.IDLE


def test_invalid_max_tool_rounds_is_refused(data_dir: Path) -> None:
    with pytest.raises(InvalidInputError):
        ContextSession.create(provider=ScriptedProvider(), data_dir=data_dir, max_tool_rounds=-1)


def test_zero_tool_rounds_is_refused_with_what_to_do_instead(
    new_session: Callable[..., ContextSession],
) -> None:
    # With none, every turn asking for a tool would fail, whatever was sent after it.
    with pytest.raises(InvalidInputError) as info:
        new_session(provider=ScriptedProvider(), max_tool_rounds=0)
    assert "max_tool_rounds must be at least 1, got 0" in str(info.value)
    assert "approval='deny'" in str(info.value)
    # Set to 0 afterwards, the turn's error gives advice that works.
    calc = Calculator()
    fake = ScriptedProvider(strict=True)
    fake.tool_call("add", {"a": 1, "b": 2}).tool_call("add", {"a": 1, "b": 2}).reply("3.")
    session = new_session(provider=fake, tools=calc.tools, approval="auto")
    session.max_tool_rounds = 0
    with pytest.raises(PermanentProviderError) as failed:
        session.send("Add").result(DEADLINE)
    assert "max_tool_rounds is 0, so no tool call may run" in str(failed.value)
    assert "send a message" not in str(failed.value)
    session.max_tool_rounds = 1
    assert session.retry().result(DEADLINE).content == "3."
    assert calc.calls == [("add", 1, 2)]


# -- cancelling while waiting for a person -------------------------------------------------


def test_cancel_during_approval_resolves_every_call(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    calc = Calculator()
    fake = (
        ScriptedProvider(strict=True)
        .tool_calls(("add", {"a": 1, "b": 1}), ("divide", {"a": 1, "b": 1}))
        .reply("Fresh start.")
    )
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("Both")
    waiting(recorder)
    session.approve("call_1")  # decided, but nothing runs before the whole round is decided
    recorder.wait(seen(ToolCallResolved, tool_call_id="call_1"))
    turn.cancel()
    message = turn.result(DEADLINE)
    assert message.tool_calls
    assert message.role == "assistant"
    assert session.state is State.IDLE
    assert session.pending_tool_calls == []
    assert calc.calls == []
    history = session.history()
    assert_tree_valid(history)
    # The approved call is not said denied (the audit log says approved): approved,
    # not run; the one still waiting is denied by the stop.
    approved, asked = history[1].tool_calls
    assert approved.status is ToolCallStatus.FAILED
    assert (approved.reason or "").startswith("approved, but not run")
    assert (asked.status, asked.reason) == (ToolCallStatus.DENIED, "cancelled by the user")
    assert all("cancelled" in m.content for m in history if m.role == "tool")
    with pytest.raises(ToolCallAlreadyResolvedError):
        session.approve("call_2")
    # The next request is a valid conversation: both calls are answered.
    assert session.send("Never mind").result(DEADLINE).content == "Fresh start."
    assert set(tool_messages(fake.last_request.messages)) == {"call_1", "call_2"}


@pytest.mark.anyio
async def test_approval_in_async_code_from_another_task(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 20, "b": 22}).reply("42.")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("Add")
    await recorder.await_(seen(ToolApprovalRequested))
    assert not turn.done()
    session.approve("call_1")
    assert (await turn).content == "42."
    assert calc.calls == [("add", 20, 22)]


def test_tools_set_as_a_list_are_offered_at_the_next_request(
    new_session: Callable[..., ContextSession],
) -> None:
    def double(x: int) -> int:
        """Twice x."""
        return 2 * x

    provider = ScriptedProvider().reply("first").reply("second")
    session = new_session(provider=provider)
    session.send("q1").result(30)
    session.tools = [double]
    assert "double" in session.tools
    assert session.send("q2").result(30).content == "second"
    assert [spec.name for spec in provider.requests[-1].tools] == ["double"]


@pytest.mark.parametrize("given", ["one tool", "a function", "a name"])
def test_tools_that_are_not_a_list_are_refused_with_what_to_do(
    new_session: Callable[..., ContextSession], given: str
) -> None:
    def double(x: int) -> int:
        """Twice x."""
        return 2 * x

    value = {"one tool": tool(double), "a function": double, "a name": "double"}[given]
    with pytest.raises(InvalidInputError, match=r"tools must be a list .* tools=\[add\]"):
        new_session(provider=ScriptedProvider(), tools=value)
    session = new_session(provider=ScriptedProvider())
    with pytest.raises(InvalidInputError, match="tools must be a list"):
        session.tools = value
    assert len(session.tools) == 0  # unchanged


def test_an_async_tool_that_stops_its_own_turn_stops_it_before_the_next_request(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    holder: dict[str, ContextSession] = {}

    @tool(policy="auto")
    async def halt() -> str:
        """Stop the conversation."""
        holder["session"].stop()
        return "stopping"

    fake = ScriptedProvider(strict=True).tool_call("halt", {}).reply("never asked for")
    session = new_session(provider=fake, tools=[halt])
    holder["session"] = session
    session.send("Stop yourself.").result(DEADLINE)
    assert fake.request_count == 1  # the reply after the tool's answer was never asked for
    assert [m.role for m in session.history()] == ["user", "assistant", "tool"]
    assert session.history()[2].content == "stopping"
    assert session.state is State.IDLE


def test_a_send_while_the_reply_waits_for_a_decision_says_to_decide(
    new_session: Callable[..., ContextSession],
) -> None:
    # Waiting for the reply to finish would never end: its calls wait for a person.
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("It is 3.")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("What is 1 + 2?")
    waiting(recorder)
    with pytest.raises(BusyError) as info:
        session.send("meanwhile")
    message = str(info.value)
    assert "waits for a decision on its tool calls" in message
    # That branch's calls only: approve() without it would decide every branch's.
    advice = "session.approve(branch='main') or session.deny(branch='main')"
    assert advice in message
    assert "(session.pending_tool_calls lists them)" in message
    assert len(session.pending_tool_calls) == 1  # a property, as the advice names it
    assert "session.stop(branch='main')" in message
    assert "wait for it" not in message
    # As the magics say it.
    assert (
        "the Approve and Deny buttons (`%cm approve --branch main`, `%cm deny --branch main`)"
        in for_magics(message)
    )
    session.approve(branch="main")  # the advice holds: deciding lets the turn finish
    assert turn.result(DEADLINE).content == "It is 3."
