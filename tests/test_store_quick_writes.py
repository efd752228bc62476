"""Writes of a streaming message (a reply's placeholder, a checkpoint) are made on the
caller's thread when they wait for nothing, and never make that thread wait.

Such a write commits nothing and makes no fsync, so the store makes it at once instead
of handing it to a worker thread. These tests hold the store's locks the way real
writers do (a write made on a worker whose fsync is held back, through
``FileStore(fsync=...)``)
and check that the event loop keeps running meanwhile, that the write is still made
once the lock is free, and that a compaction it makes due is left to the next write.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from store_helpers import HeldFsync, chain, msg, ticks_while

from cm_notebook.model import ContextMetadata, Message, MessageStatus
from cm_notebook.store import FileStore
from cm_notebook.store.index import COMPACT_MIN_LINES

pytestmark = pytest.mark.anyio


def streaming_reply(parent: str) -> Message:
    return msg("assistant", parent, "", status=MessageStatus.STREAMING)


async def test_a_placeholder_waits_for_a_writer_of_another_store_off_the_loop(
    data_dir: Path,
) -> None:
    fsync = HeldFsync()
    async with FileStore(data_dir) as mine, FileStore(data_dir, fsync=fsync) as other:
        await mine.create_context(ContextMetadata(id="c1"))
        (question,) = await chain(mine, "c1", 1)
        # The other store's durable write (its first there: made on a worker) holds
        # the context's lock until released.
        fsync.hold()
        blocking = asyncio.ensure_future(
            other.append_message("c1", msg("user", None, "elsewhere"), branch=None)
        )
        await asyncio.to_thread(fsync.waiting.wait, 10)
        reply = streaming_reply(question)
        ticks = await ticks_while(mine.append_message("c1", reply, branch="main"), fsync)
        await blocking
        # The loop ran on while the placeholder waited for the lock (a wait on the
        # loop's own thread would have counted no tick in those 0.3 s)...
        assert ticks > 20
        # ...and the placeholder was written once the lock was free.
        assert await mine.path("c1") == [question, reply.id]
        assert (await mine.get_message("c1", reply.id)).status is MessageStatus.STREAMING


async def test_a_checkpoint_waits_for_a_write_of_its_own_store_off_the_loop(
    data_dir: Path,
) -> None:
    fsync = HeldFsync()
    async with FileStore(data_dir, fsync=fsync) as store:
        await store.create_context(ContextMetadata(id="c1"))
        (question,) = await chain(store, "c1", 1)
        reply = streaming_reply(question)
        await store.append_message("c1", reply, branch="main")
        # A write of this store made on a worker (a new branch: metadata.json) holds
        # the context's locks while its fsync is held.
        fsync.hold()
        blocking = asyncio.ensure_future(store.create_branch("c1", "aside", head=question))
        await asyncio.to_thread(fsync.waiting.wait, 10)
        checkpoint = reply.model_copy(update={"content": "half an answer"})
        ticks = await ticks_while(store.update_message("c1", checkpoint), fsync)
        await blocking
        assert ticks > 20
        assert (await store.get_message("c1", reply.id)).content == "half an answer"


async def test_a_compaction_a_placeholder_makes_due_is_made_by_the_next_write(
    data_dir: Path,
) -> None:
    fsync = HeldFsync()
    folder = data_dir / "contexts" / "c1"
    async with FileStore(data_dir, fsync=fsync) as store:
        await store.create_context(ContextMetadata(id="c1"))
        # One line short of the first compaction.
        ids = await chain(store, "c1", COMPACT_MIN_LINES - 1)
        snapshot = (folder / "message_index.json").stat().st_ino
        fsyncs = fsync.calls
        reply = streaming_reply(ids[-1])
        await store.append_message("c1", reply, branch="main")
        # Due now, but not made by the placeholder's write: no fsync, same snapshot.
        assert fsync.calls == fsyncs
        assert (folder / "message_index.json").stat().st_ino == snapshot
        assert len((folder / "message_index.journal").read_bytes().splitlines()) == (
            COMPACT_MIN_LINES
        )
        final = reply.model_copy(update={"content": "done", "status": MessageStatus.COMPLETE})
        await store.update_message("c1", final)
        # The reply's final state is durable, and the next write compacted the journal.
        assert (folder / "message_index.json").stat().st_ino != snapshot
        assert (folder / "message_index.journal").stat().st_size == 0
    async with FileStore(data_dir) as fresh:
        assert await fresh.path("c1") == [*ids, reply.id]
        assert (await fresh.get_message("c1", reply.id)).content == "done"


async def test_a_placeholder_in_a_context_not_opened_yet_is_written(data_dir: Path) -> None:
    async with FileStore(data_dir) as maker:
        await maker.create_context(ContextMetadata(id="c1"))
        (question,) = await chain(maker, "c1", 1)
    async with FileStore(data_dir) as store:
        reply = streaming_reply(question)
        await store.append_message("c1", reply, branch="main")
        assert await store.path("c1") == [question, reply.id]
