"""Approval choices in one process: approve once or always (for the session, for the
context), edit, deny with a reason, revoke; and the audit log of every decision, in the
context folder and in the ``ToolCallResolved`` signals."""

from __future__ import annotations

import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import DEADLINE, Recorder
from test_session_tools import Calculator, waiting

from cm_notebook import tool
from cm_notebook.errors import (
    InvalidInputError,
    StoreLockTimeoutError,
    ToolArgumentsError,
    ToolCallAlreadyResolvedError,
)
from cm_notebook.events import ToolCallResolved
from cm_notebook.model import ToolCallStatus
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.testing import ScriptedProvider


def _log_file(session: ContextSession) -> Path:
    assert session.signal_log_path is not None
    return session.signal_log_path.parent.parent / "approvals" / "log.jsonl"


def _one_call_approved_by_ada(
    new_session: Callable[..., ContextSession],
) -> tuple[ContextSession, Recorder]:
    """A session whose one tool call (add 1 + 2) ada approved, its turn finished, and
    what its signals were."""
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("3.")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("1 + 2?")
    waiting(recorder)
    session.approve("call_1", by="ada")
    turn.result(DEADLINE)
    return session, recorder


def test_approving_once_is_logged_with_who_when_and_what(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session, recorder = _one_call_approved_by_ada(new_session)

    [record] = session.approval_log()
    assert (record.tool_call_id, record.tool, record.approved) == ("call_1", "add", True)
    assert (record.by, record.remote, record.remember) == ("ada", False, "once")
    assert record.arguments == {"a": 1, "b": 2}
    assert record.edited_arguments is None
    assert record.branch == "main"
    assert record.message_id == session.history()[1].id
    # The same record travels in the signal (so over SSE and to other processes).
    [resolved] = [e for e in recorder.of(ToolCallResolved) if e.decision is not None]
    assert resolved.decision == record
    assert session.approval_log("main") == [record]
    assert session.approval_log("elsewhere") == []
    # Persisted in the context folder: a reopened session reads it.
    session.close()
    with ContextSession.open(session.id, data_dir=data_dir) as again:
        assert again.approval_log() == [record]


def test_edited_arguments_and_a_denial_with_a_reason_are_logged(
    new_session: Callable[..., ContextSession],
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True)
    fake.tool_calls(("add", {"a": 1, "b": 2}), ("divide", {"a": 1, "b": 0}))
    fake.reply("done")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("go")
    waiting(recorder)
    with pytest.raises(ToolArgumentsError):
        session.approve("call_1", arguments={"a": "x"})
    assert session.approval_log() == []  # a refused edit decides nothing
    session.approve("call_1", arguments='{"a": 5, "b": 6}')
    session.deny("call_2", reason="no division by zero")
    turn.result(DEADLINE)
    assert calc.calls == [("add", 5, 6)]
    edited, denied = session.approval_log()
    assert edited.edited_arguments == {"a": 5, "b": 6}
    assert edited.arguments == {"a": 1, "b": 2}
    assert (denied.approved, denied.reason, denied.by) == (False, "no division by zero", "user")


def test_a_reason_holding_a_unicode_line_separator_stays_one_record(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    # JSON leaves U+2028, U+2029 and U+0085 unescaped: the log's lines end at "\n" only.
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("no.")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("1 + 2?")
    waiting(recorder)
    reason = "first line\u2028second line\u0085third\u2029end"
    session.deny("call_1", reason=reason)
    turn.result(DEADLINE)
    assert "\u2028" in _log_file(session).read_text(encoding="utf-8")
    session.close()
    with ContextSession.open(session.id, data_dir=data_dir) as again:
        [record] = again.approval_log()
        assert record.reason == reason


def test_an_edit_with_broken_text_runs_and_is_logged_and_one_with_nan_is_refused(
    new_session: Callable[..., ContextSession],
) -> None:
    # Text pasted from a broken source may hold half of an emoji (a lone surrogate),
    # which UTF-8 cannot hold: it was shown as valid, then the log write failed the
    # turn and the approval was lost.
    echoed: list[str] = []

    @tool
    def echo(text: str) -> str:
        """Say the text back."""
        echoed.append(text)
        return text

    fake = ScriptedProvider(strict=True).tool_call("echo", {"text": "hi"}).reply("done")
    session = new_session(provider=fake, tools=[echo])
    recorder = Recorder(session)
    turn = session.send("go")
    waiting(recorder)
    with pytest.raises(ToolArgumentsError, match=r"text is NaN or an infinity"):
        session.approve("call_1", arguments='{"text": NaN}')
    [decided] = session.approve("call_1", arguments='{"text": "pasted \\udfff text"}')
    assert decided.arguments == {"text": "pasted \ufffd text"}
    assert turn.result(DEADLINE).content == "done"
    assert echoed == ["pasted \ufffd text"]
    [record] = session.approval_log()
    assert record.edited_arguments == {"text": "pasted \ufffd text"}


def test_always_allow_for_the_session_skips_asking_until_revoked(
    new_session: Callable[..., ContextSession],
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True)
    for _ in range(3):
        fake.tool_call("add", {"a": 1, "b": 1}).reply("2")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("first")
    waiting(recorder)
    session.approve("call_1", remember="session")
    turn.result(DEADLINE)
    assert session.allowed_tools() == {"session": ["add"], "context": []}

    # The next call of the tool runs without asking; the log says which rule allowed it.
    assert session.send("second").result(DEADLINE).content == "2"
    first, second = session.approval_log()
    assert (first.by, first.remember) == ("user", "session")
    assert (second.by, second.remember, second.tool_call_id) == ("allow-list", "session", "call_2")

    assert session.revoke("add") is True
    assert session.revoke("add") is False
    assert session.allowed_tools() == {"session": [], "context": []}
    turn = session.send("third")
    recorder.wait(lambda events: len(session.pending_tool_calls) == 1)
    session.approve()
    turn.result(DEADLINE)
    assert len(calc.calls) == 3


def test_always_allow_approves_the_other_waiting_calls_of_that_tool(
    new_session: Callable[..., ContextSession],
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True)
    fake.tool_calls(
        ("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4}), ("divide", {"a": 1, "b": 1})
    )
    fake.reply("ok")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("go")
    waiting(recorder)
    session.approve("call_1", remember="context")
    assert [call.id for call in session.pending_tool_calls] == ["call_3"]
    session.deny("call_3")
    turn.result(DEADLINE)
    assert calc.calls == [("add", 1, 2), ("add", 3, 4)]
    assert [(r.tool_call_id, r.by) for r in session.approval_log()] == [
        ("call_1", "user"),
        ("call_2", "allow-list"),
        ("call_3", "user"),
    ]
    assert session.allowed_tools()["context"] == ["add"]
    assert session.revoke("add", scope="session") is False
    assert session.revoke("add", scope="context") is True


def test_a_context_allowance_is_kept_in_the_folder_for_later_sessions(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 1}).reply("2")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("go")
    waiting(recorder)
    session.approve(remember="context")
    turn.result(DEADLINE)
    session.close()
    again_fake = ScriptedProvider(strict=True).tool_call("add", {"a": 2, "b": 2}).reply("4")
    with ContextSession.open(
        session.id, data_dir=data_dir, provider=again_fake, tools=calc.tools
    ) as again:
        assert again.allowed_tools() == {"session": [], "context": ["add"]}
        assert again.send("again").result(DEADLINE).content == "4"
        assert again.approval_log()[-1].by == "allow-list"
        assert again.approval_log()[-1].remember == "context"
    assert calc.calls == [("add", 1, 1), ("add", 2, 2)]


def test_the_policy_still_wins_over_an_allowance(
    new_session: Callable[..., ContextSession],
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 1}).reply("no")
    session = new_session(provider=fake, tools=calc.tools, approval={"add": "deny"})
    session._allow_lists.allow("add", "session")  # as an earlier approve() would have
    message = session.send("go").result(DEADLINE)
    assert session.history()[1].tool_calls[0].status is ToolCallStatus.DENIED
    assert message.content == "no"
    assert calc.calls == []
    assert session.approval_log() == []  # the policy's own decisions are configuration


def test_a_torn_last_line_of_the_log_is_skipped_and_the_next_decision_still_lands(
    new_session: Callable[..., ContextSession],
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True)
    fake.tool_call("add", {"a": 1, "b": 1}).reply("2").tool_call("add", {"a": 2, "b": 2})
    fake.reply("4")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("go")
    waiting(recorder)
    session.approve()
    turn.result(DEADLINE)
    path = _log_file(session)
    with path.open("ab") as out:
        out.write(b'{"at": "2026-01-01T00:00:00Z", "branch": "ma')  # a crash mid-append
    assert len(session.approval_log()) == 1
    turn = session.send("again")
    recorder.wait(lambda events: len(session.pending_tool_calls) == 1)
    session.deny(reason="enough")
    turn.result(DEADLINE)
    assert [r.approved for r in session.approval_log()] == [True, False]


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.approve("x", remember="forever"),
        lambda s: s.approve("x", by=""),
        lambda s: s.approve("x", by="policy"),
        lambda s: s.deny("x", by=3),
        lambda s: s.revoke("", scope="session"),
        lambda s: s.revoke("add", scope="everywhere"),
        lambda s: s.approval_log(branch="../x"),
    ],
)
def test_bad_choices_are_refused_with_what_to_do(
    new_session: Callable[..., ContextSession], call: Callable[[ContextSession], object]
) -> None:
    session = new_session(provider=ScriptedProvider())
    with pytest.raises(InvalidInputError):
        call(session)


