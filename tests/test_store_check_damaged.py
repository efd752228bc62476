"""``check`` with one unreadable message file early in a long conversation.

Every message after it goes back to it: a check must read each file a bounded number
of times however many branches end after it (not once per branch and message), report
the files it cuts off in a few lines, and a repair must bring them all back. Real
files, real FileStores; files are counted as the operating system opens them (an audit
hook on ``open``), not by patching.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from store_helpers import chain

from cm_notebook.cli import main
from cm_notebook.errors import CorruptDataError
from cm_notebook.model import Branch, ContextMetadata
from cm_notebook.store import FileStore, StoreWarning

pytestmark = pytest.mark.anyio

_counting: list[Counter[str]] = []


def _count_opens(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _counting and isinstance(args[0], str | Path):
        path = str(args[0])
        if f"{Path('messages')}" in path and path.endswith(".json"):
            _counting[-1][Path(path).name] += 1


sys.addaudithook(_count_opens)  # cannot be removed: it counts only inside opened_files()


@contextmanager
def opened_files() -> Iterator[Counter[str]]:
    """How many times each message file was opened inside the block, by name."""
    counts: Counter[str] = Counter()
    _counting.append(counts)
    try:
        yield counts
    finally:
        _counting.remove(counts)


async def build(data_dir: Path, n: int, branches: int) -> tuple[list[str], int]:
    """A context of ``n`` messages in one conversation, ``branches`` more branches on
    its second half, its journal gone and the snapshot empty (an index to rebuild),
    and the message at the middle emptied; returns the ids and where it is."""
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        ids = await chain(store, "c1", n)
        step = (n // 2) // branches
        await store.create_branches(
            "c1",
            [
                Branch(name=f"b{k}", head=ids[n - 1 - k * step], forked_from=None)
                for k in range(branches)
            ],
        )
    folder = data_dir / "contexts" / "c1"
    (folder / "message_index.journal").unlink()
    (folder / "message_index.json").write_text("{}")
    middle = n // 2
    (folder / "messages" / f"{ids[middle]}.json").write_bytes(b"")
    return ids, middle


async def test_check_reads_each_file_a_few_times_whatever_the_branches(data_dir: Path) -> None:
    n, branches = 200, 40
    await build(data_dir, n, branches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        with opened_files() as counts:
            async with FileStore(data_dir) as store:
                report = await store.check("c1")
    assert not report.ok
    # An open that walks up from every branch head reads the files after the emptied
    # one once per branch through them: 40 times for the one just after it.
    assert counts, "no message file was opened: the count sees nothing"
    assert max(counts.values()) <= 4, counts.most_common(3)
    assert sum(counts.values()) <= 4 * n, sum(counts.values())


async def test_check_sums_up_the_files_and_branches_one_message_cuts_off(
    data_dir: Path,
) -> None:
    n, branches = 60, 12
    ids, middle = await build(data_dir, n, branches)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        async with FileStore(data_dir) as store:
            report = await store.check("c1")
    assert len(report.detached) == n - middle - 1  # all of them, for those who want them
    assert len(report.unwalkable) == branches + 1  # main too
    text = str(report)
    assert len(text.splitlines()) < 10, text
    assert f"left out of the index: {n - middle - 1} message file(s)" in text
    assert f"{branches + 1} branches (" in text
    assert ids[middle] in text


def cli(data_dir: Path, *args: str) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)  # the command shows them, one line
        return main(["--data-dir", str(data_dir), *args])


async def conversation(data_dir: Path) -> tuple[list[str], str]:
    """Six messages on ``main`` and a reply on ``alt`` to the third, compacted (the
    journal holds no copy to restore a file from); returns the ids and alt's reply."""
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        ids = await chain(store, "c1", 6)
        await store.create_branch("c1", "alt", head=ids[2])
        (reply,) = await chain(store, "c1", 1, branch="alt")
        await store.compact("c1")
    return ids, reply


async def test_a_repair_brings_back_what_follows_an_unreadable_first_message(
    data_dir: Path,
) -> None:
    ids, reply = await conversation(data_dir)
    folder = data_dir / "contexts" / "c1"
    first = folder / "messages" / f"{ids[0]}.json"
    first.write_bytes(b"")  # emptied: nothing of it can be read
    # An index to rebuild, as a journal lost with it leaves: every later file is cut off.
    (folder / "message_index.json").write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        async with FileStore(data_dir) as store:
            before = await store.check("c1")
            assert before.indexed == 0
            assert len(before.detached) == 6
            assert "--repair: it keeps that file aside" in str(before)
            report = await store.check("c1", repair=True)
            assert report.ok, str(report)
            assert [name for name, _ in report.stood_in] == [first.name]
            assert "damaged/" in str(report)
            # Every branch reads again, from the stand-in on; nothing else was needed.
            main_path = await store.path("c1")
            alt_path = await store.path("c1", branch="alt")
            stand_in = await store.get_message("c1", ids[0])
            meta = await store.get_metadata("c1")
    assert main_path == ids
    assert alt_path == [*ids[:3], reply]
    assert sorted(meta.branches) == ["alt", "main"]
    assert stand_in.parent_id is None
    assert stand_in.role == "user"
    assert "could not be read" in stand_in.content
    kept = folder / "damaged" / first.name
    assert kept.read_bytes() == b""  # kept aside as it was, never deleted
    assert f"damaged/{first.name}" in stand_in.content
    assert stand_in.metadata.model_dump().get("unreadable_file") == f"damaged/{first.name}"
    assert await anyio.to_thread.run_sync(cli, data_dir, "check") == 0
    whole = str(data_dir / "whole.json")
    assert await anyio.to_thread.run_sync(cli, data_dir, "export", "c1", "-o", whole) == 0


