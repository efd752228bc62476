"""A message file whose parent link is not the one the index committed.

A message's parent never changes once written, so a file naming another one than the
index, while the index's conversation through it reaches a first message, is a damaged
file: ``check`` names it (which file, the parent it names, the index's), and
``check --repair`` rewrites it from the index (or the journal's copy) instead of
rebuilding the index from it, which sent a whole context round a loop (every message
gone from the index) or cut the messages a file skipped off every branch. Real files,
real FileStores, the real command.
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
from cm_notebook.store.codec import file_bytes_from_compact


def message_file(data_dir: Path, mid: str) -> Path:
    return data_dir / "contexts" / "c1" / "messages" / f"{mid}.json"


def set_parent(data_dir: Path, mid: str, parent: str | None) -> None:
    """Edit the parent_id of a message file (valid JSON, all else unchanged)."""
    file = message_file(data_dir, mid)
    raw = json.loads(file.read_text())
    raw["parent_id"] = parent
    file.write_text(json.dumps(raw))


def parent_in_file(data_dir: Path, mid: str) -> str | None:
    parent: str | None = json.loads(message_file(data_dir, mid).read_text())["parent_id"]
    return parent


def cli(data_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The command's exit code, and what it printed (its warnings included)."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", StoreWarning)  # the command prints them
        code = main(["--data-dir", str(data_dir), *args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def build(data_dir: Path, *, compact: bool = True) -> dict[str, list[str]]:
    """``c1``: 12 messages on "main" and a "side" branch of 4 more from the 6th;
    with ``compact``, the journal folded into the snapshot (no copy of any file left)."""

    async def scenario() -> dict[str, list[str]]:
        async with FileStore(data_dir) as store:
            await store.create_context(ContextMetadata(id="c1"))
            main_ids = await chain(store, "c1", 12)
            await store.create_branch("c1", "side", head=main_ids[5])
            side_ids = await chain(store, "c1", 4, branch="side")
            if compact:
                await store.compact("c1")
            return {"main": main_ids, "side": [*main_ids[:6], *side_ids]}

    return anyio.run(scenario)


def branches_read(data_dir: Path) -> dict[str, list[str]]:
    """Each branch's messages as read from their files, head back to the first."""

    async def scenario() -> dict[str, list[str]]:
        async with FileStore(data_dir) as store:
            read = {}
            for name in ("main", "side"):
                ids = await store.path("c1", name)
                read[name] = [m.id for m in await store.get_messages("c1", ids)]
            return read

    return anyio.run(scenario)


