"""Races between writers, late writes, and links planted in a context folder.

Everything happens on real files; where a test stands in for another process it does
what that process would do to the folder (hold its lock file, rename it away), nothing
more.
"""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import filelock
import pytest
from store_helpers import chain, msg

from cm_notebook.errors import BranchMovedError, ContextNotFoundError, CorruptDataError, StateError
from cm_notebook.model import MessageStatus
from cm_notebook.store import FileStore, StoreWarning

pytestmark = pytest.mark.anyio


def folder(data_dir: Path, cid: str = "c1") -> Path:
    return data_dir / "contexts" / cid


# -- late checkpoints -------------------------------------------------------------------


async def test_a_late_checkpoint_cannot_reopen_a_finished_message(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 1)
    reply = msg("assistant", ids[0], "", status=MessageStatus.STREAMING)
    await store.append_message("c1", reply, branch="main")
    checkpoint = reply.model_copy(update={"content": "Once"})
    final = reply.model_copy(update={"content": "Once upon", "status": MessageStatus.COMPLETE})
    await store.update_message("c1", final)
    # A checkpoint that lost the race for the lock arrives after the final update.
    with pytest.raises(StateError, match="already finished"):
        await store.update_message("c1", checkpoint)
    got = await store.get_message("c1", reply.id)
    assert (got.status, got.content) == (MessageStatus.COMPLETE, "Once upon")
    assert not (folder(data_dir) / f".streaming-{reply.id}.lock").exists()
    await store.close()  # the writer goes away; the final state stays final
    async with FileStore(data_dir) as fresh:
        got = await fresh.get_message("c1", reply.id)
        assert (got.status, got.content) == (MessageStatus.COMPLETE, "Once upon")
        assert (await fresh.index("c1"))[reply.id].status is MessageStatus.COMPLETE


async def test_checkpoints_racing_the_final_update_never_win(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 1)
    reply = msg("assistant", ids[0], "", status=MessageStatus.STREAMING)
    await store.append_message("c1", reply, branch="main")
    refused: list[str] = []

    async def checkpoint(text: str) -> None:
        try:
            await store.update_message("c1", reply.model_copy(update={"content": text}))
        except StateError:
            refused.append(text)

    final = reply.model_copy(update={"content": "the end", "status": MessageStatus.COMPLETE})
    async with anyio.create_task_group() as group:
        for i in range(20):
            group.start_soon(checkpoint, f"part {i}")
        group.start_soon(store.update_message, "c1", final)
        for i in range(20, 40):
            group.start_soon(checkpoint, f"part {i}")
    got = await store.get_message("c1", reply.id)
    assert (got.status, got.content) == (MessageStatus.COMPLETE, "the end")
    assert refused  # the ones that came after the final update were told so


# -- optimistic head moves --------------------------------------------------------------


async def test_append_with_expected_head_refuses_a_moved_branch(store: FileStore) -> None:
    ids = await chain(store, "c1", 2)
    # Two writers both read the head ids[1] and answer it.
    first = msg("user", ids[1], "first")
    second = msg("user", ids[1], "second")
    await store.append_message("c1", first, branch="main", expected_head=ids[1])
    with pytest.raises(StateError, match="moved") as info:
        await store.append_message("c1", second, branch="main", expected_head=ids[1])
    assert first.id in str(info.value)
    assert await store.path("c1") == [*ids, first.id]
    assert second.id not in await store.index("c1")  # nothing was written
    # Without expected_head the head moves unconditionally (last writer wins).
    await store.append_message("c1", second, branch="main")
    assert await store.path("c1") == [*ids, second.id]
    # A new, empty branch has the head None.
    await store.create_branch("c1", "empty", head=None)
    root = msg("user", None, "root")
    await store.append_message("c1", root, branch="empty", expected_head=None)
    with pytest.raises(StateError, match="moved"):
        await store.append_message("c1", msg(), branch="empty", expected_head=None)


async def test_set_branch_head_with_expected_head_is_a_compare_and_set(store: FileStore) -> None:
    ids = await chain(store, "c1", 4)
    # A rewind read the head ids[3]; another writer appended meanwhile.
    moved = msg("user", ids[3], "meanwhile")
    await store.append_message("c1", moved, branch="main")
    with pytest.raises(BranchMovedError, match="moved"):
        await store.set_branch_head("c1", "main", ids[2], expected_head=ids[3])
    assert (await store.get_metadata("c1")).branches["main"].head == moved.id
    await store.set_branch_head("c1", "main", ids[2], expected_head=moved.id)
    assert await store.path("c1") == ids[:3]


async def test_two_threads_answering_one_head_do_not_fork_it_silently(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 1)
    results: dict[str, str] = {}

    async def answer(store: FileStore, name: str) -> None:
        head = (await store.get_metadata("c1")).branches["main"].head
        message = msg("assistant", head, name)
        try:
            await store.append_message("c1", message, branch="main", expected_head=head)
        except StateError:
            results[name] = "refused"
        else:
            results[name] = message.id

    async with FileStore(data_dir) as other, anyio.create_task_group() as group:
        for i in range(10):
            group.start_soon(answer, store if i % 2 else other, f"w{i}")
    path = await store.path("c1")
    accepted = [mid for mid in results.values() if mid != "refused"]
    # Every accepted append extended the path; none was orphaned by a later one.
    assert path[0] == ids[0]
    assert sorted(path[1:]) == sorted(accepted)


