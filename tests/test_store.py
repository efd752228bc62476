"""FileStore behaviour on real files: contexts, messages, branches and every error path."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import anyio
import pytest
from store_helpers import chain, msg

from cm_notebook.errors import (
    BranchExistsError,
    BranchNotFoundError,
    ContextExistsError,
    ContextNotFoundError,
    InvalidIdError,
    InvalidInputError,
    MessageNotFoundError,
    StateError,
)
from cm_notebook.model import (
    SCHEMA_VERSION,
    Branch,
    ContextMetadata,
    Message,
    MessageStatus,
    ProviderSettings,
)
from cm_notebook.store import FileStore, IndexEntry, Store, default_data_dir

pytestmark = pytest.mark.anyio


def ctx(data_dir: Path, cid: str = "c1") -> Path:
    return data_dir / "contexts" / cid


# -- layout and basics ------------------------------------------------------------------


async def test_filestore_implements_the_protocol(store: FileStore) -> None:
    assert isinstance(store, Store)


async def test_layout_on_disk(store: FileStore, data_dir: Path) -> None:
    ids = await chain(store, "c1", 3)
    folder = ctx(data_dir)
    assert (folder / "metadata.json").is_file()
    assert (folder / "message_index.json").is_file()
    assert sorted(p.name for p in (folder / "messages").iterdir()) == sorted(
        f"{i}.json" for i in ids
    )
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION
    # Head moves live in the journal (metadata.json is not rewritten per message): each
    # line says which branch now ends at its message, and carries the message itself.
    assert meta["branches"]["main"]["head"] is None
    lines = (folder / "message_index.journal").read_bytes().splitlines()
    last, copy = lines[-1].split(b"\t")
    assert json.loads(last)["branch"] == "main"
    assert json.loads(last)["id"] == ids[-1]
    assert json.loads(copy)["content"] == "main 2"
    one = json.loads((folder / "messages" / f"{ids[0]}.json").read_text())
    assert one["content"] == "main 0"
    assert one["schema_version"] == SCHEMA_VERSION
    # No temporary files are left behind by successful writes.
    assert not list(folder.rglob("*.tmp"))


async def test_messages_branches_and_paths(store: FileStore) -> None:
    ids = await chain(store, "c1", 4)
    assert await store.path("c1") == ids
    assert await store.path("c1", "main") == ids
    page = await store.page("c1", limit=2)
    assert [m.id for m in page] == ids[2:]
    assert [m.content for m in page] == ["main 2", "main 3"]
    assert [m.id for m in await store.page("c1", limit=2, before=ids[2])] == ids[:2]
    assert await store.page("c1", limit=2, before=ids[0]) == []
    assert await store.page("c1", limit=0) == []
    assert [m.id for m in await store.page("c1", limit=100)] == ids

    # Edit the third message: a sibling on a new branch, forked from it.
    await store.create_branch("c1", "edit", head=ids[1], forked_from=ids[2], description="d")
    sibling = msg("user", ids[1], "edited")
    await store.append_message("c1", sibling, branch="edit")
    assert await store.path("c1", "edit") == [*ids[:2], sibling.id]
    assert await store.children("c1", ids[1]) == [ids[2], sibling.id]
    assert await store.children("c1", None) == [ids[0]]
    assert await store.children("c1", ids[3]) == []
    assert await store.path("c1") == ids  # active branch unchanged

    meta = await store.set_active_branch("c1", "edit")
    assert meta.active_branch == "edit"
    assert await store.path("c1") == [*ids[:2], sibling.id]
    branch = await store.set_branch_head("c1", "main", ids[1])
    assert branch.head == ids[1]
    assert await store.path("c1", "main") == ids[:2]
    await store.set_branch_head("c1", "main", None)
    assert await store.path("c1", "main") == []
    assert await store.page("c1", "main") == []

    index = await store.index("c1")
    assert set(index) == {*ids, sibling.id}
    assert isinstance(index[ids[0]], IndexEntry)
    assert [index[i].seq for i in ids] == [0, 1, 2, 3]
    assert index[sibling.id].seq == 4

    got = await store.get_messages("c1", [ids[3], ids[0]])
    assert [m.content for m in got] == ["main 3", "main 0"]
    assert (await store.get_message("c1", ids[2])).content == "main 2"

    await store.set_active_branch("c1", "main")
    await store.delete_branch("c1", "edit")
    assert "edit" not in (await store.get_metadata("c1")).branches
    # Deleting a branch never deletes messages.
    assert (await store.get_message("c1", sibling.id)).content == "edited"


async def test_concurrent_writers_in_one_process(store: FileStore, data_dir: Path) -> None:
    root = msg("user", None, "root")
    await store.append_message("c1", root, branch="main")
    replies = [msg("assistant", root.id, str(i)) for i in range(30)]
    async with FileStore(data_dir) as other, anyio.create_task_group() as group:
        # Tasks of one FileStore (thread lock) and of a second one (file lock) at once.
        for i, reply in enumerate(replies):
            target = store if i % 2 else other
            group.start_soon(functools.partial(target.append_message, "c1", reply, branch=None))
    children = await store.children("c1", root.id)
    assert sorted(children) == sorted(r.id for r in replies)
    index = await store.index("c1")
    assert sorted(e.seq for e in index.values()) == list(range(31))
    assert children == sorted(children, key=lambda mid: index[mid].seq)


async def test_append_without_branch_moves_no_head(store: FileStore) -> None:
    ids = await chain(store, "c1", 1)
    loose = msg("assistant", ids[0], "regenerated")
    await store.append_message("c1", loose, branch=None)
    assert await store.path("c1") == ids
    assert await store.children("c1", ids[0]) == [loose.id]


async def test_updated_at_moves_with_appends_and_list_order(store: FileStore) -> None:
    await store.create_context(ContextMetadata(id="c2", title="second"))
    before = (await store.get_metadata("c1")).updated_at
    await chain(store, "c1", 1)
    after = (await store.get_metadata("c1")).updated_at
    assert after > before
    assert [m.id for m in await store.list_contexts()] == ["c1", "c2"]
    await chain(store, "c2", 1)
    assert [m.id for m in await store.list_contexts()] == ["c2", "c1"]


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files in /proc")
async def test_listing_contexts_does_not_keep_their_files_open(data_dir: Path) -> None:
    async with FileStore(data_dir) as writer:
        for number in range(60):
            context = await writer.create_context(ContextMetadata(title=f"c{number}"))
            await chain(writer, context.id, 1)
    async with FileStore(data_dir) as reader:
        await reader.get_metadata(context.id)  # one in use
        before = len(os.listdir("/proc/self/fd"))
        listed = await reader.list_contexts()
        assert len(listed) == 60
        assert all(m.branches["main"].head for m in listed)  # heads from the journals
        # Four files for each of 60 contexts before; the one in use stays open.
        assert len(os.listdir("/proc/self/fd")) - before < 10
        assert [m.id for m in await reader.list_contexts()] == [m.id for m in listed]


async def test_update_metadata(store: FileStore) -> None:
    meta = await store.update_metadata(
        "c1",
        title="renamed",
        system_prompt="be brief",
        tags=["x"],
        provider_spec="openai:gpt",
        provider_params={"temperature": 0.1},
    )
    assert meta.title == "renamed"
    again = await store.get_metadata("c1")
    assert again == meta
    assert again.provider.params == {"temperature": 0.1}
    # None leaves fields alone.
    meta2 = await store.update_metadata("c1", title="t2")
    assert meta2.system_prompt == "be brief"
    assert meta2.provider.spec == "openai:gpt"


async def test_update_metadata_with_expected_title_is_a_compare_and_set(
    store: FileStore,
) -> None:
    meta = await store.update_metadata("c1", title="automatic", expected_title="first")
    assert meta.title == "automatic"
    await store.update_metadata("c1", title="chosen")  # another writer's rename
    with pytest.raises(StateError, match="now titled 'chosen', not 'automatic'"):
        await store.update_metadata("c1", title="model's", expected_title="automatic")
    assert (await store.get_metadata("c1")).title == "chosen"


async def test_secrets_are_never_written(store: FileStore, data_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="looks like a secret"):
        await store.update_metadata("c1", provider_params={"api_key": "sk-live-123"})
    assert "sk-live-123" not in (ctx(data_dir) / "metadata.json").read_text()


async def test_returned_metadata_is_a_copy(store: FileStore) -> None:
    meta = await store.get_metadata("c1")
    meta.title = "mutated by caller"
    meta.branches.clear()
    assert (await store.get_metadata("c1")).title == "first"


async def test_update_message_changes_content_and_status(store: FileStore) -> None:
    ids = await chain(store, "c1", 1)
    reply = msg("assistant", ids[0], "par", status=MessageStatus.STREAMING)
    await store.append_message("c1", reply, branch="main")
    assert (await store.index("c1"))[reply.id].status is MessageStatus.STREAMING
    reply.content = "partial answer"
    await store.update_message("c1", reply)
    assert (await store.get_message("c1", reply.id)).content == "partial answer"
    reply.status = MessageStatus.COMPLETE
    reply.content = "full answer"
    await store.update_message("c1", reply)
    assert (await store.index("c1"))[reply.id].status is MessageStatus.COMPLETE
    assert (await store.get_message("c1", reply.id)).content == "full answer"


async def test_delete_context(store: FileStore, data_dir: Path) -> None:
    await chain(store, "c1", 2)
    other = FileStore(data_dir)
    assert len(await other.path("c1")) == 2
    await store.delete_context("c1")
    assert not ctx(data_dir).exists()
    assert os.listdir(data_dir / "contexts") == []
    with pytest.raises(ContextNotFoundError):
        await store.get_metadata("c1")
    # Another FileStore that had it open notices too.
    with pytest.raises(ContextNotFoundError, match="c1"):
        await other.path("c1")
    with pytest.raises(ContextNotFoundError):
        await other.append_message("c1", msg(), branch="main")
    assert not ctx(data_dir).exists()  # the failed write left no folder behind
    await other.close()
    # The id can be used again.
    await store.create_context(ContextMetadata(id="c1"))
    assert await store.path("c1") == []


async def test_default_data_dir_and_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, data_dir: Path
) -> None:
    monkeypatch.setenv("CM_NOTEBOOK_DATA_DIR", str(tmp_path / "from-env"))
    assert default_data_dir() == tmp_path / "from-env"
    async with FileStore() as store:
        assert store.data_dir == tmp_path / "from-env"
        await store.create_context(ContextMetadata(id="envctx"))
    assert (tmp_path / "from-env" / "contexts" / "envctx" / "metadata.json").exists()
    # An explicit argument wins over the environment.
    assert FileStore(data_dir).data_dir == data_dir
    monkeypatch.delenv("CM_NOTEBOOK_DATA_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    if os.name == "posix" and os.uname().sysname != "Darwin":
        assert default_data_dir() == tmp_path / "xdg" / "cm_notebook"
        monkeypatch.setenv("XDG_DATA_HOME", "relative/path")  # ignored, per the XDG spec
        assert default_data_dir() == Path.home() / ".local" / "share" / "cm_notebook"


# -- error paths --------------------------------------------------------------------------


async def test_unknown_context(store: FileStore) -> None:
    for call in (
        store.get_metadata("nope"),
        store.path("nope"),
        store.page("nope"),
        store.index("nope"),
        store.append_message("nope", msg(), branch="main"),
        store.create_branch("nope", "b", head=None),
        store.update_metadata("nope", title="x"),
        store.delete_context("nope"),
    ):
        with pytest.raises(ContextNotFoundError, match="no context 'nope'"):
            await call


async def test_create_existing_context(store: FileStore) -> None:
    with pytest.raises(ContextExistsError, match="already exists"):
        await store.create_context(ContextMetadata(id="c1"))


async def test_create_context_with_heads_is_refused(store: FileStore) -> None:
    meta = ContextMetadata(id="c9", branches={"main": Branch(name="main", head="m1")})
    with pytest.raises(InvalidInputError, match="no messages yet"):
        await store.create_context(meta)


async def test_append_errors(store: FileStore) -> None:
    ids = await chain(store, "c1", 1)
    with pytest.raises(MessageNotFoundError, match="no message 'ghost'"):
        await store.append_message("c1", msg(parent="ghost"), branch="main")
    with pytest.raises(InvalidInputError, match="already has a message"):
        await store.append_message("c1", msg(id=ids[0]), branch="main")
    with pytest.raises(BranchNotFoundError, match="no branch 'nope'"):
        await store.append_message("c1", msg(parent=ids[0]), branch="nope")
    with pytest.raises(InvalidIdError):
        await store.append_message("c1", msg(parent=ids[0]), branch="a/b")
    # None of the refused appends left anything behind.
    assert list(await store.index("c1")) == ids


async def test_update_message_errors(store: FileStore) -> None:
    ids = await chain(store, "c1", 2)
    with pytest.raises(MessageNotFoundError):
        await store.update_message("c1", msg(id="ghost"))
    first = await store.get_message("c1", ids[1])
    with pytest.raises(InvalidInputError, match="cannot change"):
        await store.update_message("c1", first.model_copy(update={"parent_id": None}))
    with pytest.raises(InvalidInputError, match="cannot change"):
        await store.update_message("c1", first.model_copy(update={"role": "user"}))


async def test_branch_errors(store: FileStore) -> None:
    ids = await chain(store, "c1", 1)
    with pytest.raises(BranchExistsError, match="already has a branch 'main'"):
        await store.create_branch("c1", "main", head=None)
    with pytest.raises(MessageNotFoundError):
        await store.create_branch("c1", "b", head="ghost")
    with pytest.raises(MessageNotFoundError):
        await store.create_branch("c1", "b", head=ids[0], forked_from="ghost")
    with pytest.raises(BranchNotFoundError):
        await store.set_branch_head("c1", "nope", ids[0])
    with pytest.raises(MessageNotFoundError):
        await store.set_branch_head("c1", "main", "ghost")
    with pytest.raises(BranchNotFoundError):
        await store.set_active_branch("c1", "nope")
    with pytest.raises(BranchNotFoundError):
        await store.delete_branch("c1", "nope")
    with pytest.raises(StateError, match="active branch"):
        await store.delete_branch("c1", "main")
    with pytest.raises(BranchNotFoundError):
        await store.path("c1", "nope")
    with pytest.raises(BranchNotFoundError):
        await store.page("c1", "nope")


async def test_create_branches_makes_all_of_them_or_none(store: FileStore) -> None:
    ids = await chain(store, "c1", 2)
    made = [
        Branch(name=f"cell-{n}", head=None, labels={"sweep": "s", "cell": str(n)}) for n in range(3)
    ] + [Branch(name="from-first", head=ids[0], params={"seed": 1})]
    await store.create_branches("c1", made)
    branches = (await store.get_metadata("c1")).branches
    assert [branches[b.name] for b in made] == made
    made[0].labels["cell"] = "changed by the caller"  # what the store keeps is its own
    assert (await store.get_metadata("c1")).branches["cell-0"].labels["cell"] == "0"

    before = await store.get_metadata("c1")
    bad_batches: list[tuple[list[Branch], type[Exception], str]] = [
        (
            [Branch(name="new-1", head=None), Branch(name="cell-1", head=None)],
            BranchExistsError,
            "already has a branch 'cell-1'",
        ),
        (
            [Branch(name="new-1", head=None), Branch(name="NEW-1", head=None)],
            InvalidIdError,
            "looks like the existing branch 'new-1'",
        ),
        (
            [Branch(name="new-1", head=None), Branch(name="Cell-2", head=None)],
            InvalidIdError,
            "looks like the existing branch 'cell-2'",
        ),
        (
            [Branch(name="new-1", head=None), Branch(name="new-2", head="ghost")],
            MessageNotFoundError,
            "ghost",
        ),
        (
            [Branch(name="new-1", head=None), Branch.model_construct(name="../x", head=None)],
            InvalidIdError,
            "branch name",
        ),
    ]
    for batch, error, words in bad_batches:
        with pytest.raises(error, match=words):
            await store.create_branches("c1", batch)
    after = await store.get_metadata("c1")
    assert after.branches == before.branches  # not one of them was made
    await store.create_branches("c1", [])  # nothing to do


async def test_lookup_errors(store: FileStore) -> None:
    ids = await chain(store, "c1", 2)
    with pytest.raises(MessageNotFoundError):
        await store.get_message("c1", "ghost")
    with pytest.raises(MessageNotFoundError):
        await store.get_messages("c1", [ids[0], "ghost"])
    with pytest.raises(InvalidIdError, match="must be a string"):
        await store.get_messages("c1", [ids[0], None])  # type: ignore[list-item]
    with pytest.raises(MessageNotFoundError):
        await store.children("c1", "ghost")
    with pytest.raises(MessageNotFoundError):
        await store.page("c1", before="ghost")
    await store.create_branch("c1", "short", head=ids[0])
    with pytest.raises(InvalidInputError, match="not on branch"):
        await store.page("c1", "short", before=ids[1])
    for bad in (-1, 1.5, True):
        with pytest.raises(InvalidInputError, match="limit"):
            await store.page("c1", limit=bad)  # type: ignore[arg-type]


HOSTILE = ["../..", "..", ".", "a/b", "a\\b", "\x00", "x" * 200, "con", "/etc", ""]


@pytest.mark.parametrize("bad", HOSTILE)
async def test_hostile_ids_never_touch_files(store: FileStore, data_dir: Path, bad: str) -> None:
    before = sorted(str(p) for p in data_dir.parent.rglob("*"))
    with pytest.raises(InvalidIdError):
        await store.get_metadata(bad)
    with pytest.raises(InvalidIdError):
        await store.delete_context(bad)
    with pytest.raises(InvalidIdError):
        await store.get_message("c1", bad)
    with pytest.raises(InvalidIdError):
        await store.children("c1", bad)
    with pytest.raises(InvalidIdError):
        await store.page("c1", before=bad)
    with pytest.raises(InvalidIdError):
        await store.create_branch("c1", "b", head=bad)
    with pytest.raises(InvalidIdError):
        await store.append_message("c1", Message.model_construct(id=bad, role="user"), branch=None)
    with pytest.raises(InvalidIdError):
        await store.append_message(bad, msg(), branch="main")
    with pytest.raises(InvalidIdError):
        await store.create_context(ContextMetadata.model_construct(id=bad))
    assert sorted(str(p) for p in data_dir.parent.rglob("*")) == before


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", " main", "a\x00"])
async def test_hostile_branch_names_are_refused(store: FileStore, bad: str) -> None:
    with pytest.raises(InvalidIdError):
        await store.create_branch("c1", bad, head=None)
    with pytest.raises(InvalidIdError):
        await store.path("c1", bad)
    with pytest.raises(InvalidIdError):
        await store.set_active_branch("c1", bad)
    assert list((await store.get_metadata("c1")).branches) == ["main"]


async def test_symlink_out_of_the_data_dir_is_refused(
    store: FileStore, data_dir: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (ctx(data_dir, "evil")).symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidIdError, match="outside the data directory"):
        await store.get_metadata("evil")
    with pytest.warns(UserWarning, match="evil"):
        listed = await store.list_contexts()
    assert [m.id for m in listed] == ["c1"]
    assert list(outside.iterdir()) == []


async def test_a_contexts_folder_moved_and_linked_back_is_named_with_the_data_dir_to_use(
    data_dir: Path, tmp_path: Path
) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (data_dir / "contexts").rename(moved / "contexts")
    (data_dir / "contexts").symlink_to(moved / "contexts", target_is_directory=True)
    async with FileStore(data_dir) as store:
        with pytest.raises(InvalidIdError) as refused:
            await store.get_metadata("c1")
    assert f"{data_dir / 'contexts'} is a symbolic link" in str(refused.value)
    assert f"as the data directory ({moved})" in str(refused.value)
    async with FileStore(moved) as store:  # as told: it reads
        assert (await store.get_metadata("c1")).id == "c1"


async def test_store_rejects_negative_lock_timeout(data_dir: Path) -> None:
    with pytest.raises(InvalidInputError):
        FileStore(data_dir, lock_timeout=-1)


async def test_branch_settings_are_stored_and_updated(store: FileStore, data_dir: Path) -> None:
    ids = await chain(store, "c1", 2)
    created = await store.create_branch(
        "c1", "terse", head=ids[1], system_prompt="Answer in five words.", params={"seed": 1}
    )
    assert created.system_prompt == "Answer in five words."
    updated = await store.update_branch(
        "c1", "terse", provider=ProviderSettings(spec="scripted:x"), params={"temperature": 0.5}
    )
    # Only what was named changed; the head stays.
    assert updated.system_prompt == "Answer in five words."
    assert updated.head == ids[1]
    assert updated.params == {"temperature": 0.5}
    cleared = await store.update_branch("c1", "terse", system_prompt=None)
    assert cleared.system_prompt is None
    async with FileStore(data_dir) as other:
        again = (await other.get_metadata("c1")).branches["terse"]
    assert again == cleared
    with pytest.raises(InvalidInputError, match="looks like a secret"):
        await store.update_branch("c1", "terse", params={"password": "x"})
    with pytest.raises(BranchNotFoundError):
        await store.update_branch("c1", "nope", system_prompt="x")
