"""The write path's durability, observed: fsyncs per operation, a power loss, old folders.

fsyncs are counted through the store's documented seam, ``FileStore(fsync=...)``, which
every fsync of the store goes through. A power loss is played by doing to the files
what one may do to writes that were never fsync'd: a message file missing, empty, or an
older version. The committed journal line must bring each one back.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
from store_helpers import chain, damage_file, msg

from cm_notebook import ContextSession
from cm_notebook.model import ContextMetadata, MessageStatus
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.store.flushing import FLUSH_EVERY
from cm_notebook.store.index import COMPACT_MIN_LINES
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.anyio


class Counter:
    """An ``fsync`` for FileStore that counts the calls and then really syncs.

    Sessions on the store fsync their signal log through it too (on its own thread,
    every 50 ms while signals come): those are counted apart, in ``signal_log``.
    """

    def __init__(self) -> None:
        self.calls = 0
        self.signal_log = 0
        self._lock = threading.Lock()  # a batch of files is fsync'd from several threads

    def __call__(self, fd: int) -> None:
        named = os.readlink(f"/proc/self/fd/{fd}") if os.path.isdir("/proc/self/fd") else ""
        with self._lock:
            if os.sep + "signals" in named:
                self.signal_log += 1
            else:
                self.calls += 1
        os.fsync(fd)

    def since(self, start: int) -> int:
        return self.calls - start


def folder(data_dir: Path, cid: str = "c1") -> Path:
    return data_dir / "contexts" / cid


async def test_fsyncs_per_operation(data_dir: Path) -> None:
    counter = Counter()
    async with FileStore(data_dir, fsync=counter) as store:
        await store.create_context(ContextMetadata(id="c1"))
        ids = await chain(store, "c1", 2)

        start = counter.calls
        question = msg("user", ids[-1], "a finished message")
        await store.append_message("c1", question, branch="main")
        assert counter.since(start) == 1  # one journal line: the commit point

        start = counter.calls
        reply = msg("assistant", question.id, status=MessageStatus.STREAMING)
        await store.append_message("c1", reply, branch="main")
        assert counter.since(start) == 0  # a placeholder is not acknowledged

        start = counter.calls
        reply.content = "partial"
        await store.update_message("c1", reply)
        assert counter.since(start) == 0  # nor is a checkpoint

        start = counter.calls
        final = reply.model_copy(update={"content": "full", "status": MessageStatus.COMPLETE})
        await store.update_message("c1", final)
        assert counter.since(start) == 1

        start = counter.calls
        await store.set_branch_head("c1", "main", ids[0])
        assert counter.since(start) == 1

        start = counter.calls
        await store.create_branch("c1", "alt", head=ids[1])
        assert counter.since(start) == 2  # metadata.json: the file and its folder
    async with FileStore(data_dir) as fresh:
        assert await fresh.path("c1") == ids[:1]
        assert await fresh.path("c1", "alt") == ids
        assert (await fresh.get_message("c1", reply.id)).content == "full"


async def test_an_update_of_a_finished_message_costs_one_fsync_and_no_sooner_compaction(
    data_dir: Path,
) -> None:
    # As every save of a tool call's status: the commit line is the one fsync. The
    # marker written before the file (cm_notebook.store.pending) is neither fsync'd nor
    # counted toward a compaction, so a tool cycle compacts no more often than before.
    counter = Counter()
    journal = folder(data_dir) / "message_index.journal"
    async with FileStore(data_dir, fsync=counter) as store:
        await store.create_context(ContextMetadata(id="c1"))
        ids = await chain(store, "c1", COMPACT_MIN_LINES - 2)
        assert journal.read_bytes().count(b"\n") == COMPACT_MIN_LINES - 2
        done = await store.get_message("c1", ids[-1])
        start = counter.calls
        await store.update_message("c1", done.model_copy(update={"content": "updated"}))
        assert counter.since(start) == 1
        # The marker and the commit line; one line short of a compaction, as before.
        assert journal.read_bytes().count(b"\n") == COMPACT_MIN_LINES
        await chain(store, "c1", 1)
        assert journal.stat().st_size == 0  # that line made it due: folded
    async with FileStore(data_dir) as fresh:
        assert (await fresh.get_message("c1", ids[-1])).content == "updated"


class PathCounter(Counter):
    """A :class:`Counter` that also keeps the path of every file it fsyncs."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: list[str] = []

    def __call__(self, fd: int) -> None:
        with self._lock:
            self.paths.append(os.readlink(f"/proc/self/fd/{fd}"))
        super().__call__(fd)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names fds through /proc")