# -- the context vanishes under a writer --------------------------------------------------


async def test_writer_waiting_for_the_lock_of_a_deleted_context(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 1)
    holder = filelock.FileLock(folder(data_dir) / ".lock")  # another writer, mid-write
    outcome: list[BaseException] = []

    async def write() -> None:
        try:
            await waiter.append_message("c1", msg("user", ids[0]), branch="main")
        except Exception as exc:
            outcome.append(exc)

    async with FileStore(data_dir, lock_timeout=10) as waiter:
        with holder:
            async with anyio.create_task_group() as group:
                group.start_soon(write)
                await anyio.sleep(0.2)  # the writer is now polling for the lock
                # What delete_context does in the other process: one rename.
                os.rename(folder(data_dir), data_dir / "contexts" / ".trash-c1-0")
                holder.release()
    assert len(outcome) == 1
    assert isinstance(outcome[0], ContextNotFoundError), repr(outcome[0])
    assert not folder(data_dir).exists()


# -- links planted in a context folder ----------------------------------------------------


async def test_message_file_linked_outside_is_not_followed(
    store: FileStore, data_dir: Path, tmp_path: Path
) -> None:
    ids = await chain(store, "c1", 2)
    # Folded first: while the journal holds a message, a read restores its file from it.
    await store.compact("c1")
    outside = tmp_path / "outside.json"
    message_file = folder(data_dir) / "messages" / f"{ids[1]}.json"
    outside.write_bytes(message_file.read_bytes().replace(b"main 1", b"SECRET"))
    message_file.unlink()
    message_file.symlink_to(outside)
    with pytest.raises(CorruptDataError, match="symbolic link") as info:
        await store.get_message("c1", ids[1])
    assert "SECRET" not in str(info.value)
    with pytest.warns(StoreWarning, match="symbolic link"):
        page = await store.page("c1")
    assert [m.content for m in page] == ["main 0"]


async def test_messages_folder_linked_outside_is_never_written(
    store: FileStore, data_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    messages = folder(data_dir) / "messages"
    messages.rmdir()
    messages.symlink_to(outside, target_is_directory=True)
    async with FileStore(data_dir) as other:
        with pytest.raises(CorruptDataError, match="symbolic link"):
            await other.append_message("c1", msg(), branch="main")
    assert list(outside.iterdir()) == []


async def test_journal_linked_outside_is_never_written(
    store: FileStore, data_dir: Path, tmp_path: Path
) -> None:
    ids = await chain(store, "c1", 2)
    # Head moves are committed to the journal: fold them into metadata.json first, as
    # a link in its place is not read (so its head moves are not salvaged either).
    await store.set_active_branch("c1", "main")
    journal = folder(data_dir) / "message_index.journal"
    outside = tmp_path / "outside.journal"
    outside.write_bytes(journal.read_bytes())
    journal.unlink()
    journal.symlink_to(outside)
    before = outside.read_bytes()
    async with FileStore(data_dir) as other:
        with pytest.warns(StoreWarning, match="symbolic link"):
            assert await other.path("c1") == ids  # rebuilt from the message files
        more = await chain(other, "c1", 1)
    assert outside.read_bytes() == before
    assert not journal.is_symlink()
    assert await store.path("c1") == [*ids, *more]


async def test_metadata_linked_outside_is_not_read(
    store: FileStore, data_dir: Path, tmp_path: Path
) -> None:
    metadata = folder(data_dir) / "metadata.json"
    outside = tmp_path / "metadata.json"
    outside.write_bytes(metadata.read_bytes().replace(b'"first"', b'"SECRET"'))
    metadata.unlink()
    metadata.symlink_to(outside)
    async with FileStore(data_dir) as other:
        with pytest.raises(CorruptDataError, match="symbolic link"):
            await other.get_metadata("c1")
        with pytest.warns(StoreWarning, match="symbolic link"):
            assert await other.list_contexts() == []


# -- a journal another writer replaced ---------------------------------------------------


async def test_a_writer_appends_to_the_journal_another_writers_compaction_made(
    store: FileStore, data_dir: Path
) -> None:
    # The first store keeps its journal open between writes; the second compacts,
    # which replaces the journal. The first store's next line must go to the new file.
    ids = await chain(store, "c1", 2)
    async with FileStore(data_dir) as other:
        await other.compact("c1")
    late = msg("user", ids[-1], "after the other's compaction")
    await store.append_message("c1", late, branch="main")
    async with FileStore(data_dir) as fresh:
        assert await fresh.path("c1") == [*ids, late.id]
        assert (await fresh.get_message("c1", late.id)).content == late.content
