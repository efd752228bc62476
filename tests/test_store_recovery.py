"""Damaged, old, newer and concurrently changed data: the store repairs, warns or refuses.

Every corrupt file here is written by the test onto real disk; nothing is patched.
"""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import filelock
import pytest
from store_helpers import chain, msg

from cm_notebook.errors import (
    ContextNotFoundError,
    CorruptDataError,
    SchemaVersionError,
    StoreError,
    StoreLockTimeoutError,
)
from cm_notebook.export import export_context
from cm_notebook.model import SCHEMA_VERSION, ContextMetadata, MessageStatus
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.store.index import COMPACT_MIN_LINES
from cm_notebook.store.schema import UPGRADES, Upgrade, upgrade

pytestmark = pytest.mark.anyio


def folder(data_dir: Path, cid: str = "c1") -> Path:
    return data_dir / "contexts" / cid


async def fresh_view(data_dir: Path) -> tuple[list[str], dict[str | None, list[str]]]:
    """Path and children as seen by a brand-new FileStore."""
    async with FileStore(data_dir) as other:
        path = await other.path("c1")
        index = await other.index("c1")
        children = {key: await other.children("c1", key) for key in [None, *index]}
    return path, children


# -- metadata.json ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "detail"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[1, 2]", "not an object"),
        (b'{"title": 5}', "does not match the expected format"),
        (b'{"active_branch": "ghost"}', "does not match the expected format"),
        (b'{"schema_version": "one"}', "not a version number"),
    ],
)
async def test_corrupt_metadata_is_reported_with_advice(
    store: FileStore, data_dir: Path, content: bytes, detail: str
) -> None:
    path = folder(data_dir) / "metadata.json"
    path.write_bytes(content)
    async with FileStore(data_dir) as other:
        with pytest.raises(CorruptDataError, match=detail) as info:
            await other.get_metadata("c1")
        assert info.value.path == path
        assert str(path) in str(info.value)
        assert "backup" in str(info.value)  # says what to do
        with pytest.raises(CorruptDataError):
            await other.append_message("c1", msg(), branch="main")
    # The store that had good metadata cached notices the change too.
    with pytest.raises(CorruptDataError):
        await store.path("c1")
    with pytest.warns(StoreWarning, match=detail):
        assert await store.list_contexts() == []