@pytest.mark.parametrize("control", ["\x1b[31m", "\n", "\x00", "\x9b", "\r"])
def test_by_with_control_characters_is_refused_and_decides_nothing(
    new_session: Callable[..., ContextSession], control: str
) -> None:
    # ``by`` is shown in the log, its view and exports, as a title is in listings.
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("3.")
    fake.tool_call("add", {"a": 2, "b": 2}).reply("4.")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("1 + 2?")
    waiting(recorder)
    for decide in (session.approve, session.deny):
        with pytest.raises(InvalidInputError, match=r"by \(who decides\).* control characters"):
            decide("call_1", by=f"ada{control}")
        with pytest.raises(InvalidInputError, match="control characters"):
            decide(by=f"{control}ada")  # every call
    assert [call.id for call in session.pending_tool_calls] == ["call_1"]
    assert session.approval_log() == []
    session.approve("call_1", by="ada")
    turn.result(DEADLINE)
    assert [record.by for record in session.approval_log()] == ["ada"]


def test_by_with_control_characters_logged_before_still_reads(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session, _ = _one_call_approved_by_ada(new_session)
    path = _log_file(session)
    path.write_text(path.read_text().replace('"ada"', '"\\u001b[31mada\\n"'))
    session.close()
    with ContextSession.open(session.id, data_dir=data_dir) as again:
        assert [record.by for record in again.approval_log()] == ["\x1b[31mada\n"]


def test_an_allow_list_held_by_a_stuck_process_is_waited_for_a_while_not_for_ever(
    data_dir: Path,
) -> None:
    # Another process holds the context's allow-list lock and never lets go: changing
    # the list gives up after the store's lock timeout with a clear error, and works
    # once the lock is free.
    store = FileStore(data_dir, lock_timeout=0.3)
    with ContextSession.create(store=store, provider=ScriptedProvider()) as session:
        session.allow("add", scope="context")  # makes the folder and its lock file
        lock_file = data_dir / "contexts" / session.id / "approvals" / "allowed.lock"
        assert lock_file.exists()
        holder = subprocess.Popen(
            [sys.executable, "-c", _HOLD_LOCK, str(lock_file)],
            stdout=subprocess.PIPE,
        )
        try:
            assert holder.stdout is not None
            assert holder.stdout.readline().strip() == b"holding"
            with pytest.raises(StoreLockTimeoutError, match=r"allow-list .* within 0.3 s"):
                session.allow("multiply", scope="context")
            assert session.allowed_tools()["context"] == ["add"]
        finally:
            holder.kill()
            holder.communicate()
        session.allow("multiply", scope="context")
        assert session.allowed_tools()["context"] == ["add", "multiply"]


_HOLD_LOCK = """
import fcntl, sys, time
fd = open(sys.argv[1], "r+")
fcntl.flock(fd, fcntl.LOCK_EX)
print("holding", flush=True)
time.sleep(600)
"""


def test_the_arguments_asked_for_sent_back_are_not_an_edit(
    new_session: Callable[..., ContextSession],
) -> None:
    # A form that sends the arguments back unchanged, or reformatted, edits nothing.
    calc = Calculator()
    fake = ScriptedProvider(strict=True)
    fake.tool_calls(("add", {"a": 1, "b": 2}), ("add", {"a": 3, "b": 4}))
    fake.reply("done")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("go")
    waiting(recorder)
    session.approve("call_1", arguments={"b": 2, "a": 1})
    session.approve("call_2", arguments='{\n  "a": 3,\n  "b": 4\n}')
    turn.result(DEADLINE)
    assert calc.calls == [("add", 1, 2), ("add", 3, 4)]
    for record in session.approval_log():
        assert (record.edited_arguments, record.reason) == (None, None)


def test_a_damaged_context_allow_list_asks_instead_of_failing_the_turn(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 1}).reply("2")
    session = new_session(provider=fake, tools=calc.tools)
    session.allow("mul", scope="context")  # the context's allow-list file exists
    allowed = data_dir / "contexts" / session.id / "approvals" / "allowed.json"
    allowed.write_text("{not json")
    recorder = Recorder(session)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        turn = session.send("go")
        waiting(recorder)  # asked, not failed as "the reply could not be stored"
    assert any(
        "allowed.json is damaged" in str(w.message) and "asks for a decision" in str(w.message)
        for w in caught
    )
    session.approve()
    assert turn.result(DEADLINE).content == "2"
    assert calc.calls == [("add", 1, 1)]


