"""A finished message written on the caller's thread is acknowledged only once its
journal line is fsync'd, and that fsync is waited for without the context's locks.

When every lock of its context is free, a store writes a finished message on the
caller's thread too (see ``cm_notebook.store.quick_writes``): its journal line, the
commit point, without an fsync; the fsync is made on another thread, beside those of
the other writes made meanwhile (``cm_notebook.store.group_sync``). fsyncs are held
back and failed through the store's documented seam, ``FileStore(fsync=...)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import sys
import weakref
from pathlib import Path

import pytest
from store_helpers import HeldFsync, chain, msg, ticks_while

from cm_notebook.errors import StoreIOError
from cm_notebook.model import ContextMetadata, MessageStatus
from cm_notebook.store import FileStore
from cm_notebook.store.flushing import FLUSH_EVERY

pytestmark = pytest.mark.anyio


async def opened(store: FileStore, context_id: str) -> str:
    """Create ``context_id`` with one message (its first write, made on a worker, opens
    it in ``store``); the message's id."""
    await store.create_context(ContextMetadata(id=context_id))
    (first,) = await chain(store, context_id, 1)
    return first


async def test_an_append_returns_only_after_its_line_is_fsynced_and_the_loop_runs_meanwhile(
    data_dir: Path,
) -> None:
    fsync = HeldFsync()
    async with FileStore(data_dir, fsync=fsync) as store:
        first = await opened(store, "c1")
        fsync.hold()
        reply = msg("assistant", first, "an answer")
        appending = asyncio.ensure_future(store.append_message("c1", reply, branch="main"))
        await asyncio.to_thread(fsync.waiting.wait, 10)
        assert not appending.done()  # its fsync is held: not acknowledged yet
        ticks = await ticks_while(appending, fsync)
        assert ticks > 20  # the loop ran on while the fsync waited
        assert appending.done()
        assert appending.exception() is None
    async with FileStore(data_dir) as fresh:
        assert await fresh.path("c1") == [first, reply.id]


async def test_a_final_state_returns_only_after_its_line_is_fsynced(data_dir: Path) -> None:
    fsync = HeldFsync()
    async with FileStore(data_dir, fsync=fsync) as store:
        first = await opened(store, "c1")
        reply = msg("assistant", first, "", status=MessageStatus.STREAMING)
        await store.append_message("c1", reply, branch="main")
        fsync.hold()
        final = reply.model_copy(update={"content": "done", "status": MessageStatus.COMPLETE})
        finishing = asyncio.ensure_future(store.update_message("c1", final))
        await asyncio.to_thread(fsync.waiting.wait, 10)
        await asyncio.sleep(0.1)
        assert not finishing.done()
        fsync.release()
        await finishing
        assert (await store.get_message("c1", reply.id)).status is MessageStatus.COMPLETE


async def test_the_context_is_not_locked_while_a_line_waits_for_its_fsync(
    data_dir: Path,
) -> None:
    # Another writer (a second store: another process, as far as locks go) writes into
    # the context while this store's acknowledged-to-be line waits for its fsync.
    fsync = HeldFsync()
    async with FileStore(data_dir, fsync=fsync) as store, FileStore(data_dir) as other:
        first = await opened(store, "c1")
        fsync.hold()
        appending = asyncio.ensure_future(
            store.append_message("c1", msg("assistant", first, "mine"), branch="main")
        )
        await asyncio.to_thread(fsync.waiting.wait, 10)
        aside = msg("user", None, "meanwhile")
        await asyncio.wait_for(other.append_message("c1", aside, branch=None), timeout=10)
        assert not appending.done()
        fsync.release()
        await appending
        assert aside.id in await store.index("c1")


async def test_writes_of_several_contexts_waiting_together_are_all_acknowledged(
    data_dir: Path,
) -> None:
    fsync = HeldFsync()
    async with FileStore(data_dir, fsync=fsync) as store:
        firsts = [await opened(store, f"c{n}") for n in range(5)]
        calls = fsync.calls
        fsync.hold()
        replies = [msg("assistant", first, f"answer {n}") for n, first in enumerate(firsts)]
        held = asyncio.ensure_future(store.append_message("c0", replies[0], branch="main"))
        await asyncio.to_thread(fsync.waiting.wait, 10)
        # These lines are handed over while the first fsync is held: they wait too.
        others = [
            asyncio.ensure_future(store.append_message(f"c{n}", replies[n], branch="main"))
            for n in range(1, 5)
        ]
        await asyncio.sleep(0.1)
        assert not any(task.done() for task in [held, *others])
        fsync.release()
        await asyncio.wait_for(asyncio.gather(held, *others), timeout=10)
        assert fsync.calls - calls >= 5  # every context's line had its fsync
    async with FileStore(data_dir) as fresh:
        for n, first in enumerate(firsts):
            assert await fresh.path(f"c{n}") == [first, replies[n].id]


