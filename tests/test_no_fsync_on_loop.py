"""No fsync on the event loop's thread: in a notebook that loop is the kernel's (every
cell and view waits while it blocks), in the server it serves every client.

A profile hook on the loop's thread sees every call of ``os.fsync`` made there, however
the code that makes it got hold of the function.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from test_session_support import DEADLINE, Recorder, seen, until

from cm_notebook.events import ToolApprovalRequested
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool
from cm_notebook.widgets import ToolApproval


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@contextlib.contextmanager
def fsyncs_on_this_thread() -> Iterator[list[str]]:
    """Where this thread calls ``fsync`` while the block runs (file:line, in order)."""
    calls: list[str] = []

    def hook(frame: FrameType, event: str, arg: Any) -> None:
        if event == "c_call" and getattr(arg, "__name__", None) == "fsync":
            calls.append(f"{frame.f_code.co_filename}:{frame.f_lineno}")

    sys.setprofile(hook)
    try:
        yield calls
    finally:
        sys.setprofile(None)


def test_a_decision_and_closing_the_session_do_not_fsync_on_the_loop(data_dir: Path) -> None:
    async def main() -> list[str]:
        fake = ScriptedProvider(strict=True).tool_call("add", {"a": 20, "b": 22}).reply("42.")
        session = ContextSession.create("decisions", provider=fake, tools=[add], data_dir=data_dir)
        recorder = Recorder(session)
        with fsyncs_on_this_thread() as calls:
            turn = session.send("Add")
            await asyncio.wait_for(recorder.await_(seen(ToolApprovalRequested)), DEADLINE)
            session.approve("call_1")  # a person's decision: recorded in the audit log
            assert (await asyncio.wait_for(turn, DEADLINE)).content == "42."
            await session.aclose()  # the signal log's last fsync
        assert [(r.tool_call_id, r.approved) for r in session.approval_log()] == [("call_1", True)]
        return calls

    assert asyncio.run(main()) == []


def test_a_reply_long_enough_to_compact_the_signal_log_does_not_fsync_on_the_loop(
    data_dir: Path,
) -> None:
    # The log's records of one long reply pass its size limit (4 MiB): the compaction
    # writes and fsyncs a new file, which must not happen on the loop.
    chunks = [f"{n:05d} " + "x" * 250 for n in range(20_000)]

    async def main() -> tuple[list[str], str]:
        fake = ScriptedProvider(strict=True).reply("".join(chunks), chunks=chunks)
        session = ContextSession.create("long", provider=fake, data_dir=data_dir)
        with fsyncs_on_this_thread() as calls:
            reply = await asyncio.wait_for(session.send("Go on"), DEADLINE)
        await session.aclose()
        return calls, reply.content

    calls, content = asyncio.run(main())
    assert content == "".join(chunks)
    assert calls == []


def test_allowing_a_tool_for_the_context_by_click_does_not_fsync_on_the_loop(
    data_dir: Path,
) -> None:
    # The context's allow-list is written with a lock and fsyncs: the click's decision
    # is made on a worker thread, and the row shows it on the loop afterwards.
    async def main() -> tuple[list[str], str]:
        fake = ScriptedProvider(strict=True).tool_call("add", {"a": 20, "b": 22}).reply("42.")
        session = ContextSession.create("allow", provider=fake, tools=[add], data_dir=data_dir)
        approvals = ToolApproval(session)
        with fsyncs_on_this_thread() as calls:
            turn = session.send("Add")
            row = await until(lambda: approvals.rows.get(("call_1", "main")))
            click = threading.Thread(target=row.context_button.click)
            click.start()
            assert (await asyncio.wait_for(turn, DEADLINE)).content == "42."
            click.join()
            await until(lambda: session.allowed_tools()["context"] == ["add"])
            status = await until(lambda: "done" in row.status.value and row.status.value)
        approvals.close()
        await session.aclose()
        return calls, status

    calls, status = asyncio.run(main())
    assert "42" in status  # the call's outcome, not overwritten by the click's echo
    assert calls == []