@pytest.mark.anyio
@pytest.mark.parametrize("approved", [True, False], ids=["approved", "denied"])
async def test_a_decision_that_crosses_a_stop_is_what_the_call_records(
    data_dir: Path, approved: bool
) -> None:
    # A person clicks Approve (or Deny), then Stop, before the turn has taken the
    # decision in: what approve() / deny() returned is what the call and the audit
    # log say, and the tool never runs.
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("never")
    session = ContextSession.create(data_dir=data_dir, provider=fake, tools=calc.tools)
    told: list[ToolCallResolved] = []
    session.subscribe(lambda e: isinstance(e, ToolCallResolved) and told.append(e))
    try:
        turn = session.send("Add")
        [call] = await turn.wait_for_approval(DEADLINE)
        if approved:
            [decided] = session.approve(call.id)
        else:
            [decided] = session.deny(call.id, reason="not now")
        session.stop()  # on the same loop, before the turn runs again
        await turn
        stored = session.history()[1].tool_calls[0]
        answer = session.history()[2].content
        if approved:
            assert decided.status is ToolCallStatus.APPROVED
            assert stored.status is ToolCallStatus.FAILED
            assert (stored.reason or "").startswith("approved, but not run")
            assert "was approved, but its turn was stopped" in answer
        else:
            assert decided.status is ToolCallStatus.DENIED
            assert (stored.status, stored.reason) == (ToolCallStatus.DENIED, "not now")
            assert "not now" in answer
        assert calc.calls == []
        [record] = session.approval_log()
        assert (record.tool_call_id, record.approved) == (call.id, approved)
        # Told as decided (with the audit record), then, approved, as not run.
        said = [(e.tool_call_id, e.status, e.decision is not None) for e in told]
        first = (call.id, decided.status, True)
        assert said == ([first, (call.id, ToolCallStatus.FAILED, False)] if approved else [first])
        with pytest.raises(ToolCallAlreadyResolvedError):
            session.approve(call.id)
    finally:
        await session.aclose()


