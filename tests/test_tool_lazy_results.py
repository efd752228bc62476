"""A tool's lazy result (a generator, ``map``, a cursor) runs where the tool runs.

A plain function returning a generator returns at once; the work happens as the
generator is read. It is read in the tool's worker thread, within its time limit: not
later on the event loop (which froze the kernel, past the limit and out of a stop's
reach), and an error it raises is the tool's failure, not a result. An async tool's
lazy result is read on the loop's thread, where the tool made it.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator

import pytest

from cm_notebook.model import ToolCallStatus
from cm_notebook.tools import run_tool, tool

pytestmark = pytest.mark.anyio
DONE, FAILED = ToolCallStatus.DONE, ToolCallStatus.FAILED


async def test_a_lazy_result_is_read_in_the_tools_thread() -> None:
    readers: list[int] = []

    def pages(q: str) -> Iterator[str]:
        for i in range(3):
            readers.append(threading.get_ident())
            yield f"{q}-{i}"

    @tool
    def search(q: str) -> Iterator[str]:
        """Search, lazily."""
        return pages(q)

    outcome = await run_tool(search, {"q": "x"})
    assert (outcome.status, outcome.result) == (DONE, '["x-0","x-1","x-2"]')
    assert threading.get_ident() not in readers


async def test_an_async_tools_lazy_result_is_read_where_the_tool_made_it() -> None:
    # A sqlite3 cursor can be read only in the thread that made it: an async tool's,
    # on the loop's thread. Read there, as the list it yields.
    @tool
    async def query() -> Iterator[tuple[int]]:
        """Query, lazily."""
        return sqlite3.connect(":memory:").execute("select 1 union select 2")

    outcome = await run_tool(query, {})
    assert (outcome.status, outcome.result) == (DONE, "[[1],[2]]")


async def test_a_lazy_result_reading_past_the_time_limit_times_out() -> None:
    release = threading.Event()

    def slow() -> Iterator[str]:
        yield "first"
        release.wait(5)  # the next page does not come within the limit
        yield "late"

    @tool(timeout=0.2)
    def fetch() -> Iterator[str]:
        """Fetch pages."""
        return slow()

    try:
        outcome = await run_tool(fetch, {})
    finally:
        release.set()
    assert outcome.status is FAILED
    assert outcome.result.startswith("error: tool 'fetch' timed out after 0.2 s")


async def test_an_error_while_the_result_is_read_fails_the_call() -> None:
    def broken() -> Iterator[int]:
        yield 1
        raise ConnectionError("the cursor's connection dropped")

    @tool
    def rows() -> Iterator[int]:
        """Rows."""
        return broken()

    outcome = await run_tool(rows, {})
    assert (outcome.status, outcome.result) == (
        FAILED,
        "error: ConnectionError: the cursor's connection dropped",
    )


async def test_an_endless_lazy_result_is_read_only_as_far_as_the_text_can_show() -> None:
    def endless() -> Iterator[int]:
        n = 0
        while True:
            yield n
            n += 1

    @tool
    def count() -> Iterator[int]:
        """Count for ever."""
        return endless()

    outcome = await run_tool(count, {}, max_result_chars=200)
    assert outcome.status is DONE
    assert outcome.result.startswith("[0,1,2,3")
    assert "[truncated: showing the first" in outcome.result