def test_a_file_whose_parent_loops_is_rewritten_from_the_index_and_nothing_is_lost(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    branches = build(data_dir)
    first, third = branches["main"][0], branches["main"][2]
    set_parent(data_dir, first, third)  # a loop: first -> third -> second -> first
    assert branches_read(data_dir) == branches  # the index's links still read

    code, said = cli(data_dir, capsys, "check", "c1")
    assert code == 1
    assert (
        f"the file disagrees with the index: messages/{first}.json: its parent is "
        f"{third!r} and role 'user', the index says None and 'user'"
    ) in said
    assert "loop" not in said  # no branch is named as unreadable: they read
    assert "--repair" in said

    code, said = cli(data_dir, capsys, "check", "c1", "--repair")
    assert code == 0, said
    assert f"messages/{first}.json rewritten with the index's parent None" in said
    assert f"it named parent {third!r}" in said  # what the file said is not lost
    assert "rebuilt" not in said
    assert parent_in_file(data_dir, first) is None
    assert branches_read(data_dir) == branches  # every branch whole
    assert cli(data_dir, capsys, "check", "c1")[1].strip() == "c1: 16 message(s), ok"
    assert "16" in cli(data_dir, capsys, "ls")[1]


def test_a_file_whose_parent_skips_messages_does_not_cut_them_off_the_branches(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    branches = build(data_dir)
    sixth, third = branches["main"][5], branches["main"][2]
    set_parent(data_dir, sixth, third)  # skips the 4th and 5th, on both branches
    code, said = cli(data_dir, capsys, "check", "c1")
    assert code == 1
    assert f"messages/{sixth}.json: its parent is {third!r}" in said
    assert f"the index says {branches['main'][4]!r}" in said

    code, said = cli(data_dir, capsys, "check", "c1", "--repair")
    assert code == 0, said
    assert parent_in_file(data_dir, sixth) == branches["main"][4]
    read = branches_read(data_dir)
    assert {name: len(ids) for name, ids in read.items()} == {"main": 12, "side": 10}
    assert read == branches
    assert cli(data_dir, capsys, "check", "c1") == (0, "c1: 16 message(s), ok\n")


def test_a_damaged_link_the_journal_holds_a_copy_of_is_restored_from_it(
    data_dir: Path,
) -> None:
    branches = build(data_dir, compact=False)  # the journal still holds every message
    first, third = branches["main"][0], branches["main"][2]
    set_parent(data_dir, first, third)

    async def scenario() -> None:
        async with FileStore(data_dir) as store:
            report = await store.check("c1")
            assert [name for name, _how in report.damaged_links] == [f"{first}.json"]
            assert not report.ok
            assert (report.unwalkable, report.mislinked) == ((), ())  # no branch breaks
            with pytest.warns(StoreWarning, match="restored from the journal"):
                repaired = await store.check("c1", repair=True)
            assert repaired.ok
            assert (repaired.repaired, repaired.rebuilt) == (True, False)
            done = f"restored from the journal's copy (it named parent {third!r} and role 'user')"
            assert repaired.relinked == ((f"{first}.json", done),)
            assert await store.path("c1") == branches["main"]

    anyio.run(scenario)
    assert parent_in_file(data_dir, first) is None
    assert branches_read(data_dir) == branches


def test_a_rebuild_on_opening_keeps_the_index_s_link_over_a_damaged_file_s(
    data_dir: Path,
) -> None:
    # Two damages at once: a file's link, and a journal line, so the index is rebuilt
    # from the files when the context is read. The snapshot still says where the file's
    # message was: the rebuild keeps that, then the check names the file.
    branches = build(data_dir)
    first, third = branches["main"][0], branches["main"][2]
    set_parent(data_dir, first, third)
    journal = data_dir / "contexts" / "c1" / "message_index.journal"
    with journal.open("ab") as handle:
        handle.write(b"not a journal line\n")

    async def scenario() -> None:
        async with FileStore(data_dir) as store:
            with pytest.warns(StoreWarning) as caught:
                assert await store.path("c1") == branches["main"]
            told = " ".join(str(warning.message) for warning in caught)
            assert "rebuilt from 16 message files" in told
            assert f"kept the index's parent None and role 'user' of message {first!r}" in told
            assert await store.path("c1", "side") == branches["side"]
            report = await store.check("c1")
            assert [name for name, _how in report.damaged_links] == [f"{first}.json"]
            with pytest.warns(StoreWarning, match="rewritten with the index's"):
                assert (await store.check("c1", repair=True)).ok
            assert (await store.check("c1")).ok

    anyio.run(scenario)
    assert parent_in_file(data_dir, first) is None
    assert branches_read(data_dir) == branches


def test_a_link_the_journal_s_own_copy_gets_wrong_stays_repaired_after_compaction(
    data_dir: Path,
) -> None:
    # The journal line's message part (not its index entry) names another parent, and
    # the file agrees with it: the repair must commit the index's link anew, or the
    # next compaction puts the journal's wrong copy back.
    async def build_it() -> list[str]:
        async with FileStore(data_dir) as store:
            await store.create_context(ContextMetadata(id="c1"))
            return await chain(store, "c1", 6)

    ids = anyio.run(build_it)
    first, third = ids[0], ids[2]
    journal = data_dir / "contexts" / "c1" / "message_index.journal"
    lines = []
    for line in journal.read_bytes().split(b"\n"):
        if b"\t" in line and json.loads(line.split(b"\t", 1)[0]).get("id") == first:
            head, body = line.split(b"\t", 1)
            entry, message = json.loads(head), json.loads(body)
            message["parent_id"] = third
            body = json.dumps(message, separators=(",", ":")).encode()
            data = file_bytes_from_compact(body)
            entry["size"] = len(data)
            message_file(data_dir, first).write_bytes(data)
            line = json.dumps(entry, separators=(",", ":")).encode() + b"\t" + body
        lines.append(line)
    journal.write_bytes(b"\n".join(lines))

    async def repair_then_compact() -> None:
        async with FileStore(data_dir) as store:
            assert [name for name, _ in (await store.check("c1")).damaged_links] == [
                f"{first}.json"
            ]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", StoreWarning)
                assert (await store.check("c1", repair=True)).ok
        async with FileStore(data_dir) as store:
            await store.compact("c1")
            assert (await store.check("c1")).ok
            path = await store.path("c1", "main")
            assert [m.id for m in await store.get_messages("c1", path)] == ids

    anyio.run(repair_then_compact)
    assert parent_in_file(data_dir, first) is None
