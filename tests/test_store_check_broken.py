"""``check --repair`` with message files no conversation leads to, and with look-alike names.

A message file whose parent is gone, or two that name each other as parent, cannot be
put on any path from a first message: listed in the index, they would make every export
of the whole context (and the branch a repair gave them) fail. The repair leaves them
out of the index and names them; their files stay. The branch a repair makes never
looks like a branch already there. Real files, real FileStores, the real command.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import anyio
import pytest
from store_helpers import chain

from cm_notebook.cli import main
from cm_notebook.model import ContextMetadata
from cm_notebook.store import FileStore, StoreWarning

pytestmark = pytest.mark.anyio


def messages_dir(data_dir: Path, cid: str = "c1") -> Path:
    return data_dir / "contexts" / cid / "messages"


def plant(data_dir: Path, mid: str, parent: str | None, role: str = "assistant") -> Path:
    """A message file written behind the store's back (as a lost journal line leaves it)."""
    file = messages_dir(data_dir) / f"{mid}.json"
    message = {
        "id": mid,
        "parent_id": parent,
        "role": role,
        "content": f"text of {mid}",
        "created_at": "2026-01-01T00:00:00Z",
    }
    file.write_text(json.dumps(message))
    return file


def files(data_dir: Path) -> set[str]:
    return {path.name for path in messages_dir(data_dir).iterdir()}


def cli(data_dir: Path, *args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)  # the command shows them, one line
        return main(["--data-dir", str(data_dir), *args])


def assert_everything_reads(data_dir: Path, tmp_path: Path) -> None:
    """``check`` is happy, and the whole context and each of its branches read."""
    assert cli(data_dir, "check") == 0
    assert cli(data_dir, "export", "c1", "-o", str(tmp_path / "whole.json")) == 0

    async def branches() -> list[str]:
        async with FileStore(data_dir) as store:
            return sorted((await store.get_metadata("c1")).branches)

    for name in anyio.run(branches):
        assert cli(data_dir, "show", "c1", "-b", name) == 0, name


async def test_a_file_whose_parent_is_gone_is_named_and_left_out(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 2)
    plant(data_dir, "lost", "gone")
    plant(data_dir, "after-lost", "lost", role="user")  # and what follows it
    report = await store.check("c1")
    assert report.ok  # nothing a repair could do: only named
    assert report.unindexed == ()
    why = "message 'gone', which is missing or unreadable"
    assert report.detached == (("after-lost.json", why), ("lost.json", why))
    assert "left out of the index: messages/lost.json" in str(report)
    repaired = await store.check("c1", repair=True)
    assert not repaired.repaired
    assert repaired.recovered_branches == ()
    assert sorted(await store.index("c1")) == sorted(ids)
    assert {"lost.json", "after-lost.json"} <= files(data_dir)


async def test_files_that_are_each_other_s_parent_are_named_and_left_out(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 2)
    plant(data_dir, "x1", "x2", role="user")
    plant(data_dir, "x2", "x1")
    plant(data_dir, "fine", ids[0])  # a hidden reply that does lead somewhere
    with pytest.warns(StoreWarning) as caught:
        report = await store.check("c1", repair=True)
    told = " ".join(str(warning.message) for warning in caught)
    assert "rebuilt from 5 message files" in told
    assert "left 2 message file(s) out of the rebuilt index" in told
    assert report.brought_back == ("fine",)
    assert report.recovered_branches == ("recovered",)
    loop = "a loop of parent links through 'x1', 'x2'"
    assert report.detached == (("x1.json", loop), ("x2.json", loop))
    assert report.ok
    assert sorted(await store.index("c1")) == sorted([*ids, "fine"])
    assert await store.path("c1", "recovered") == [ids[0], "fine"]
    assert {"x1.json", "x2.json"} <= files(data_dir)


def test_after_the_repair_the_context_exports_and_every_branch_shows(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def setup() -> None:
        async with FileStore(data_dir) as store:
            await store.create_context(ContextMetadata(id="c1"))
            await chain(store, "c1", 2)

    anyio.run(setup)
    plant(data_dir, "lost", "gone")
    plant(data_dir, "x1", "x2", role="user")
    plant(data_dir, "x2", "x1")
    before = files(data_dir)
    assert cli(data_dir, "check", "c1", "--repair") == 0
    out = capsys.readouterr().out
    assert "new branch" not in out
    assert "left out of the index: messages/lost.json" in out
    assert_everything_reads(data_dir, tmp_path)
    assert files(data_dir) == before
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert {message["id"] for message in whole["messages"]}.isdisjoint({"lost", "x1", "x2"})


def test_the_repair_s_branch_does_not_look_like_a_user_s_branch(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def setup() -> list[str]:
        async with FileStore(data_dir) as store:
            await store.create_context(ContextMetadata(id="c1"))
            ids = await chain(store, "c1", 2)
            await store.create_branch("c1", "Recovered", head=ids[0])
            return ids

    ids = anyio.run(setup)
    plant(data_dir, "a2", ids[0])  # a reply whose journal line was lost
    assert cli(data_dir, "check", "c1", "--repair") == 0
    assert "new branch 'recovered-2'" in capsys.readouterr().out
    assert_everything_reads(data_dir, tmp_path)

    async def branches() -> dict[str, str | None]:
        async with FileStore(data_dir) as store:
            return {n: b.head for n, b in (await store.get_metadata("c1")).branches.items()}

    assert anyio.run(branches) == {"main": ids[1], "Recovered": ids[0], "recovered-2": "a2"}


async def test_a_rebuild_on_opening_leaves_them_out_and_branches_none(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 2)
    await store.close()
    plant(data_dir, "lost", "gone")
    plant(data_dir, "x1", "x2", role="user")
    plant(data_dir, "x2", "x1")
    index = data_dir / "contexts" / "c1" / "message_index.json"
    index.write_text("{damaged")
    async with FileStore(data_dir) as reopened:
        with pytest.warns(StoreWarning) as caught:
            assert sorted(await reopened.index("c1")) == sorted(ids)
        told = " ".join(str(warning.message) for warning in caught)
        assert "message_index.json is damaged" in told
        assert "left 3 message file(s) out of the rebuilt index" in told
        assert "messages/lost.json (its conversation goes back to message 'gone'" in told
        assert set((await reopened.get_metadata("c1")).branches) == {"main"}
        assert (await reopened.check("c1")).ok


async def test_check_names_a_branch_whose_path_goes_back_to_a_gone_message(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 2)
    await store.create_branch("c1", "side", head=ids[0])
    await store.compact("c1")  # the heads are in metadata.json alone
    await store.close()
    plant(data_dir, "lost", "gone")
    meta_path = data_dir / "contexts" / "c1" / "metadata.json"
    raw = json.loads(meta_path.read_text())
    raw["branches"]["side"]["head"] = "lost"  # its head is there, its path is not
    meta_path.write_text(json.dumps(raw))
    async with FileStore(data_dir) as reopened:
        # Opening does not rebuild the index for that head again and again.
        assert await reopened.path("c1") == ids
        report = await reopened.check("c1", repair=True)
        assert not report.ok
        why = "message 'gone', which is missing or unreadable"
        assert report.unwalkable == (("side", "lost", why),)
        assert "branch 'side' points at message 'lost', whose conversation goes back" in str(report)
        assert "set_branch_head" in str(report)
        await reopened.set_branch_head("c1", "side", ids[1])
        assert (await reopened.check("c1")).ok
