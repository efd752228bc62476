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
