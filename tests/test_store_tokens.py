"""The change token a write leaves, without looking at the files again.

After its own write a FileStore knows the token the files now give (it is made from
what the write looked at and wrote, see ``ContextState._note_known``), so a session
reading after its own turn needs no read. These tests pin both sides: the token it
notes is exactly the one looking at the files gives (else every read after a write
would miss), and a write by anyone else still makes it stale.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from store_helpers import chain, msg

from cm_notebook.errors import CMError
from cm_notebook.model import ContextMetadata, MessageStatus
from cm_notebook.store import FileStore
from cm_notebook.store.index import COMPACT_MIN_LINES

pytestmark = pytest.mark.anyio


def _current(store: FileStore, cid: str = "c1") -> ContextMetadata:
    known = store.known_metadata(cid)
    assert known is not None, "the store's own write left a token the files do not give"
    token, metadata = known
    assert token == store.change_token(cid)
    return metadata


async def test_every_kind_of_write_leaves_the_token_the_files_give(data_dir: Path) -> None:
    async with FileStore(data_dir) as store, FileStore(data_dir) as fresh:
        await store.create_context(ContextMetadata(id="c1"))
        await store.get_metadata("c1")
        _current(store)
        ids = await chain(store, "c1", 2)
        assert _current(store).branches["main"].head == ids[-1]
        reply = msg("assistant", ids[-1], status=MessageStatus.STREAMING)
        await store.append_message("c1", reply, branch=None)
        _current(store)
        reply.content = "partial"
        await store.update_message("c1", reply)  # a checkpoint: the messages folder only
        _current(store)
        await store.update_message(
            "c1", reply.model_copy(update={"status": MessageStatus.COMPLETE})
        )
        _current(store)
        await store.set_branch_head("c1", "main", reply.id)
        assert _current(store).branches["main"].head == reply.id
        await store.update_metadata("c1", title="renamed")
        assert _current(store).title == "renamed"
        await store.create_branch("c1", "side", head=ids[0])
        assert "side" in _current(store).branches
        await store.compact("c1")
        _current(store)
        # Past a compaction the store makes by itself (snapshot and journal replaced).
        more = await chain(store, "c1", COMPACT_MIN_LINES + 2)
        assert _current(store).branches["main"].head == more[-1]
        assert (data_dir / "contexts" / "c1" / "message_index.journal").stat().st_size < (
            data_dir / "contexts" / "c1" / "message_index.json"
        ).stat().st_size
        # What the store noted is what another store reads from the files.
        assert _current(store) == await fresh.get_metadata("c1")


async def test_a_write_elsewhere_makes_the_noted_token_stale(data_dir: Path) -> None:
    async with FileStore(data_dir) as store, FileStore(data_dir) as other:
        await store.create_context(ContextMetadata(id="c1"))
        ids = await chain(store, "c1", 1)
        _current(store)
        question = msg("user", ids[0], "q")
        await other.append_message("c1", question, branch="main")
        assert store.known_metadata("c1") is None
        assert (await store.get_metadata("c1")).branches["main"].head == question.id
        _current(store)
        await other.update_metadata("c1", title="theirs")
        assert store.known_metadata("c1") is None
        # Its next write reads theirs first, and notes what it leaves.
        await chain(store, "c1", 1)
        assert _current(store).title == "theirs"


async def test_a_link_planted_for_metadata_changes_the_token(data_dir: Path) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        await chain(store, "c1", 1)
        _current(store)
        folder = data_dir / "contexts" / "c1"
        (folder / "elsewhere.json").write_bytes((folder / "metadata.json").read_bytes())
        os.replace(folder / "metadata.json", folder / "kept.json")
        os.symlink(folder / "elsewhere.json", folder / "metadata.json")
        assert store.known_metadata("c1") is None
        with pytest.raises(CMError):
            await store.get_metadata("c1")
        with pytest.raises(CMError):
            await chain(store, "c1", 1)
