"""Where a store's file work runs (cm_notebook.store.workers): long-lived threads."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import anyio
import pytest

from cm_notebook._loop import start_loop_thread
from cm_notebook.model import ContextMetadata, Message
from cm_notebook.store import FileStore
from cm_notebook.store.workers import MAX_WORKERS, run_blocking

pytestmark = pytest.mark.anyio


async def test_calls_reuse_long_lived_threads() -> None:
    # Two calls at once: the pool has at least two threads now. (With one, a call made
    # the instant the previous one reported back may find that thread not yet idle
    # again, and the pool then starts a second one, once.)
    both = threading.Barrier(2, timeout=5)
    await asyncio.gather(*(run_blocking(both.wait) for _ in range(2)))
    before = {thread.ident for thread in threading.enumerate()}
    used = {await run_blocking(threading.get_ident) for _ in range(50)}
    after = {thread.ident: thread.name for thread in threading.enumerate()}
    assert after.keys() <= before, after  # no thread was started for a call...
    assert used <= after.keys()  # ...or ended after one
    assert all(after[ident].startswith("cm_notebook-file") for ident in used)
    assert threading.get_ident() not in used


async def test_concurrent_calls_run_side_by_side_up_to_the_limit() -> None:
    started = threading.Barrier(4, timeout=5)

    def meet() -> int:
        started.wait()  # deadlocks (BrokenBarrierError) unless four run at once
        return threading.get_ident()

    idents = await asyncio.gather(*(run_blocking(meet) for _ in range(4)))
    assert len(set(idents)) == 4
    assert MAX_WORKERS >= 4


async def test_a_cancelled_call_finishes_before_the_cancellation_arrives() -> None:
    finished = threading.Event()

    def slow_write() -> None:
        time.sleep(0.2)
        finished.set()

    with anyio.move_on_after(0.02) as scope:
        await run_blocking(slow_write)
        assert finished.is_set()  # never abandoned half-way: a started write completes
        await anyio.sleep(1)  # the cancellation arrives at the caller's next checkpoint
    assert scope.cancel_called
    assert scope.cancelled_caught


async def test_errors_come_back_to_the_caller() -> None:
    def fail() -> None:
        raise OSError(5, "input/output error")

    with pytest.raises(OSError, match="input/output error"):
        await run_blocking(fail)


def test_a_store_driven_from_its_own_loop_thread_keeps_its_threads(tmp_path: Path) -> None:
    # The sessions' store loop runs every call as its own task: no thread per call.
    loop, thread = start_loop_thread("test-store-loop")
    store = FileStore(tmp_path)
    before = threading.active_count()
    try:
        metadata = asyncio.run_coroutine_threadsafe(
            store.create_context(ContextMetadata(id="c1")), loop
        ).result()
        parent = None
        for number in range(40):
            message = Message(role="user", content=f"message {number}", parent_id=parent)
            asyncio.run_coroutine_threadsafe(
                store.append_message(metadata.id, message, branch="main"), loop
            ).result()
            parent = message.id
        assert threading.active_count() - before <= 2
        assert len(os.listdir(tmp_path / "contexts" / "c1" / "messages")) == 40
    finally:
        asyncio.run_coroutine_threadsafe(store.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