def test_deciding_a_call_that_failed_validation_says_it_was_never_waiting(
    new_session: Callable[..., ContextSession],
) -> None:
    calc = Calculator()
    fake = ScriptedProvider(strict=True).tool_calls(
        ("add", {"a": 1, "b": 2}), ("add", '{"a": 1, "b": "x"}')
    )
    fake.reply("3, and the second was bad.")
    session = new_session(provider=fake, tools=calc.tools)
    recorder = Recorder(session)
    turn = session.send("Add twice")
    waiting(recorder)
    for decide in (session.approve, session.deny):
        with pytest.raises(ToolCallAlreadyResolvedError) as info:
            decide("call_2")
        message = str(info.value)
        assert "already approved or denied" not in message
        assert "tool call 'call_2' is not waiting for approval: it failed (Invalid arg" in message
        assert "b: Input should be a valid integer" in message
        assert "nothing to approve or deny" in message
        assert "decide the calls that are waiting (pending_tool_calls)" in message
    session.approve("call_1")
    turn.result(DEADLINE)
    # Once decided and run, a call says so.
    with pytest.raises(ToolCallAlreadyResolvedError, match=r"'call_1' was already approved$"):
        session.approve("call_1")
    assert calc.calls == [("add", 1, 2)]


def test_deciding_a_call_stored_as_waiting_that_no_turn_waits_for_says_it_may_be_undecided() -> (
    None
):
    # Its process was killed while it waited; for a moment, until a follower settles it
    # as denied, the stored call still says pending: perhaps nobody decided it.
    from cm_notebook.approvals import already_resolved
    from cm_notebook.model import ToolCall

    call = ToolCall(id="k1", name="add", status=ToolCallStatus.PENDING)
    message = str(already_resolved("k1", call))
    assert "is no longer waiting for a decision" in message
    assert "or its turn ended before a decision was made" in message
    assert "already approved or denied" not in message
