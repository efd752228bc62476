"""A journal cut short mid-line loses no finished turn; a write killed mid-line stays silent.

Both leave ``message_index.journal`` ending in a fragment. A writer killed while
appending its line never acknowledged that change, so its fragment is dropped without
a word; a journal cut short by anything else (a backup copied mid-write, a partial
restore) lost lines after the fragment, whose message files go on from one another:
the index is rebuilt from ``messages/`` with a StoreWarning, and every message comes
back (the lost conversation on a ``recovered`` branch).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import anyio
import pytest
from store_helpers import chain

from cm_notebook.model import ContextMetadata
from cm_notebook.store import FileStore, StoreWarning

CHILD = Path(__file__).with_name("store_crash_child.py")


async def prepare(data_dir: Path, turns: int = 3) -> list[str]:
    """c1 with ``turns`` user/assistant turns on main, never compacted."""
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        return await chain(store, "c1", 2 * turns)


async def branches(data_dir: Path) -> dict[str, list[str]]:
    """Each branch's messages, root first, as a fresh FileStore reads them."""
    async with FileStore(data_dir) as store:
        metadata = await store.get_metadata("c1")
        seen = {name: await store.path("c1", name) for name in metadata.branches}
        for path in seen.values():  # every message on a branch reads
            assert len(await store.get_messages("c1", path)) == len(path)
        return seen


def journal(data_dir: Path) -> Path:
    return data_dir / "contexts" / "c1" / "message_index.journal"


