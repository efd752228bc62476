"""Tools that fail in ways an ``except Exception`` misses, or are cut off mid-run.

Through the session, with real files: a tool raising ``CancelledError``, ``SystemExit``
or ``KeyboardInterrupt`` fails its call and the branch goes on (and, for
``SystemExit``, so does every other session of the process); a call cut off by a
cancel, a close or its time limit says it may have done its work (never "denied",
which means it never ran); text UTF-8 cannot hold (a non-UTF-8 file name) never
reaches the model or the disk; an exception that cannot even be printed still fails
its call readably. The model is a ScriptedProvider; what it *saw* is read from
``fake.requests``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_session_support import DEADLINE, Recorder, entered, message_files, seen
from test_session_tools import assert_tree_valid, tool_messages, waiting

from cm_notebook.events import ErrorReported, ToolCallResolved
from cm_notebook.fsm import State
from cm_notebook.model import ToolCallStatus
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import DEFAULT_TIMEOUT, tool

INTERRUPTED = "interrupted while running"
MAY_HAVE_RUN = "side effects may have happened"
NOT_RUN = "approved, but not run: the turn was stopped first (cancelled by the user)"


def _utf8(text: str) -> str:
    text.encode("utf-8")  # raises on a lone surrogate
    return text


# -- a tool raising what ``except Exception`` does not catch -------------------------------


@tool
async def fetch_report() -> str:
    """Await a helper task that something else cancels (a common asyncio slip)."""
    helper = asyncio.ensure_future(asyncio.sleep(DEADLINE))
    asyncio.get_running_loop().call_soon(helper.cancel)
    return str(await helper)  # raises CancelledError: the helper's, not the turn's


@tool
def quit_now() -> str:
    """Exit the program (a script's habit, pasted into a tool)."""
    sys.exit(3)


@tool
def interrupted() -> str:
    """Give up as Ctrl-C would."""
    raise KeyboardInterrupt


@tool
async def quit_async() -> str:
    """Exit the program, from async code."""
    raise SystemExit("bye")


@tool
def close_generator() -> str:
    """Raise what closing a generator raises, from a worker thread."""
    raise GeneratorExit("closed")


ESCAPES = [
    pytest.param(fetch_report, "CancelledError", id="CancelledError"),
    pytest.param(quit_now, "SystemExit(3)", id="SystemExit-sync"),
    pytest.param(quit_async, "SystemExit('bye')", id="SystemExit-async"),
    pytest.param(interrupted, "KeyboardInterrupt", id="KeyboardInterrupt"),
    pytest.param(close_generator, "GeneratorExit: closed", id="GeneratorExit"),
]


@pytest.mark.parametrize(("failing", "named"), ESCAPES)
def test_a_tool_raising_a_base_exception_fails_its_call_and_the_branch_goes_on(
    new_session: Callable[..., ContextSession], failing: Any, named: str
) -> None:
    fake = ScriptedProvider().tool_call(failing.name).reply("It failed.").reply("Still here.")
    session = new_session(provider=fake, tools=[failing], approval="auto")
    recorder = Recorder(session)
    assert session.send("Go").result(DEADLINE).content == "It failed."
    call = session.history()[1].tool_calls[0]
    assert call.status is ToolCallStatus.FAILED
    assert call.result is not None
    assert call.result.startswith(f"error: tool {failing.name!r} ")
    assert named in call.result
    assert tool_messages(fake.requests[1].messages)["call_1"] == call.result
    assert [e.message for e in recorder.of(ErrorReported)] == [call.result]
    assert session.state is State.IDLE
    # The branch takes the next message, and the model answers it.
    assert session.send("Again").result(DEADLINE).content == "Still here."
    assert session.regenerate().result(DEADLINE).content == "echo: Again"
    assert_tree_valid(session.history())


def test_sys_exit_in_a_tool_leaves_the_other_sessions_of_the_process_working(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    other = new_session("other", provider=ScriptedProvider().reply("Before.").reply("After."))
    assert other.send("Hi").result(DEADLINE).content == "Before."
    fake = ScriptedProvider().tool_call("quit_now").reply("Done.")
    session = new_session(provider=fake, tools=[quit_now], approval="auto")
    assert session.send("Exit").result(DEADLINE).content == "Done."
    # Both run on the process's one background loop: it is still alive.
    assert other.send("Still there?").result(DEADLINE).content == "After."
    fresh = new_session("fresh", provider=ScriptedProvider().reply("New."))
    assert fresh.send("Hello").result(DEADLINE).content == "New."
    # What was stored says the same after a reopen.
    session.close()
    again = ContextSession.open(session.id, data_dir=data_dir, provider=ScriptedProvider())
    try:
        call = again.history()[1].tool_calls[0]
        assert call.status is ToolCallStatus.FAILED
        assert "SystemExit(3)" in (call.result or "")
        assert again.state is State.IDLE
    finally:
        again.close()


@pytest.mark.anyio
async def test_a_tool_raising_cancelled_error_on_a_running_loop(
    new_session: Callable[..., ContextSession],
) -> None:
    # The session lives on this loop, as in a notebook cell.
    fake = ScriptedProvider().tool_call("fetch_report").reply("No report.").reply("Hi.")
    session = new_session(provider=fake, tools=[fetch_report], approval="auto")
    assert (await session.send("Report")).content == "No report."
    assert session.history()[1].tool_calls[0].status is ToolCallStatus.FAILED
    assert (await session.send("Hello")).content == "Hi."


@pytest.mark.anyio
async def test_the_turn_task_cancelled_from_inside_still_frees_the_branch(
    new_session: Callable[..., ContextSession],
) -> None:
    # Not the tool's own CancelledError: the task running the turn is cancelled (here
    # by the tool itself, standing in for any code holding the task). The turn ends
    # cancelled, but the branch must not stay busy, nor the call "running".
    @tool
    async def cancel_my_task() -> str:
        """Cancel the task that runs this call."""
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)
        return "unreachable"

    fake = ScriptedProvider().tool_call("cancel_my_task").reply("Later.")
    session = new_session(provider=fake, tools=[cancel_my_task], approval="auto")
    with pytest.raises(asyncio.CancelledError):
        await session.send("Go")
    assert session.state is State.IDLE
    assert (await session.send("Again")).content == "Later."
    call = session.history()[1].tool_calls[0]
    assert call.status is ToolCallStatus.FAILED
    assert INTERRUPTED in (call.result or "")


# -- cut off while running: not denied ----------------------------------------------------


class SlowMail:
    """A sync tool that blocks until released, and records what it did."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self.sent: list[str] = []

        @tool
        def send_email(to: str) -> str:
            """Send an email (slowly)."""
            self.entered.set()
            self.release.wait(DEADLINE)
            self.sent.append(to)
            return "sent"

        @tool
        def archive(folder: str) -> str:
            """Archive a folder."""
            self.sent.append(f"archived {folder}")
            return "archived"

        self.tools = [send_email, archive]


@pytest.fixture
def mail() -> Iterator[SlowMail]:
    made = SlowMail()
    yield made
    made.release.set()  # let an abandoned worker thread finish


def test_a_cancel_while_a_sync_tool_runs_says_interrupted_not_denied(
    new_session: Callable[..., ContextSession], mail: SlowMail
) -> None:
    fake = ScriptedProvider().tool_calls(
        ("send_email", {"to": "boss@example.com"}), ("archive", {"folder": "inbox"})
    )
    fake.reply("Sorry.")
    session = new_session(provider=fake, tools=mail.tools, approval="auto")
    recorder = Recorder(session)
    turn = session.send("Mail my boss, then archive")
    assert mail.entered.wait(DEADLINE)
    turn.cancel()
    turn.result(DEADLINE)
    recorder.wait(entered(State.IDLE))
    mail.release.set()  # the thread Python could not stop does its work
    running, waiting = session.history()[1].tool_calls
    # The one that ran: failed, and the model is told it may have done its work.
    assert running.status is ToolCallStatus.FAILED
    assert running.result is not None
    assert INTERRUPTED in running.result
    assert MAY_HAVE_RUN in running.result
    assert "cancelled by the user" in running.result
    assert "denied" not in running.result
    assert running.reason == f"{INTERRUPTED} (cancelled by the user)"
    # The one that never started: approved (by the policy), not run; nobody denied it.
    assert (waiting.status, waiting.reason) == (ToolCallStatus.FAILED, NOT_RUN)
    assert "was approved, but its turn was stopped" in (waiting.result or "")
    assert "denied" not in (waiting.result or "")
    assert [(e.tool_call_id, e.status) for e in recorder.of(ToolCallResolved)][-2:] == [
        ("call_1", ToolCallStatus.FAILED),
        ("call_2", ToolCallStatus.FAILED),
    ]
    # The next request shows the model both answers.
    assert session.send("What happened?").result(DEADLINE).content == "Sorry."
    told = tool_messages(fake.requests[-1].messages)
    assert (told["call_1"], told["call_2"]) == (running.result, waiting.result)
    assert_tree_valid(session.history())


def test_closing_the_session_while_a_sync_tool_runs_records_it_as_interrupted(
    data_dir: Path, new_session: Callable[..., ContextSession], mail: SlowMail
) -> None:
    fake = ScriptedProvider().tool_call("send_email", {"to": "boss@example.com"})
    session = new_session(provider=fake, tools=mail.tools, approval="auto")
    session.send("Mail my boss")
    assert mail.entered.wait(DEADLINE)
    session.close()
    again = ContextSession.open(session.id, data_dir=data_dir, provider=ScriptedProvider())
    try:
        call = again.history()[1].tool_calls[0]
        assert call.status is ToolCallStatus.FAILED
        assert INTERRUPTED in (call.result or "")
    finally:
        again.close()


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_time_out_says_the_tool_may_have_done_its_work(
    new_session: Callable[..., ContextSession], is_async: bool
) -> None:
    release = threading.Event()

    def block() -> str:
        """Wait for a release that comes too late."""
        release.wait(DEADLINE)
        return "late"

    async def ablock() -> str:
        """Wait for an event that never fires."""
        await asyncio.Event().wait()
        return "late"

    slow = tool(ablock if is_async else block, name="slow")
    fake = ScriptedProvider().tool_call("slow").reply("Too slow.")
    session = new_session(provider=fake, tools=[slow], approval="auto", tool_timeout=0.1)
    try:
        assert session.send("Go").result(DEADLINE).content == "Too slow."
    finally:
        release.set()
    call = session.history()[1].tool_calls[0]
    assert call.status is ToolCallStatus.FAILED
    result = call.result or ""
    assert result.startswith("error: tool 'slow' timed out after 0.1 s")
    assert "check before running it again" in result
    if is_async:
        assert "cancelled part way" in result
    else:
        assert "may still be running" in result


def test_tools_have_no_time_limit_unless_one_is_set(
    new_session: Callable[..., ContextSession],
) -> None:
    # As SessionOptions documents: a long job (training a model) is not cut off.
    assert math.isinf(DEFAULT_TIMEOUT)
    session = new_session(provider=ScriptedProvider())
    assert session.tool_timeout is None


# -- text UTF-8 cannot hold ---------------------------------------------------------------


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    """A folder holding a file whose name is not UTF-8 (Latin-1, as old archives are)."""
    folder = tmp_path / "files"
    folder.mkdir()
    try:
        with open(os.path.join(os.fsencode(folder), b"r\xe9sum\xe9.txt"), "wb"):
            pass
    except OSError:  # pragma: no cover - a file system that refuses such names
        pytest.skip("this file system refuses non-UTF-8 file names")
    return folder


def _names(folder: Path) -> list[str]:
    names = os.listdir(folder)  # the name comes back with lone surrogates
    assert any("\udce9" in name for name in names)
    return names


def _assert_clean_everywhere(
    session: ContextSession, fake: ScriptedProvider, recorder: Recorder, data_dir: Path
) -> str:
    told = tool_messages(fake.requests[1].messages)["call_1"]
    _utf8(told)
    assert "\ufffd" in told  # the name kept, its undecodable bytes replaced
    history = session.history()
    assert history[1].tool_calls[0].result == told
    for event in recorder.of(ErrorReported):
        _utf8(event.message)
    # Memory and disk agree.
    stored = [json.loads(path.read_bytes()) for path in message_files(data_dir, session)]
    assert [m["content"] for m in stored if m["role"] == "tool"] == [told]
    return told


def test_a_tool_result_with_a_non_utf8_file_name(
    data_dir: Path, new_session: Callable[..., ContextSession], odd_folder: Path
) -> None:
    @tool
    def list_files() -> str:
        """List the folder, one name per line."""
        return "\n".join(sorted(_names(odd_folder)))

    @tool
    def list_names() -> list[str]:
        """List the folder."""
        return sorted(_names(odd_folder))

    for listing in (list_files, list_names):
        fake = ScriptedProvider().tool_call(listing.name).reply("One file.").reply("Hello.")
        session = new_session(provider=fake, tools=[listing], approval="auto")
        recorder = Recorder(session)
        assert session.send("What is there?").result(DEADLINE).content == "One file."
        told = _assert_clean_everywhere(session, fake, recorder, data_dir)
        assert session.history()[1].tool_calls[0].status is ToolCallStatus.DONE
        if listing is list_names:
            assert json.loads(told) == ["r\ufffdsum\ufffd.txt"]  # still JSON
        # Later turns on the branch work, and send clean text too.
        assert session.send("Thanks").result(DEADLINE).content == "Hello."
        for message in fake.requests[-1].messages:
            _utf8(message.content)


def test_a_tool_error_naming_a_non_utf8_file(
    data_dir: Path, new_session: Callable[..., ContextSession], odd_folder: Path
) -> None:
    @tool
    def read_first() -> str:
        """Read the first file (it refuses this one)."""
        name = _names(odd_folder)[0]
        raise ValueError(f"cannot read {name}: not a report")

    fake = ScriptedProvider().tool_call("read_first").reply("Unreadable.").reply("Hello.")
    session = new_session(provider=fake, tools=[read_first], approval="auto")
    recorder = Recorder(session)
    assert session.send("Read it").result(DEADLINE).content == "Unreadable."
    told = _assert_clean_everywhere(session, fake, recorder, data_dir)
    assert told == "error: ValueError: cannot read r\ufffdsum\ufffd.txt: not a report"
    assert [e.message for e in recorder.of(ErrorReported)] == [told]
    assert session.send("Thanks").result(DEADLINE).content == "Hello."


# -- an exception that cannot be printed --------------------------------------------------


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ fails")


def test_an_exception_whose_str_fails_is_still_a_readable_failure(
    new_session: Callable[..., ContextSession],
) -> None:
    @tool
    def broken() -> str:
        """Fail badly."""
        raise Unprintable

    fake = ScriptedProvider().tool_call("broken").reply("Broken.").reply("Hello.")
    session = new_session(provider=fake, tools=[broken], approval="auto")
    recorder = Recorder(session)
    assert session.send("Go").result(DEADLINE).content == "Broken."
    call = session.history()[1].tool_calls[0]
    assert call.status is ToolCallStatus.FAILED
    assert call.result == "error: Unprintable: <its message could not be shown: RuntimeError>"
    recorder.wait(seen(ErrorReported, kind="tool"))
    assert session.send("Again").result(DEADLINE).content == "Hello."


def test_a_call_whose_tool_never_started_is_not_said_to_have_run(
    new_session: Callable[..., ContextSession], mail: SlowMail
) -> None:
    # The cancel lands while call_1's tool runs; that tool finishes anyway (it catches
    # the cancellation), and call_2, next in line, is stopped before its tool starts.
    entered_save = threading.Event()

    @tool
    async def save_draft() -> str:
        """Save a draft, finishing even if interrupted."""
        entered_save.set()
        with contextlib.suppress(asyncio.CancelledError):  # careless: finishes regardless
            await asyncio.sleep(DEADLINE)
        return "saved"

    fake = ScriptedProvider().tool_calls(("save_draft", {}), ("archive", {"folder": "inbox"}))
    fake.reply("Sorry.")
    session = new_session(provider=fake, tools=[save_draft, *mail.tools], approval="auto")
    turn = session.send("Save, then archive")
    assert entered_save.wait(DEADLINE)
    turn.cancel()
    turn.result(DEADLINE)
    saved, archived = session.history()[1].tool_calls
    assert (saved.status, saved.result) == (ToolCallStatus.DONE, "saved")
    assert mail.sent == []  # archive never ran...
    # ...and the model is not told it may have: it never started.
    assert (archived.status, archived.reason) == (ToolCallStatus.FAILED, NOT_RUN)
    assert archived.result is not None
    assert "it had no effect" in archived.result
    assert INTERRUPTED not in archived.result
    assert MAY_HAVE_RUN not in archived.result
    assert session.send("What happened?").result(DEADLINE).content == "Sorry."
    told = tool_messages(fake.requests[-1].messages)
    assert told == {"call_1": "saved", "call_2": archived.result}
    assert_tree_valid(session.history())


def test_a_person_approved_call_stopped_before_its_tool_started_is_not_said_denied(
    new_session: Callable[..., ContextSession], mail: SlowMail
) -> None:
    # Approve both calls; stop while the first runs. The second was approved (the audit
    # log says so) and never ran: it is recorded as approved but not run, as a decision
    # that crossed the stop is, never as denied by the user.
    fake = ScriptedProvider().tool_calls(
        ("send_email", {"to": "boss@example.com"}), ("archive", {"folder": "inbox"})
    )
    fake.reply("Sorry.")
    session = new_session(provider=fake, tools=mail.tools)
    recorder = Recorder(session)
    turn = session.send("Mail my boss, then archive")
    waiting(recorder)
    assert [c.id for c in session.pending_tool_calls] == ["call_1", "call_2"]
    session.approve()
    assert mail.entered.wait(DEADLINE)
    turn.cancel()
    turn.result(DEADLINE)
    mail.release.set()
    _, archived = session.history()[1].tool_calls
    assert (archived.status, archived.reason) == (ToolCallStatus.FAILED, NOT_RUN)
    assert "archived inbox" not in mail.sent
    assert [(r.tool_call_id, r.approved) for r in session.approval_log()] == [
        ("call_1", True),
        ("call_2", True),
    ]
    told = tool_messages(session.history())
    assert "was approved, but its turn was stopped" in told["call_2"]