async def test_start_append_is_done_only_after_its_line_is_fsynced(data_dir: Path) -> None:
    fsync = HeldFsync()
    async with FileStore(data_dir, fsync=fsync) as store:
        first = await opened(store, "c1")
        fsync.hold()
        started = store.start_append("c1", msg("assistant", first, "later"), branch="main")
        await asyncio.to_thread(fsync.waiting.wait, 10)
        await asyncio.sleep(0.1)
        assert not started.done()
        fsync.release()
        await asyncio.wait_for(asyncio.wrap_future(started), timeout=10)


class FailingFsync:
    """An ``fsync`` that fails with EIO once :attr:`failing` is set."""

    def __init__(self) -> None:
        self.failing = False

    def __call__(self, fd: int) -> None:
        if self.failing:
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)


async def test_a_failed_fsync_is_the_writes_error_naming_the_journal(data_dir: Path) -> None:
    fsync = FailingFsync()
    async with FileStore(data_dir, fsync=fsync) as store:
        first = await opened(store, "c1")
        fsync.failing = True
        with pytest.raises(StoreIOError, match=r"message_index\.journal"):
            await store.append_message("c1", msg("assistant", first, "lost?"), branch="main")
        started = store.start_append("c1", msg("assistant", first, "again"), branch=None)
        with pytest.raises(StoreIOError, match=r"message_index\.journal"):
            await asyncio.wait_for(asyncio.wrap_future(started), timeout=10)


@pytest.mark.skipif(sys.platform == "win32", reason="fork")
async def test_a_forked_child_makes_its_own_fsyncs(data_dir: Path) -> None:
    # The fsync pool's threads are the parent's: a child that inherited the module
    # state without them must start its own, or its writes would wait for ever.
    async with FileStore(data_dir) as store:
        first = await opened(store, "c1")
        await store.append_message("c1", msg("assistant", first, "parent"), branch="main")
    pid = os.fork()
    if pid == 0:  # the child: a fresh store and loop, its own writes
        code = 1
        try:

            async def child() -> None:
                async with FileStore(data_dir) as mine:
                    head = (await mine.get_metadata("c1")).branches["main"].head
                    await mine.append_message("c1", msg("user", head, "child"), branch=None)
                    (message,) = await chain(mine, "c1", 1)
                    assert message

            asyncio.run(asyncio.wait_for(child(), timeout=20))
            code = 0
        finally:
            os._exit(code)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


async def test_an_event_loop_that_awaited_a_write_is_not_kept_alive(data_dir: Path) -> None:
    loops: list[weakref.ref[asyncio.AbstractEventLoop]] = []

    async def script(n: int) -> None:
        loops.append(weakref.ref(asyncio.get_running_loop()))
        async with FileStore(data_dir) as store:
            first = await opened(store, f"c{n}")  # a worker's write opens the context
            await store.append_message(f"c{n}", msg("assistant", first, "here"), branch="main")

    def run_all() -> None:
        for n in range(5):
            asyncio.run(script(n))

    await asyncio.to_thread(run_all)
    gc.collect()
    assert [ref() for ref in loops] == [None] * 5


def _open_files_under(folder: Path) -> list[str]:
    """The files under ``folder`` this process holds open (Linux's /proc)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder)):
                held.append(target)
    return sorted(held)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
async def test_a_store_closed_while_a_write_waits_for_its_fsync_leaves_no_file_open(
    data_dir: Path,
) -> None:
    fsync = HeldFsync()
    store = FileStore(data_dir, fsync=fsync)
    await store.create_context(ContextMetadata(id="c1"))
    ids = await chain(store, "c1", FLUSH_EVERY - 1)
    fsync.hold()
    # The 32nd finished message makes a batch of fsyncs due, made after its own fsync.
    last = asyncio.ensure_future(
        store.append_message("c1", msg("user", ids[-1], "the last"), branch="main")
    )
    await asyncio.to_thread(fsync.waiting.wait, 10)
    await store.close()
    fsync.release()
    await asyncio.wait_for(last, timeout=10)
    assert _open_files_under(data_dir) == []
