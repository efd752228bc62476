"""A finished message committed again is made durable before compaction drops its line.

A finished message's durable copy is its journal line until compaction, which first
makes the message files durable. Batches fsync files as they are committed
(:mod:`cm_notebook.store.flushing`), and compaction skips what a batch did. A message
committed again after its batch (a tool call's result written by ``update_message``)
has a new file, which only its new journal line holds durably: compaction must fsync
it, whether this store, another one or another process wrote it, and whether or not
the journal was folded by someone else in between.

fsyncs are observed through the store's documented seam, ``FileStore(fsync=...)``, by
the inode of the file synced. The message's current file exists throughout (its
inode stays taken), so an fsync of that inode made after the update can only have been
of that file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from store_helpers import chain

from cm_notebook.model import ContextMetadata, Message
from cm_notebook.store import FileStore
from cm_notebook.store.flushing import FLUSH_EVERY

pytestmark = pytest.mark.anyio

CID = "c1"


class Recorder:
    """An ``fsync`` for FileStore that notes the inode of every file it syncs."""

    def __init__(self) -> None:
        self.synced: list[tuple[int, int]] = []

    def __call__(self, fd: int) -> None:
        st = os.fstat(fd)
        self.synced.append((st.st_dev, st.st_ino))
        os.fsync(fd)

    def mark(self) -> int:
        return len(self.synced)

    def synced_since(self, mark: int, path: Path) -> bool:
        """Whether the file now at ``path`` was fsync'd after ``mark``."""
        st = os.stat(path)
        return (st.st_dev, st.st_ino) in self.synced[mark:]


def message_file(data_dir: Path, message_id: str) -> Path:
    return data_dir / "contexts" / CID / "messages" / f"{message_id}.json"


def journal(data_dir: Path) -> Path:
    return data_dir / "contexts" / CID / "message_index.journal"


def copy_in_journal(data_dir: Path, message: Message) -> tuple[int, int, int]:
    """Where the journal holds ``message`` (its last line): offset, length, file size."""
    data = journal(data_dir).read_bytes()
    needle = f'"id":"{message.id}"'.encode()
    start = data.rindex(needle)
    start = data.rindex(b"\n", 0, start) + 1 if b"\n" in data[:start] else 0
    end = data.index(b"\n", start)
    head, _, content = data[start:end].partition(b"\t")
    assert content, "the line carries the message"
    return start + len(head) + 1, len(content), json.loads(head)["size"]


async def edited(store: FileStore, message_id: str, text: str) -> Message:
    """Commit the message again with new content (same status), as a tool result would."""
    message = await store.get_message(CID, message_id)
    changed = message.model_copy(update={"content": text})
    await store.update_message(CID, changed)
    return changed


async def test_an_update_after_its_batch_is_fsynced_by_compaction(data_dir: Path) -> None:
    recorder = Recorder()
    async with FileStore(data_dir, fsync=recorder) as store:
        await store.create_context(ContextMetadata(id=CID))
        ids = await chain(store, CID, FLUSH_EVERY)  # the last append pays the batch
        target = ids[5]
        assert recorder.synced_since(0, message_file(data_dir, target))  # by the batch

        mark = recorder.mark()
        await edited(store, target, "changed after its batch: must survive a power loss")
        assert not recorder.synced_since(mark, message_file(data_dir, target))  # not yet
        before = recorder.mark()
        await store.compact(CID)
        assert journal(data_dir).stat().st_size == 0  # the line is gone ...
        assert recorder.synced_since(mark, message_file(data_dir, target))  # ... file durable
        # The documented count: k + 7 with k = 1 (the updated file; the batch's other
        # files are durable already): the file, its folder, metadata.json (2), the
        # snapshot (2), the journal (2).
        assert recorder.mark() - before == 1 + 7
    async with FileStore(data_dir) as fresh:
        assert (await fresh.get_message(CID, target)).content.startswith("changed after")


async def test_an_update_by_another_store_is_fsynced_by_this_ones_compaction(
    data_dir: Path,
) -> None:
    """The other FileStore stands for another process: it has its own record of flushes."""
    recorder = Recorder()
    async with FileStore(data_dir, fsync=recorder) as store:
        await store.create_context(ContextMetadata(id=CID))
        ids = await chain(store, CID, FLUSH_EVERY)
        target = ids[5]
        mark = recorder.mark()
        async with FileStore(data_dir, fsync=recorder) as other:
            await edited(other, target, "changed by another writer after the batch")
        assert not recorder.synced_since(mark, message_file(data_dir, target))
        await store.compact(CID)
        assert journal(data_dir).stat().st_size == 0
        assert recorder.synced_since(mark, message_file(data_dir, target))


async def test_a_journal_folded_by_another_store_does_not_vouch_for_a_new_copy(
    data_dir: Path,
) -> None:
    """Another store folds the journal, then commits the message again at the very place
    (offset, length, size) of the new journal where this store's batch had synced an
    older version of it: that is another copy, and its file must be fsync'd."""
    recorder = Recorder()
    async with FileStore(data_dir, fsync=recorder) as store:
        await store.create_context(ContextMetadata(id=CID))
        ids = await chain(store, CID, 10)
        target = ids[5]
        await store.compact(CID)  # line numbers have two digits from here on
        # The first line of this journal; the batch below syncs its file.
        await edited(store, target, "version one")
        place = copy_in_journal(data_dir, await store.get_message(CID, target))
        await chain(store, CID, FLUSH_EVERY - 1)  # the 32nd commit: pays the batch
        assert recorder.synced_since(0, message_file(data_dir, target))

        async with FileStore(data_dir, fsync=recorder) as other:
            await other.compact(CID)
            mark = recorder.mark()
            # The first line of the new journal: same length, so the same place.
            await edited(other, target, "version two")
        assert copy_in_journal(data_dir, await store.get_message(CID, target)) == place, (
            "the scenario needs the new copy at the old one's place"
        )
        assert not recorder.synced_since(mark, message_file(data_dir, target))
        await store.compact(CID)
        assert journal(data_dir).stat().st_size == 0
        assert recorder.synced_since(mark, message_file(data_dir, target))
    async with FileStore(data_dir) as fresh:
        assert (await fresh.get_message(CID, target)).content == "version two"