async def test_a_stand_in_keeps_the_parent_and_role_still_readable_in_the_damage(
    data_dir: Path,
) -> None:
    ids, _reply = await conversation(data_dir)
    folder = data_dir / "contexts" / "c1"
    third = folder / "messages" / f"{ids[3]}.json"  # an assistant reply in the middle
    whole = third.read_bytes()
    cut = whole[: whole.index(b'"content"')]  # cut short after its parent and role
    third.write_bytes(cut)
    (folder / "message_index.json").write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        async with FileStore(data_dir) as store:
            report = await store.check("c1", repair=True)
            assert report.ok, str(report)
            stand_in = await store.get_message("c1", ids[3])
            main_path = await store.path("c1")
            meta = await store.get_metadata("c1")
    assert (stand_in.parent_id, stand_in.role) == (ids[2], "assistant")
    assert main_path == ids  # one conversation, whole: no branch had to be made
    assert sorted(meta.branches) == ["alt", "main"]
    assert (folder / "damaged" / third.name).read_bytes() == cut


async def test_an_unreadable_last_message_gets_no_stand_in(data_dir: Path) -> None:
    ids, _reply = await conversation(data_dir)
    folder = data_dir / "contexts" / "c1"
    last = folder / "messages" / f"{ids[-1]}.json"
    last.write_bytes(b"{not json")
    async with FileStore(data_dir) as store:
        report = await store.check("c1", repair=True)
    assert report.stood_in == ()
    assert last.read_bytes() == b"{not json"
    assert not (folder / "damaged").exists()


async def test_what_came_before_a_stand_in_with_no_parent_stays_on_a_branch(
    data_dir: Path,
) -> None:
    ids, reply = await conversation(data_dir)
    folder = data_dir / "contexts" / "c1"
    second = folder / "messages" / f"{ids[1]}.json"
    second.write_bytes(b"\0" * 40)  # nothing of it can be read, not even its parent
    (folder / "message_index.json").write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        async with FileStore(data_dir) as store:
            report = await store.check("c1", repair=True)
            assert report.ok, str(report)
            meta = await store.get_metadata("c1")
            main_path = await store.path("c1")
            alt_path = await store.path("c1", branch="alt")
            before = await store.path("c1", branch="recovered")
    # The conversation starts again at the stand-in; the message it answered, which
    # no branch reached any more, has a branch of its own.
    assert main_path == ids[1:]
    assert alt_path == [*ids[1:3], reply]
    assert report.recovered_branches == ("recovered",)
    assert meta.branches["recovered"].head == ids[0]
    assert before == ids[:1]


async def test_a_damaged_file_kept_before_is_not_overwritten(data_dir: Path) -> None:
    # As a repair stopped after keeping the damaged file, before its stand-in, leaves it.
    ids, _reply = await conversation(data_dir)
    folder = data_dir / "contexts" / "c1"
    first = folder / "messages" / f"{ids[0]}.json"
    first.write_bytes(b"{cut")
    (folder / "damaged").mkdir()
    (folder / "damaged" / first.name).write_bytes(b"{cut, kept earlier")
    (folder / "message_index.json").write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        async with FileStore(data_dir) as store:
            report = await store.check("c1", repair=True)
            assert report.ok, str(report)
            assert await store.path("c1") == ids
    assert (folder / "damaged" / first.name).read_bytes() == b"{cut, kept earlier"
    assert (folder / "damaged" / f"{ids[0]}-2.json").read_bytes() == b"{cut"


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")
async def test_a_linked_damaged_folder_is_refused(data_dir: Path, tmp_path: Path) -> None:
    ids, _reply = await conversation(data_dir)
    folder = data_dir / "contexts" / "c1"
    first = folder / "messages" / f"{ids[0]}.json"
    first.write_bytes(b"")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, folder / "damaged")
    (folder / "message_index.json").write_text("{}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        async with FileStore(data_dir) as store:
            with pytest.raises(CorruptDataError, match="symbolic link"):
                await store.check("c1", repair=True)
    assert list(outside.iterdir()) == []
    assert first.read_bytes() == b""
