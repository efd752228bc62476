"""The threads sync tools run on: daemon threads, so an abandoned call never holds up exit.

A tool call that times out (or is stopped) is abandoned in its thread: Python cannot
stop a thread. That thread must not keep the process from exiting: a real script with
a tool that never returns, under ``tool_timeout`` inside ``asyncio.run()``, exits once
``main()`` returns. The calls still see the caller's context variables, give back
results and errors, and no more of them run at once than anyio's thread limiter allows.
"""

from __future__ import annotations

import asyncio
import contextvars
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from cm_notebook.model import ToolCallStatus
from cm_notebook.tools import run_tool, tool

pytestmark = pytest.mark.anyio

#: Seconds a process gets to exit: generous for a loaded machine; it exits in about two.
EXIT_DEADLINE = 90

HUNG_TOOL_SCRIPT = """
import asyncio, sys, threading
from cm_notebook import ContextSession, tool
from cm_notebook.testing import ScriptedProvider

@tool
def fetch(url: str) -> str:
    '''Fetch a page (the server never answers).'''
    threading.Event().wait()  # never returns
    return "page"

async def main():
    fake = ScriptedProvider().tool_call("fetch", {"url": "http://x"}).reply("ok")
    async with ContextSession.create(
        "t", data_dir=sys.argv[1], provider=fake, tools=[fetch], approval="auto",
        tool_timeout=0.5,
    ) as session:
        reply = await session.send("go")
        print(reply.content, session.history()[1].tool_calls[0].status.value, flush=True)

asyncio.run(main())
print("main returned", flush=True)
"""


def test_a_script_whose_tool_call_hangs_past_its_timeout_exits(tmp_path: Path) -> None:
    try:
        done = subprocess.run(
            [sys.executable, "-c", HUNG_TOOL_SCRIPT, str(tmp_path)],
            capture_output=True,
            timeout=EXIT_DEADLINE,
        )
    except subprocess.TimeoutExpired as exc:  # killed by run(): the abandoned thread held it
        pytest.fail(f"the process did not exit after main() returned: {exc.stdout!r}")
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert done.stdout.decode().split("\n")[:2] == ["ok failed", "main returned"]


REQUEST = contextvars.ContextVar("REQUEST", default="none")


async def test_a_sync_tool_runs_on_a_daemon_thread_with_the_callers_context() -> None:
    seen: list[tuple[str, bool]] = []

    @tool
    def where() -> str:
        """Say which request this is."""
        seen.append((REQUEST.get(), threading.current_thread().daemon))
        return REQUEST.get()

    REQUEST.set("r-42")
    outcome = await run_tool(where, {})
    assert (outcome.status, outcome.result) == (ToolCallStatus.DONE, "r-42")
    assert seen == [("r-42", True)]


async def test_a_sync_tools_error_comes_back_as_its_failure() -> None:
    @tool
    def broken() -> str:
        """Fail."""
        raise LookupError("no such page")

    outcome = await run_tool(broken, {})
    assert (outcome.status, outcome.result) == (
        ToolCallStatus.FAILED,
        "error: LookupError: no such page",
    )


async def test_no_more_sync_calls_run_at_once_than_the_thread_limiter_allows() -> None:
    limiter = anyio.to_thread.current_default_thread_limiter()
    bound = int(limiter.total_tokens)
    extra = 5
    release = threading.Event()
    all_in = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()

    @tool
    def wait() -> str:
        """Wait to be let go."""
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            if running == bound:
                all_in.set()
        release.wait(60)
        with lock:
            running -= 1
        return "done"

    outcomes: list[str] = []

    async def call() -> None:
        outcomes.append((await run_tool(wait, {})).result)

    try:
        async with anyio.create_task_group() as group:
            for _ in range(bound + extra):
                group.start_soon(call)
            # The first ``bound`` calls enter their threads; the others wait for a place
            # (waited for on asyncio's own executor: anyio's threads would need a place).
            assert await asyncio.to_thread(all_in.wait, 60)
            assert limiter.statistics().tasks_waiting == extra
            assert most == bound
            release.set()
    finally:
        release.set()
    assert outcomes == ["done"] * (bound + extra)
    assert most == bound