def cut_in_line(data: bytes, line: int) -> bytes:
    """``data`` cut in the middle of its line numbered ``line`` (from 0)."""
    lines = data.split(b"\n")
    return b"\n".join(lines[:line]) + b"\n" + lines[line][: len(lines[line]) // 2]


@pytest.mark.parametrize(
    "damage",
    ["mid_line", "half", "all_nul"],
)
def test_a_journal_cut_short_mid_line_is_rebuilt_with_a_warning(
    tmp_path: Path, damage: str
) -> None:
    ids = anyio.run(prepare, tmp_path)
    data = journal(tmp_path).read_bytes()
    cut = {
        "mid_line": cut_in_line(data, 4),  # keeps two turns' first three messages
        "half": data[: len(data) // 2],
        "all_nul": b"\0" * len(data),  # what a power loss can leave of a file's blocks
    }[damage]
    assert not cut.endswith(b"\n")
    journal(tmp_path).write_bytes(cut)

    with pytest.warns(StoreWarning) as caught:
        seen = anyio.run(branches, tmp_path)
    said = " ".join(str(w.message) for w in caught)
    assert "ends in the middle of a line" in said, said
    assert "'recovered'" in said, said
    # Every finished turn is back: the whole conversation is on a branch.
    assert ids in seen.values(), seen
    assert seen["recovered"] == ids

    # Repaired for good: a fresh reader is quiet, and the next write goes on.
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        assert anyio.run(branches, tmp_path) == seen

        async def write_next() -> None:
            async with FileStore(tmp_path) as store:
                await chain(store, "c1", 1, branch="recovered")

        anyio.run(write_next)
        assert len(anyio.run(branches, tmp_path)["recovered"]) == len(ids) + 1


def test_a_cut_journal_is_rebuilt_for_a_reader_that_has_it_open(tmp_path: Path) -> None:
    # A long-lived reader (a server) that read the journal whole before it was cut.
    ids = anyio.run(prepare, tmp_path)

    async def main() -> None:
        async with FileStore(tmp_path) as store:
            assert await store.path("c1", "main") == ids
            journal(tmp_path).write_bytes(cut_in_line(journal(tmp_path).read_bytes(), 4))
            with pytest.warns(StoreWarning) as caught:
                await chain(store, "c1", 1)  # the write rebuilds first, then goes on
            assert any("ends in the middle of a line" in str(w.message) for w in caught)
            assert await store.path("c1", "recovered") == ids

    anyio.run(main)


def test_a_reader_that_has_the_journal_open_rebuilds_it_when_it_is_cut(tmp_path: Path) -> None:
    # A long-lived reader (a server) that only reads: its next read finds the cut.
    ids = anyio.run(prepare, tmp_path)

    async def main() -> None:
        async with FileStore(tmp_path) as store:
            assert await store.path("c1", "main") == ids
            journal(tmp_path).write_bytes(cut_in_line(journal(tmp_path).read_bytes(), 4))
            with pytest.warns(StoreWarning) as caught:
                assert await store.path("c1", "recovered") == ids
            assert any("ends in the middle of a line" in str(w.message) for w in caught)

    anyio.run(main)


def kill_append_mid_line(
    data_dir: Path, probe: Path, parent: str, message_id: str, branch: str | None
) -> None:
    """Append ``message_id`` after ``parent`` in a real child process, SIGKILLed just
    after it put the message file in place (its journal line not written yet), then
    put in the journal the first half of the line it was about to write, as a kill in
    the middle of that write leaves it. The line is taken from the same append run to
    its end in ``probe`` (a copy of ``data_dir``)."""
    args = {"id": message_id, "parent": parent, "content": "torn", "branch": branch}
    request = {"op": "append", "args": args}
    before = journal(probe).read_bytes()
    assert run_child(probe, request, 10**9) == "exit 0"
    line = journal(probe).read_bytes()[len(before) :]
    assert line.count(b"\n") == 1
    assert line.endswith(b"\n")
    kinds = Path(f"{probe}.kinds").read_text().split()
    rename = kinds.index("os.rename") + 1
    assert run_child(data_dir, request, rename, after=True) == "killed 9"
    assert (data_dir / "contexts" / "c1" / "messages" / f"{message_id}.json").exists()
    assert journal(data_dir).read_bytes() == before  # killed before its line
    with journal(data_dir).open("ab") as handle:
        handle.write(line[: len(line) // 2])


def run_child(data_dir: Path, request: dict[str, object], kill_at: int, after: bool = False) -> str:
    """One request to tests/store_crash_child.py: ``exit <code>`` or ``killed <signal>``."""
    full = {"data_dir": str(data_dir), "kill_at": kill_at, "after": after, **request}
    done = subprocess.run(
        [sys.executable, str(CHILD)],
        input=json.dumps(full) + "\n",
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    return done.stdout.strip()


@pytest.mark.skipif(os.name != "posix" or not hasattr(os, "fork"), reason="needs fork")
def test_appends_killed_mid_line_stay_silent_and_unacknowledged(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ids = anyio.run(prepare, data_dir)
    before = anyio.run(branches, data_dir)

    # Twice: the first crash's message file is still there (not listed) at the second.
    for n, (parent, branch) in enumerate(((ids[-1], "main"), (ids[-3], None))):
        probe = tmp_path / f"probe{n}"
        shutil.copytree(data_dir, probe)
        kill_append_mid_line(data_dir, probe, parent, f"m-torn-{n}", branch)
        assert not journal(data_dir).read_bytes().endswith(b"\n")
        with warnings.catch_warnings():
            warnings.simplefilter("error", StoreWarning)
            # Never acknowledged: not listed, and no warning about it.
            assert anyio.run(branches, data_dir) == before

            async def write_next() -> None:
                async with FileStore(data_dir) as store:
                    await chain(store, "c1", 1, branch="side")

            async def make_side() -> None:
                async with FileStore(data_dir) as store:
                    await store.create_branch("c1", "side", head=ids[1])

            if n == 0:
                anyio.run(make_side)
                before["side"] = ids[:2]
            anyio.run(write_next)  # cuts the fragment off
            assert journal(data_dir).read_bytes().endswith(b"\n")
            before = anyio.run(branches, data_dir)
            assert f"m-torn-{n}" not in {mid for ids_ in before.values() for mid in ids_}