async def test_a_message_committed_again_before_its_batch_is_one_file_of_it(
    data_dir: Path,
) -> None:
    # A tool call's status is saved as it is approved, runs and returns: the file is
    # fsync'd once, in its last version, by a batch of FLUSH_EVERY different messages.
    counter = PathCounter()
    async with FileStore(data_dir, fsync=counter) as store:
        await store.create_context(ContextMetadata(id="c1"))
        (asked,) = await chain(store, "c1", 1)
        message = await store.get_message("c1", asked)
        for n in range(FLUSH_EVERY + 4):  # more commits of it than a batch holds
            message = message.model_copy(update={"content": f"version {n}"})
            await store.update_message("c1", message)
        file = str(folder(data_dir) / "messages" / f"{asked}.json")
        assert file not in counter.paths  # one message owed: no batch yet
        others = await chain(store, "c1", FLUSH_EVERY - 1)
        assert counter.paths.count(file) == 1
        batch = {str(folder(data_dir) / "messages" / f"{mid}.json") for mid in others}
        assert batch <= set(counter.paths)
    async with FileStore(data_dir) as fresh:
        assert (await fresh.get_message("c1", asked)).content == f"version {FLUSH_EVERY + 3}"


async def test_a_plain_turn_through_a_session_makes_at_most_two_store_fsyncs(
    data_dir: Path,
) -> None:
    counter = Counter()
    fake = ScriptedProvider()
    for i in range(6):
        fake.reply(f"reply {i}")
    store = FileStore(data_dir, fsync=counter)
    session = ContextSession.create("t", provider=fake, store=store)
    try:
        await session.send("warm up")
        start = counter.calls
        for i in range(5):
            await session.send(f"message {i}")
        assert counter.since(start) <= 2 * 5
        assert [m.content for m in session.history()][-2:] == ["message 4", "reply 5"]
    finally:
        session.close()
        await store.close()


async def _reply_with_file(data_dir: Path) -> tuple[Path, bytes, bytes]:
    # A reply committed through a placeholder: its file, the placeholder's bytes, its own.
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        ids = await chain(store, "c1", 2)
        reply = msg("assistant", ids[-1], "partial", status=MessageStatus.STREAMING)
        await store.append_message("c1", reply, branch="main")
        file = folder(data_dir) / "messages" / f"{reply.id}.json"
        placeholder = file.read_bytes()
        done = reply.model_copy(
            update={"content": "the whole answer", "status": MessageStatus.COMPLETE}
        )
        await store.update_message("c1", done)
        return file, placeholder, file.read_bytes()


LOSSES = ["missing", "empty", "older", "zeroed", "garbled"]


@pytest.mark.parametrize("loss", LOSSES)
async def test_a_committed_message_survives_losing_its_file(data_dir: Path, loss: str) -> None:
    file, placeholder, intact = await _reply_with_file(data_dir)
    damage_file(file, loss, placeholder)
    async with FileStore(data_dir) as reopened:
        with pytest.warns(StoreWarning, match="restored from the journal"):
            page = await reopened.page("c1")
        assert page[-1].content == "the whole answer"
        assert page[-1].status is MessageStatus.COMPLETE
    assert file.read_bytes() == intact


@pytest.mark.parametrize("loss", LOSSES)
async def test_compaction_restores_a_damaged_file_before_it_drops_the_copy(
    data_dir: Path, loss: str
) -> None:
    # Not read in between: compaction is the last moment the journal holds the message.
    file, placeholder, intact = await _reply_with_file(data_dir)
    damage_file(file, loss, placeholder)
    async with FileStore(data_dir) as reopened:
        with pytest.warns(StoreWarning, match="restored from the journal"):
            await reopened.compact("c1")
    assert file.read_bytes() == intact
    async with FileStore(data_dir) as after:
        assert (await after.page("c1"))[-1].content == "the whole answer"


async def test_compaction_makes_the_journal_copies_durable_first(data_dir: Path) -> None:
    counter = Counter()
    async with FileStore(data_dir, fsync=counter) as store:
        await store.create_context(ContextMetadata(id="c1"))
        start = counter.calls
        per_append = []
        ids: list[str] = []
        for _ in range(COMPACT_MIN_LINES):
            before = counter.calls
            ids += await chain(store, "c1", 1)
            per_append.append(counter.since(before))
        # Each line; each message file, a batch of FLUSH_EVERY at a time with their
        # folder; at compaction the folder, metadata.json with the heads (2), the
        # snapshot (2), the journal (2).
        batches = COMPACT_MIN_LINES // FLUSH_EVERY
        assert counter.since(start) == 2 * COMPACT_MIN_LINES + batches + 1 + 6
        # No write waits for more than one batch: compaction owes no file fsyncs then.
        assert max(per_append) == 1 + FLUSH_EVERY + 1 + 1 + 6
        assert sorted(per_append)[-batches - 1] == 1
    ctx = folder(data_dir)
    assert (ctx / "message_index.journal").stat().st_size == 0
    meta = json.loads((ctx / "metadata.json").read_text())
    assert meta["branches"]["main"]["head"] == ids[-1]
    assert meta["heads_at"] == COMPACT_MIN_LINES
    async with FileStore(data_dir) as fresh:
        assert await fresh.path("c1") == ids


