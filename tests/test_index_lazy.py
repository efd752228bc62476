"""A large context's index is read lazily: the same answers, the same refusals.

Once ``message_index.json`` and the journal together pass ``LAZY_MIN_BYTES``, opening the
context parses only the lines it needs. These tests build such a context through the
store, then check from fresh FileStores (real files, no patching) that every answer is
the one a full parse gives, that damage and hostile ids are still refused before use,
and that damage nobody needs does not stop a page from opening.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from store_helpers import chain, msg

from cm_notebook.errors import MessageNotFoundError, StoreError
from cm_notebook.model import ContextMetadata, MessageStatus
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.store.lazy import LAZY_MIN_BYTES

pytestmark = pytest.mark.anyio

CID = "big"
COUNT = 200  # a compaction at 127: a snapshot of 128 entries and 72 journal lines


def folder(data_dir: Path) -> Path:
    return data_dir / "contexts" / CID


async def build(data_dir: Path) -> list[str]:
    """The ids of a context large enough to be read lazily, with a branch ``alt``."""
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id=CID))
        ids = await chain(store, CID, COUNT)
        await store.create_branch(CID, "alt ü", head=ids[150])
        await chain(store, CID, 3, branch="alt ü")
    sizes = [(folder(data_dir) / name).stat().st_size for name in INDEX_FILES]
    assert sum(sizes) >= LAZY_MIN_BYTES  # the point of these tests: read lazily ...
    assert all(sizes)  # ... both files
    return ids


INDEX_FILES = ("message_index.json", "message_index.journal")


async def full_view(data_dir: Path) -> dict[str, object]:
    """What a fresh FileStore says, asking for everything first (a full parse)."""
    async with FileStore(data_dir) as store:
        index = await store.index(CID)
        return {
            "index": index,
            "main": await store.path(CID),
            "alt": await store.path(CID, "alt ü"),
            "children": {key: await store.children(CID, key) for key in [None, *index]},
            "page": [m.id for m in await store.page(CID, limit=50)],
        }


def edit_line(path: Path, message_id: str, old: str, new: str) -> None:
    """Replace ``old`` by ``new`` in the index line of ``message_id`` (its last one)."""
    data = path.read_bytes()
    start = data.rindex(b'{"id":"' + message_id.encode() + b'"')
    end = data.index(b"\n", start)
    line = data[start:end]
    assert old.encode() in line
    path.write_bytes(data[:start] + line.replace(old.encode(), new.encode()) + data[end:])


async def test_answers_are_those_of_a_full_parse(data_dir: Path) -> None:
    ids = await build(data_dir)
    expected = await full_view(data_dir)
    async with FileStore(data_dir) as store:
        # Page first, while nothing but the page's lines has been read.
        page = await store.page(CID, limit=50)
        assert [m.id for m in page] == expected["page"] == ids[-50:]
        before = await store.page(CID, limit=30, before=ids[140])
        assert [m.id for m in before] == ids[110:140]  # across snapshot and journal
        assert await store.path(CID, "alt ü") == expected["alt"]
        assert await store.path(CID) == expected["main"]
        assert await store.index(CID) == expected["index"]
        assert await store.children(CID, ids[150]) == expected["children"][ids[150]]  # type: ignore[index]


async def test_damage_no_page_needs_is_found_when_everything_is_read(data_dir: Path) -> None:
    ids = await build(data_dir)
    expected = await full_view(data_dir)
    edit_line(folder(data_dir) / "message_index.json", ids[3], '"role":"assistant"', '"role":7')
    async with FileStore(data_dir) as store:
        # No warning (warnings are errors in this suite): the damaged line was not read.
        assert [m.id for m in await store.page(CID, limit=50)] == expected["page"]
        with pytest.warns(StoreWarning, match="rebuilt"):
            assert await store.index(CID) == expected["index"]


@pytest.mark.parametrize("where", ["journal", "snapshot"])
async def test_a_hostile_id_on_the_path_is_refused_then_rebuilt(
    data_dir: Path, tmp_path: Path, where: str
) -> None:
    ids = await build(data_dir)
    expected = await full_view(data_dir)
    outside = tmp_path / "outside.json"
    outside.write_text("SECRET")
    # ids[180] is in the journal, ids[100] in the snapshot (folded at 127).
    number = 180 if where == "journal" else 100
    name = "message_index.journal" if where == "journal" else "message_index.json"
    hostile = "../../../outside"
    edit_line(folder(data_dir) / name, ids[number], ids[number - 1], hostile)
    async with FileStore(data_dir) as store:
        with pytest.warns(StoreWarning, match="rebuilt"):
            page = await store.page(CID, limit=COUNT - number + 5)
        assert [m.id for m in page] == ids[number - 5 :]
        assert all("SECRET" not in m.content for m in page)
        assert await store.path(CID) == expected["main"]


async def test_an_id_changed_by_hand_is_noticed_by_the_walk(data_dir: Path) -> None:
    # The snapshot line of ids[100] now names another (hostile) message: searching by
    # id finds nothing, and the walk that needs it parses everything before blaming
    # the file, which finds the bad id and rebuilds.
    ids = await build(data_dir)
    expected = await full_view(data_dir)
    edit_line(folder(data_dir) / "message_index.json", ids[100], ids[100], "..%2f..")
    async with FileStore(data_dir) as store:
        with pytest.warns(StoreWarning, match="rebuilt"):
            assert await store.path(CID) == expected["main"]


async def test_a_stream_whose_writer_died_is_interrupted(data_dir: Path) -> None:
    ids = await build(data_dir)
    async with FileStore(data_dir) as writer:
        reply = msg("assistant", ids[-1], "partial", status=MessageStatus.STREAMING)
        await writer.append_message(CID, reply, branch="main")
    # The writer closed without finishing: its streaming lock is gone.
    async with FileStore(data_dir) as store:
        page = await store.page(CID, limit=2)
        assert [m.id for m in page] == [ids[-1], reply.id]
        assert page[-1].status is MessageStatus.INTERRUPTED
        assert page[-1].content == "partial"


async def test_writes_after_a_lazy_open_continue_the_index(data_dir: Path) -> None:
    ids = await build(data_dir)
    async with FileStore(data_dir) as store:
        assert len(await store.page(CID, limit=5)) == 5
        more = await chain(store, CID, 3)
        await store.create_branch(CID, "zweig+2", head=ids[20])
        await chain(store, CID, 2, branch="zweig+2")
        await store.set_branch_head(CID, "alt ü", ids[151])
    async with FileStore(data_dir) as fresh:
        assert (await fresh.path(CID))[-4:] == [ids[-1], *more]
        assert await fresh.path(CID, "alt ü") == ids[:152]
        assert len(await fresh.path(CID, "zweig+2")) == 23
        index = await fresh.index(CID)
    seqs = sorted(entry.seq for entry in index.values())
    assert seqs == list(range(len(index)))  # new entries numbered after every old one
    assert [index[mid].seq for mid in more] == sorted(index[mid].seq for mid in more)


async def test_a_lost_file_is_restored_when_read(data_dir: Path) -> None:
    ids = await build(data_dir)
    file = folder(data_dir) / "messages" / f"{ids[-2]}.json"
    intact = file.read_bytes()
    file.unlink()  # what a power loss may leave of a file the journal holds
    async with FileStore(data_dir) as store:
        with pytest.warns(StoreWarning, match="restored from the journal"):
            page = await store.page(CID, limit=3)
        assert [m.id for m in page] == ids[-3:]
    assert file.read_bytes() == intact


async def test_a_write_that_meets_a_damaged_line_rebuilds_and_asks_to_retry(
    data_dir: Path,
) -> None:
    ids = await build(data_dir)
    journal = folder(data_dir) / "message_index.journal"
    edit_line(journal, ids[190], '"role":"user"', '"role":"nobody"')
    async with FileStore(data_dir) as store:
        done = msg("user", ids[189], "changed")
        done = done.model_copy(update={"id": ids[190]})
        with pytest.warns(StoreWarning, match="rebuilt"), pytest.raises(StoreError, match="again"):
            await store.update_message(CID, done)
        await store.update_message(CID, done)  # the retry
        assert (await store.get_message(CID, ids[190])).content == "changed"
    lines = journal.read_bytes().splitlines()
    assert all(json.loads(line.split(b"\t")[0]) for line in lines)


@pytest.mark.parametrize("everything_read", [False, True])
async def test_compaction_stays_geometric_after_a_lazy_open(
    data_dir: Path, everything_read: bool
) -> None:
    # 300 messages: folded at 127 and 255, so the snapshot holds 256 entries and the
    # next fold waits for 256 journal lines, however the index was read.
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id=CID))
        await chain(store, CID, 300)
    snapshot = folder(data_dir) / "message_index.json"
    inode = snapshot.stat().st_ino
    async with FileStore(data_dir) as store:
        if everything_read:
            assert len(await store.index(CID)) == 300
        else:
            assert len(await store.page(CID, limit=2)) == 2
        await chain(store, CID, 256 - 44 - 1)  # one line short of the next fold
        assert snapshot.stat().st_ino == inode
        await chain(store, CID, 1)
        assert snapshot.stat().st_ino != inode
        assert len(await store.index(CID)) == 300 + 256 - 44


async def test_ids_are_found_after_many_misses(data_dir: Path) -> None:
    # Searching for absent ids makes the index collect every id once; the first line
    # of each file (no newline before it in the journal) must be among them.
    ids = await build(data_dir)
    journal = (folder(data_dir) / "message_index.journal").read_bytes()
    first_in_journal = json.loads(journal.split(b"\n", 1)[0].split(b"\t")[0])["id"]
    async with FileStore(data_dir) as store:
        for number in range(3):
            with pytest.raises(MessageNotFoundError):
                await store.get_message(CID, f"m-absent-{number}")
        assert (await store.get_message(CID, first_in_journal)).id == first_in_journal
        assert (await store.get_message(CID, ids[0])).id == ids[0]
        assert (await store.get_message(CID, ids[127])).id == ids[127]