async def test_newer_schema_is_refused(store: FileStore, data_dir: Path) -> None:
    path = folder(data_dir) / "metadata.json"
    raw = json.loads(path.read_text())
    raw["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(raw))
    async with FileStore(data_dir) as other:
        with pytest.raises(SchemaVersionError) as info:
            await other.get_metadata("c1")
    text = str(info.value)
    assert f"written by a newer cm_notebook (schema {SCHEMA_VERSION + 1})" in text
    assert "Upgrade cm_notebook to open it" in text
    with pytest.warns(StoreWarning, match="newer cm_notebook"):
        assert await store.list_contexts() == []


async def test_newer_message_file_is_refused(store: FileStore, data_dir: Path) -> None:
    ids = await chain(store, "c1", 1)
    # Folded first: while the journal holds a message, a read restores its file from it.
    await store.compact("c1")
    path = folder(data_dir) / "messages" / f"{ids[0]}.json"
    raw = json.loads(path.read_text())
    raw["schema_version"] = 99
    path.write_text(json.dumps(raw))
    with pytest.raises(SchemaVersionError, match="schema 99"):
        await store.get_message("c1", ids[0])


async def test_copied_context_folder_takes_the_folder_name(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 2)
    import shutil

    shutil.copytree(folder(data_dir), folder(data_dir, "c1-copy"))
    meta = await store.get_metadata("c1-copy")
    assert meta.id == "c1-copy"
    assert await store.path("c1-copy") == ids
    await chain(store, "c1-copy", 1)
    assert await store.path("c1") == ids  # the original is independent
    assert sorted(m.id for m in await store.list_contexts()) == ["c1", "c1-copy"]


# -- the index and its journal ------------------------------------------------------------


async def test_corrupt_index_is_rebuilt_with_a_warning(store: FileStore, data_dir: Path) -> None:
    ids = await chain(store, "c1", 5)
    await store.create_branch("c1", "alt", head=ids[1])
    alt = msg("user", ids[1], "alt")
    await store.append_message("c1", alt, branch="alt")
    expected = await fresh_view(data_dir)
    index_path = folder(data_dir) / "message_index.json"
    index_path.write_text("{garbage")
    async with FileStore(data_dir) as other:
        with pytest.warns(StoreWarning, match="rebuilt") as record:
            assert await other.path("c1") == ids
        assert await other.path("c1", "alt") == [*ids[:2], alt.id]
    assert any(str(index_path) in str(w.message) for w in record)
    assert await fresh_view(data_dir) == expected
    # The store that had the old index open also follows the rebuilt one.
    assert await store.path("c1") == ids
    assert json.loads(index_path.read_text())["schema_version"] == SCHEMA_VERSION


@pytest.mark.parametrize("name", ["message_index.json", "message_index.journal"])
async def test_missing_index_files_are_rebuilt(store: FileStore, data_dir: Path, name: str) -> None:
    ids = await chain(store, "c1", 3)
    await store.set_active_branch("c1", "main")  # folds the head moves into metadata.json
    (folder(data_dir) / name).unlink()
    async with FileStore(data_dir) as other:
        with pytest.warns(StoreWarning, match=f"{name} is missing"):
            assert await other.path("c1") == ids
        await chain(other, "c1", 1)
    assert len(await store.path("c1")) == 4


async def test_a_context_that_lost_its_metadata_is_named_as_damaged_not_unknown(
    store: FileStore, data_dir: Path
) -> None:
    await chain(store, "c1", 2)
    await store.close()
    (folder(data_dir) / "metadata.json").unlink()
    async with FileStore(data_dir) as other:
        with pytest.raises(CorruptDataError, match=r"lost its metadata\.json") as caught:
            await other.get_metadata("c1")
        assert caught.value.path == folder(data_dir) / "metadata.json"
        assert "messages are untouched" in str(caught.value)
        with pytest.raises(ContextNotFoundError):  # a context that never was: as before
            await other.get_metadata("c2")


async def test_a_lost_journal_keeps_every_message_on_a_recovered_branch(
    store: FileStore, data_dir: Path
) -> None:
    # The journal is where head moves are committed: deleting it by hand loses those made
    # since metadata.json was last written, never a message. The conversation they led
    # to is on a branch of its own, not on none (where no view would show it).
    ids = await chain(store, "c1", 3)
    (folder(data_dir) / "message_index.journal").unlink()
    async with FileStore(data_dir) as other:
        with pytest.warns(StoreWarning) as caught:
            assert sorted(await other.index("c1")) == sorted(ids)
        said = [str(warning.message) for warning in caught]
        assert any("message_index.journal is missing" in text for text in said), said
        assert any("are on 'recovered' now" in text for text in said), said
        assert await other.path("c1") == []  # "main" where metadata.json had it
        assert await other.path("c1", "recovered") == ids
        await other.set_branch_head("c1", "main", ids[-1])
        assert await other.path("c1") == ids
    async with FileStore(data_dir) as again:  # rebuilt once: no second branch
        assert sorted((await again.get_metadata("c1")).branches) == ["main", "recovered"]


async def test_an_old_index_copied_back_under_an_open_store_is_rebuilt(
    store: FileStore, data_dir: Path
) -> None:
    # The check that metadata.json's heads are in the index is done once per load of
    # the index: an index replaced behind this store's back is loaded again, and checked.
    names = ("message_index.json", "message_index.journal")
    old = {name: (folder(data_dir) / name).read_bytes() for name in names}
    ids = await chain(store, "c1", 3)
    await store.update_metadata("c1", title="heads now in metadata.json")
    assert await store.path("c1") == ids
    for name, data in old.items():
        (folder(data_dir) / name).write_bytes(data)
    with pytest.warns(StoreWarning, match="rebuilt"):
        assert await store.path("c1") == ids
    assert sorted(await store.index("c1")) == sorted(ids)


async def test_damaged_journal_line_triggers_a_rebuild(store: FileStore, data_dir: Path) -> None:
    ids = await chain(store, "c1", 3)
    journal = folder(data_dir) / "message_index.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    journal.write_bytes(lines[0] + b'{"id": "half\n' + b"".join(lines[1:]))
    with pytest.warns(StoreWarning, match="damaged line"):
        async with FileStore(data_dir) as other:
            assert await other.path("c1") == ids


def _damage_index(ctx: Path, kind: str) -> None:
    journal, snapshot = ctx / "message_index.journal", ctx / "message_index.json"
    if kind == "journal line":
        with journal.open("ab") as handle:
            handle.write(b"not a journal line\n")
    elif kind == "snapshot gone":
        snapshot.unlink()
    else:  # "snapshot cut short"
        snapshot.write_bytes(snapshot.read_bytes()[:20])


async def _write_first(store: FileStore, write: str, first_id: str) -> None:
    if write == "create a branch":
        await store.create_branch("c1", "side", head=first_id)
    elif write == "rename":
        await store.update_metadata("c1", title="renamed")
    else:
        await store.set_active_branch("c1", "main")


@pytest.mark.parametrize("damage", ["journal line", "snapshot gone", "snapshot cut short"])
@pytest.mark.parametrize("write", ["create a branch", "rename", "switch branch"])
async def test_a_write_first_after_index_damage_keeps_the_heads_the_journal_held(
    store: FileStore, data_dir: Path, damage: str, write: str
) -> None:
    # The head moves are only in the journal (metadata.json still says "main" is empty).
    # The rebuild saves them to metadata.json; the write that found the damage must then
    # work on that metadata, not on what it read before, or it writes "main" back empty.
    ids = await chain(store, "c1", 3)
    _damage_index(folder(data_dir), damage)
    async with FileStore(data_dir) as other:
        with pytest.warns(StoreWarning, match="rebuilt"):
            await _write_first(other, write, ids[0])
        assert await other.path("c1") == ids
    async with FileStore(data_dir) as reopened:
        assert await reopened.path("c1") == ids


async def test_hostile_id_in_index_is_not_followed(store: FileStore, data_dir: Path) -> None:
    ids = await chain(store, "c1", 1)
    journal = folder(data_dir) / "message_index.journal"
    line = json.loads(journal.read_text().splitlines()[0].split("\t")[0])
    line["id"] = "../../../etc/passwd"
    with journal.open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    with pytest.warns(StoreWarning, match="damaged line"):
        async with FileStore(data_dir) as other:
            assert list(await other.index("c1")) == ids


async def test_hostile_parent_id_in_index_is_not_followed(store: FileStore, data_dir: Path) -> None:
    ids = await chain(store, "c1", 1)
    journal = folder(data_dir) / "message_index.journal"
    line = json.loads(journal.read_text().splitlines()[0].split("\t")[0])
    line.update({"id": "m-new", "parent_id": "../../outside", "seq": 1})
    with journal.open("a") as handle:
        handle.write(json.dumps(line) + "\n")
    with pytest.warns(StoreWarning, match="damaged line"):
        async with FileStore(data_dir) as other:
            assert list(await other.index("c1")) == ids


async def test_torn_last_journal_line_is_ignored_then_truncated(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 2)
    journal = folder(data_dir) / "message_index.journal"
    with journal.open("ab") as handle:
        handle.write(b'{"id": "m-torn", "parent_id": null, "ro')  # a writer died here
    # No warning: a torn last line is the normal trace of a crash mid-append.
    async with FileStore(data_dir) as other:
        assert await other.path("c1") == ids
        more = await chain(other, "c1", 1)
    lines = journal.read_bytes().split(b"\n")
    assert lines[-1] == b""  # ends with a newline: the fragment was cut
    assert all(json.loads(line.split(b"\t")[0]) for line in lines[:-1])
    assert await store.path("c1") == [*ids, *more]


async def test_old_index_version_is_rebuilt(store: FileStore, data_dir: Path) -> None:
    ids = await chain(store, "c1", 2)
    index_path = folder(data_dir) / "message_index.json"
    raw = json.loads(index_path.read_text())
    raw["schema_version"] = 0
    index_path.write_text(json.dumps(raw))
    with pytest.warns(StoreWarning, match="older version"):
        async with FileStore(data_dir) as other:
            assert await other.path("c1") == ids


async def test_newer_index_version_is_refused(store: FileStore, data_dir: Path) -> None:
    await chain(store, "c1", 1)
    index_path = folder(data_dir) / "message_index.json"
    index_path.write_text(json.dumps({"schema_version": 7, "entries": "new shape"}))
    async with FileStore(data_dir) as other:
        with pytest.raises(SchemaVersionError, match="schema 7"):
            await other.path("c1")


async def test_rebuild_orders_by_creation_time_and_sweeps_temp_files(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 4)
    messages = folder(data_dir) / "messages"
    stray = messages / f".{ids[0]}.json.abc123.tmp"
    stray.write_text("half a file")
    (folder(data_dir) / "message_index.json").unlink()
    with pytest.warns(StoreWarning, match="rebuilt from 4 message files"):
        index = await FileStore(data_dir).index("c1")
    assert sorted(index, key=lambda i: index[i].seq) == ids
    assert not stray.exists()


# -- message files ------------------------------------------------------------------------


async def test_corrupt_message_file(store: FileStore, data_dir: Path) -> None:
    ids = await chain(store, "c1", 3)
    # Folded first: while the journal holds a message, a read restores its file from it.
    await store.compact("c1")
    bad = folder(data_dir) / "messages" / f"{ids[1]}.json"
    bad.write_text('{"role": "user", "content": ')
    with pytest.raises(CorruptDataError) as info:
        await store.get_message("c1", ids[1])
    assert info.value.path == bad
    with pytest.warns(StoreWarning, match=str(bad)):
        page = await store.page("c1")
    assert [m.id for m in page] == [ids[0], ids[2]]
    with pytest.warns(StoreWarning, match=str(bad)):
        got = await store.get_messages("c1", ids)
    assert [m.id for m in got] == [ids[0], ids[2]]
    assert await store.path("c1") == ids  # path reads no message files


async def test_message_file_with_the_wrong_id_or_missing(store: FileStore, data_dir: Path) -> None:
    ids = await chain(store, "c1", 2)
    await store.compact("c1")  # else a read restores the files from the journal
    messages = folder(data_dir) / "messages"
    (messages / f"{ids[0]}.json").write_bytes((messages / f"{ids[1]}.json").read_bytes())
    with pytest.raises(CorruptDataError, match="holds message"):
        await store.get_message("c1", ids[0])
    (messages / f"{ids[1]}.json").unlink()
    with pytest.raises(CorruptDataError, match="missing") as info:
        await store.get_message("c1", ids[1])
    assert info.value.path == messages / f"{ids[1]}.json"


async def test_rebuild_reports_unreadable_message_files(store: FileStore, data_dir: Path) -> None:
    # Enough messages for a compaction: the journal no longer holds copies of them.
    ids = (await chain(store, "c1", COMPACT_MIN_LINES))[-3:]
    assert (folder(data_dir) / "message_index.journal").stat().st_size == 0
    messages = folder(data_dir) / "messages"
    (messages / f"{ids[2]}.json").write_text("nonsense")
    (messages / "not-an-id!.json").write_text("{}")
    (folder(data_dir) / "message_index.json").unlink()
    async with FileStore(data_dir) as other:
        with pytest.warns(StoreWarning) as record:
            index = await other.index("c1")
        assert list(index)[-2:] == ids[:2]
        # The branch head's file was lost: path says so precisely.
        with pytest.raises(CorruptDataError, match="set_branch_head") as info:
            await other.path("c1")
        assert info.value.path == messages / f"{ids[2]}.json"
        await other.set_branch_head("c1", "main", ids[1])
        assert (await other.path("c1"))[-2:] == ids[:2]
    texts = [str(w.message) for w in record]
    assert any("rebuilt" in t for t in texts)
    assert any(f"{ids[2]}.json" in t for t in texts)
    assert any("not-an-id!.json" in t for t in texts)


# -- schema upgrade mechanism ---------------------------------------------------------------


def test_upgrade_steps_are_numbered_and_unique() -> None:
    versions = [step.from_version for step in UPGRADES]
    assert versions == sorted(set(versions))
    assert all(v < SCHEMA_VERSION for v in versions)


def test_upgrade_applies_steps_in_order(tmp_path: Path) -> None:
    # Exercise the mechanism with
    # steps made up for this test, towards a made-up target version.
    steps = [
        Upgrade(1, metadata=lambda raw: {**raw, "log": [*raw.get("log", []), "1->2"]}),
        Upgrade(2, metadata=lambda raw: {**raw, "log": [*raw["log"], "2->3"]}),
    ]
    path = tmp_path / "metadata.json"
    raw = {"schema_version": 1, "title": "x"}
    out = upgrade(raw, "metadata", path, steps=steps, target=3)
    assert out == {"schema_version": 3, "title": "x", "log": ["1->2", "2->3"]}
    assert raw == {"schema_version": 1, "title": "x"}  # input untouched
    assert upgrade({"schema_version": 2, "log": []}, "metadata", path, steps=steps, target=3)[
        "log"
    ] == ["2->3"]
    # message steps default to "unchanged"
    assert upgrade({"content": "c"}, "message", path, steps=steps, target=3) == {
        "content": "c",
        "schema_version": 3,
    }
    with pytest.raises(CorruptDataError, match="no upgrade from it"):
        upgrade({"schema_version": 0}, "metadata", path, steps=steps, target=3)
    with pytest.raises(SchemaVersionError, match="schema 4"):
        upgrade({"schema_version": 4}, "metadata", path, steps=steps, target=3)
    # With the real steps, the current version passes through unchanged.
    assert upgrade({"schema_version": SCHEMA_VERSION}, "message", path) == {
        "schema_version": SCHEMA_VERSION
    }


# -- locks, streaming and other writers -----------------------------------------------------


async def test_lock_timeout_names_the_folder(store: FileStore, data_dir: Path) -> None:
    ids = await chain(store, "c1", 1)
    holder = filelock.FileLock(folder(data_dir) / ".lock")
    async with FileStore(data_dir, lock_timeout=0.2) as other:
        with holder, pytest.raises(StoreLockTimeoutError) as info:
            await other.append_message("c1", msg(parent=ids[0]), branch="main")
        assert str(folder(data_dir)) in str(info.value)
        with holder:
            # Readers never wait for the write lock.
            assert await other.path("c1") == ids
        await chain(other, "c1", 1)  # free again


async def test_streaming_message_of_a_live_writer_is_left_alone(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 1)
    reply = msg("assistant", ids[0], "Once upon", status=MessageStatus.STREAMING)
    await store.append_message("c1", reply, branch="main")
    lock_file = folder(data_dir) / f".streaming-{reply.id}.lock"
    assert lock_file.exists()
    async with FileStore(data_dir) as reader:  # same process, another FileStore
        got = await reader.get_message("c1", reply.id)
        assert got.status is MessageStatus.STREAMING
        await chain(reader, "c1", 0)
        # Only the live writer may update it.
        with pytest.raises(StoreError, match="being streamed"):
            await reader.update_message("c1", got.model_copy(update={"content": "x"}))
    reply.content = "Once upon a time"
    await store.update_message("c1", reply)
    reply.status = MessageStatus.COMPLETE
    await store.update_message("c1", reply)
    assert not lock_file.exists()
    async with FileStore(data_dir) as reader:
        got = await reader.get_message("c1", reply.id)
        assert (got.status, got.content) == (MessageStatus.COMPLETE, "Once upon a time")


async def test_stream_left_by_a_closed_writer_becomes_interrupted(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 1)
    reply = msg("assistant", ids[0], "partial", status=MessageStatus.STREAMING)
    await store.append_message("c1", reply, branch="main")
    async with FileStore(data_dir) as long_lived:
        assert (await long_lived.index("c1"))[reply.id].status is MessageStatus.STREAMING
        await store.close()  # the writer goes away without finishing
        # A reader that was already open notices on its next read, not just new ones.
        assert (await long_lived.index("c1"))[reply.id].status is MessageStatus.INTERRUPTED
    async with FileStore(data_dir) as reader:
        index = await reader.index("c1")
        assert index[reply.id].status is MessageStatus.INTERRUPTED
        got = await reader.get_message("c1", reply.id)
        assert (got.status, got.content) == (MessageStatus.INTERRUPTED, "partial")
    assert not (folder(data_dir) / f".streaming-{reply.id}.lock").exists()


async def test_another_filestore_notices_changes_on_its_next_read(
    store: FileStore, data_dir: Path
) -> None:
    async with FileStore(data_dir) as reader:
        assert await reader.path("c1") == []
        ids = await chain(store, "c1", 3)
        assert await reader.path("c1") == ids  # journal tail read
        await store.update_metadata("c1", title="changed")
        assert (await reader.get_metadata("c1")).title == "changed"
        # Enough appends to force compactions (new snapshot and journal files).
        more = await chain(store, "c1", COMPACT_MIN_LINES + 10)
        assert await reader.path("c1") == [*ids, *more]
        journal = folder(data_dir) / "message_index.journal"
        assert len(journal.read_bytes().splitlines()) < COMPACT_MIN_LINES
        # and the other direction
        back = await chain(reader, "c1", 2)
        assert (await store.path("c1"))[-2:] == back
        assert await store.children("c1", back[0]) == [back[1]]


async def test_crash_between_snapshot_and_new_journal_is_harmless(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", COMPACT_MIN_LINES - 1)
    journal = folder(data_dir) / "message_index.journal"
    old_lines = journal.read_bytes()
    last = await chain(store, "c1", 1)  # this append triggers a compaction
    assert journal.read_bytes() == b""
    # Recreate the moment between the two replaces: the new snapshot already holds
    # every entry, and the old journal (with the last line) is still in place.
    entry = (await store.index("c1"))[last[0]]
    journal.write_bytes(old_lines + entry.model_dump_json().encode() + b"\n")
    async with FileStore(data_dir) as other:  # and no warning: nothing is damaged
        assert await other.path("c1") == [*ids, *last]
        index = await other.index("c1")
        assert sorted(e.seq for e in index.values()) == list(range(COMPACT_MIN_LINES))
        more = await chain(other, "c1", 1)
        assert (await other.index("c1"))[more[0]].seq == COMPACT_MIN_LINES
    assert await store.path("c1") == [*ids, *last, *more]


async def test_a_version_1_context_opens_unchanged_and_is_written_as_the_current_version(
    store: FileStore, data_dir: Path
) -> None:
    # A context exactly as version 1 wrote it: no per-branch settings, no stats, heads
    # in metadata.json, journal lines that are plain index entries.
    ids = await chain(store, "c1", 2)
    ctx = folder(data_dir)
    entries = await store.index("c1")
    journal = "".join(entries[i].model_dump_json() + "\n" for i in ids)
    (ctx / "message_index.journal").write_text(journal)
    for path in [ctx / "metadata.json", *(ctx / "messages").glob("*.json")]:
        raw = json.loads(path.read_text())
        raw["schema_version"] = 1
        if "branches" in raw:
            del raw["heads_at"]
            raw["branches"]["main"]["head"] = ids[-1]
            for branch in raw["branches"].values():
                for key in ("system_prompt", "provider", "params"):
                    del branch[key]
        else:
            for key in ("system_prompt", "stats"):
                del raw["metadata"][key]
        path.write_text(json.dumps(raw))
    index = json.loads((ctx / "message_index.json").read_text())
    index["schema_version"] = 1
    (ctx / "message_index.json").write_text(json.dumps(index))
    async with FileStore(data_dir) as other:
        # The index format did not change: it is read as it is, not rebuilt (a rebuild
        # would warn, and pytest turns warnings into errors here).
        assert await other.path("c1") == ids
        meta = await other.get_metadata("c1")
        assert meta.branches["main"].system_prompt is None
        assert meta.branches["main"].params == {}
        first = await other.get_message("c1", ids[0])
        assert first.metadata.stats is None
        await other.create_branch("c1", "b", head=ids[0], system_prompt="Be brief.")
    raw = json.loads((ctx / "metadata.json").read_text())
    assert raw["schema_version"] == SCHEMA_VERSION == 3
    assert raw["branches"]["b"]["system_prompt"] == "Be brief."


@pytest.mark.parametrize("file_damage", ["garbled", "missing"])
async def test_a_rebuild_keeps_the_entry_of_a_message_file_it_cannot_read(
    store: FileStore, data_dir: Path, file_damage: str
) -> None:
    # Two damages at once: a message file no journal line holds a copy of any more is
    # unreadable, and the journal is damaged, so the index is rebuilt. The old index's
    # entry for that message keeps its place in the tree: the conversation after it
    # still reads (that message skipped, with a warning), and no branch breaks.
    ids = await chain(store, "c1", 4)
    await store.compact("c1")  # the journal no longer holds copies of the messages
    bad = folder(data_dir) / "messages" / f"{ids[1]}.json"
    if file_damage == "garbled":
        bad.write_text("nonsense")
    else:
        bad.unlink()
    _damage_index(folder(data_dir), "journal line")
    async with FileStore(data_dir) as other:
        with pytest.warns(StoreWarning) as record:
            path = await other.path("c1")
        assert path == ids
        with pytest.warns(StoreWarning, match=str(bad)):
            page = await other.page("c1")
        assert [m.id for m in page] == [ids[0], *ids[2:]]
        assert (await other.index("c1"))[ids[1]].parent_id == ids[0]
        with pytest.raises(CorruptDataError) as info:
            await other.get_message("c1", ids[1])
        assert info.value.path == bad
    texts = [str(w.message) for w in record]
    assert any("rebuilt" in t for t in texts)
    assert any(f"{ids[1]}.json" in t and "kept" in t for t in texts)


@pytest.mark.parametrize("damage", ["garbled", "empty", "gone", "newer version"])
async def test_a_context_with_damaged_metadata_can_be_deleted(
    store: FileStore, data_dir: Path, damage: str
) -> None:
    # Deleting the folder is the remedy the error offers: the store does it too.
    await chain(store, "c1", 2)
    meta = folder(data_dir) / "metadata.json"
    if damage == "garbled":
        meta.write_text("{garbage")
    elif damage == "empty":
        meta.write_text("")
    elif damage == "gone":
        meta.unlink()
    else:
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "schema_version": 999}))
    async with FileStore(data_dir) as other:
        with pytest.raises((CorruptDataError, SchemaVersionError)):
            await other.get_metadata("c1")
        await other.delete_context("c1")
        assert not folder(data_dir).exists()
        with pytest.raises(ContextNotFoundError):
            await other.delete_context("c1")