async def test_a_recreated_branch_ignores_the_old_head_moves_of_its_name(data_dir: Path) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        ids = await chain(store, "c1", 2)
        await store.create_branch("c1", "alt", head=ids[0])
        await chain(store, "c1", 2, branch="alt")  # head moves of "alt" in the journal
        await store.delete_branch("c1", "alt")
        await store.create_branch("c1", "alt", head=ids[1])
    async with FileStore(data_dir) as fresh:
        assert await fresh.path("c1", "alt") == ids


async def test_a_folder_in_the_previous_format_opens_and_continues_in_the_new_one(
    data_dir: Path,
) -> None:
    # Heads in metadata.json, plain index entries as journal lines, no line numbers.
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1", title="old"))
        ids = await chain(store, "c1", 3)
        entries = await store.index("c1")
    ctx = folder(data_dir)
    meta = json.loads((ctx / "metadata.json").read_text())
    meta["schema_version"] = 2
    del meta["heads_at"]
    meta["branches"]["main"]["head"] = ids[-1]
    (ctx / "metadata.json").write_text(json.dumps(meta, indent=2))
    (ctx / "message_index.json").write_text('{"schema_version": 2, "entries": []}\n')
    lines = [entries[i].model_dump_json() + "\n" for i in ids]
    (ctx / "message_index.journal").write_text("".join(lines))
    for i in ids:
        path = ctx / "messages" / f"{i}.json"
        raw = json.loads(path.read_text())
        raw["schema_version"] = 2
        path.write_text(json.dumps(raw, indent=2))

    async with FileStore(data_dir) as store:
        assert await store.path("c1") == ids
        assert (await store.get_metadata("c1")).title == "old"
        more = await chain(store, "c1", 2)
        await store.set_branch_head("c1", "main", more[0])
    async with FileStore(data_dir) as fresh:
        assert await fresh.path("c1") == [*ids, more[0]]
        await fresh.set_active_branch("c1", "main")
    assert json.loads((ctx / "metadata.json").read_text())["branches"]["main"]["head"] == more[0]


async def test_change_token_changes_with_every_kind_of_write(data_dir: Path) -> None:
    async with FileStore(data_dir) as store, FileStore(data_dir) as other:
        await store.create_context(ContextMetadata(id="c1"))
        ids = await chain(store, "c1", 1)
        seen = {other.change_token("c1")}

        async def changed() -> None:
            token = other.change_token("c1")
            assert token not in seen
            seen.add(token)

        question = msg("user", ids[0], "q")
        await store.append_message("c1", question, branch="main")
        await changed()
        reply = msg("assistant", question.id, status=MessageStatus.STREAMING)
        await store.append_message("c1", reply, branch=None)
        await changed()
        # A checkpoint commits nothing; it changes the messages folder's time stamps,
        # which some systems keep coarsely, so it is not asserted here.
        reply.content = "partial"
        await store.update_message("c1", reply)
        seen.add(other.change_token("c1"))
        await store.update_message(
            "c1", reply.model_copy(update={"status": MessageStatus.COMPLETE})
        )
        await changed()
        await store.set_branch_head("c1", "main", reply.id)
        await changed()
        await store.update_metadata("c1", title="renamed")
        await changed()


async def test_compact_leaves_a_folder_that_says_everything_without_its_journal(
    data_dir: Path,
) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        ids = await chain(store, "c1", 3)
        await store.compact("c1")
    ctx = folder(data_dir)
    assert (ctx / "message_index.journal").stat().st_size == 0
    assert json.loads((ctx / "metadata.json").read_text())["branches"]["main"]["head"] == ids[-1]
    (ctx / "messages" / f"{ids[0]}.json").unlink()  # no journal copy to restore it from
    async with FileStore(data_dir) as fresh:
        with pytest.warns(StoreWarning, match="skipped an unreadable message"):
            assert [m.id for m in await fresh.page("c1")] == ids[1:]


async def test_get_message_restores_a_lost_file_too(data_dir: Path) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        ids = await chain(store, "c1", 2)
    file = folder(data_dir) / "messages" / f"{ids[-1]}.json"
    intact = file.read_bytes()
    file.unlink()  # what a power loss may leave of a file the journal holds
    async with FileStore(data_dir) as reopened:
        with pytest.warns(StoreWarning, match="restored from the journal"):
            message = await reopened.get_message("c1", ids[-1])
        assert message.id == ids[-1]
    assert file.read_bytes() == intact