async def test_a_lost_messages_folder_is_made_again_and_its_files_restored(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 4)
    shutil.rmtree(folder(data_dir) / "messages")
    async with FileStore(data_dir) as other:
        with pytest.warns(StoreWarning) as warned:
            messages = await other.get_messages("c1", ids)
        said = " ".join(str(warning.message) for warning in warned)
        assert "was missing and was made again" in said
        assert "restored from the journal" in said
        assert [m.id for m in messages] == ids
        await other.append_message("c1", msg("user", ids[-1], "more"), branch="main")
        assert len(await other.path("c1")) == 5


async def test_a_context_without_its_empty_messages_folder_takes_messages(
    store: FileStore, data_dir: Path
) -> None:
    # Git keeps no empty folder: a new context checked out from a repository.
    await store.create_context(ContextMetadata(id="c2"))
    (folder(data_dir, "c2") / "messages").rmdir()
    async with FileStore(data_dir) as other:
        with pytest.warns(StoreWarning, match="was missing and was made again"):
            await other.append_message("c2", msg(), branch="main")
        assert len(await other.path("c2")) == 1


async def test_a_rebuilt_index_numbers_a_reply_after_its_question_whatever_the_clock(
    store: FileStore, data_dir: Path
) -> None:
    # The clock stepped back between question and answer (or both share one second).
    question = msg("user", None, "question")
    await store.append_message("c1", question, branch="main")
    answer = msg("assistant", question.id, "answer")
    answer = answer.model_copy(update={"created_at": question.created_at - timedelta(seconds=5)})
    await store.append_message("c1", answer, branch="main")
    (folder(data_dir) / "message_index.json").unlink()
    (folder(data_dir) / "message_index.journal").unlink(missing_ok=True)
    async with FileStore(data_dir) as other:
        with pytest.warns(StoreWarning):
            index = await other.index("c1")
        assert index[question.id].seq < index[answer.id].seq
        document = await export_context(other, "c1")
        assert [m.id for m in document.messages] == [question.id, answer.id]
