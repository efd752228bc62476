"""``FileStore.check`` and ``cm-notebook check``: the index against the message files.

Opening a context trusts its index and never lists ``messages/``. Here the index is
put back to an older copy (as a restore from a backup file by file would), which hides
the messages written since; the check finds them and the repair brings them back
without losing the heads the old index held. Real files, real FileStores.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import sys
import warnings
from pathlib import Path

import anyio
import pytest
from store_helpers import chain, msg
from terminal import in_a_terminal

from cm_notebook.cli import main
from cm_notebook.errors import CorruptDataError
from cm_notebook.model import ContextMetadata, MessageStatus
from cm_notebook.store import FileStore, StoreWarning

pytestmark = pytest.mark.anyio

INDEX_FILES = ("message_index.json", "message_index.journal")


def folder(data_dir: Path, cid: str = "c1") -> Path:
    return data_dir / "contexts" / cid


def keep_index(data_dir: Path, where: Path) -> None:
    where.mkdir()
    for name in INDEX_FILES:
        shutil.copy2(folder(data_dir) / name, where / name)


def put_back_index(data_dir: Path, where: Path) -> None:
    for name in INDEX_FILES:
        shutil.copy2(where / name, folder(data_dir) / name)


async def hide_later_messages(
    store: FileStore, data_dir: Path, tmp_path: Path
) -> tuple[list[str], list[str]]:
    """Two turns on "main", the index kept, two more, then the old index put back."""
    before = await chain(store, "c1", 4)
    keep_index(data_dir, tmp_path / "backup")
    after = await chain(store, "c1", 4)
    await store.close()
    put_back_index(data_dir, tmp_path / "backup")
    return before, after


async def test_a_context_in_order_checks_ok(store: FileStore) -> None:
    await chain(store, "c1", 3)
    report = await store.check("c1")
    assert report.ok
    assert report.indexed == 3
    assert str(report) == "c1: 3 message(s), ok"
    assert (await store.check("c1", repair=True)).repaired is False  # nothing to do


async def test_messages_an_old_index_hides_are_found(
    store: FileStore, data_dir: Path, tmp_path: Path
) -> None:
    before, after = await hide_later_messages(store, data_dir, tmp_path)
    async with FileStore(data_dir) as reopened:
        assert await reopened.path("c1") == before  # what opening alone shows
        report = await reopened.check("c1")
        assert not report.ok
        assert report.unindexed == tuple(sorted(after))
        assert "--repair" in str(report)
        assert await reopened.path("c1") == before  # a check changes nothing


async def test_repair_brings_them_back_on_a_branch_and_keeps_the_heads(
    store: FileStore, data_dir: Path, tmp_path: Path
) -> None:
    before, after = await hide_later_messages(store, data_dir, tmp_path)
    async with FileStore(data_dir) as reopened:
        with pytest.warns(StoreWarning, match="rebuilt from 8 message files"):
            report = await reopened.check("c1", repair=True)
        assert report.ok
        assert report.repaired
        assert sorted(report.brought_back) == sorted(after)
        assert report.recovered_branches == ("recovered",)
        assert await reopened.path("c1") == before  # "main" where the old index had it
        assert await reopened.path("c1", "recovered") == before + after
        recovered = (await reopened.get_metadata("c1")).branches["recovered"]
        assert recovered.forked_from == before[-1]
    async with FileStore(data_dir) as again:
        assert (await again.check("c1")).ok
        assert await again.path("c1", "recovered") == before + after


async def test_a_second_repair_names_its_branch_anew(
    store: FileStore, data_dir: Path, tmp_path: Path
) -> None:
    await store.create_branch("c1", "recovered", head=None)
    await hide_later_messages(store, data_dir, tmp_path)
    async with FileStore(data_dir) as reopened:
        with pytest.warns(StoreWarning, match="rebuilt"):
            report = await reopened.check("c1", repair=True)
        assert report.recovered_branches == ("recovered-2",)


async def test_a_missing_file_is_rewritten_from_the_journal_before_the_check(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 2)
    (folder(data_dir) / "messages" / f"{ids[0]}.json").unlink()
    async with FileStore(data_dir) as other:
        with pytest.warns(StoreWarning, match="restored from the journal"):
            report = await other.check("c1")
        assert report.ok
        assert (await other.get_message("c1", ids[0])).content == "main 0"


async def test_a_file_gone_for_good_is_reported_not_dropped(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 2)
    await store.compact("c1")  # the journal no longer holds a copy
    (folder(data_dir) / "messages" / f"{ids[0]}.json").unlink()
    async with FileStore(data_dir) as other:
        report = await other.check("c1", repair=True)
        assert report.missing == (ids[0],)
        assert not report.repaired
        assert "restore or fix" in str(report)
        assert sorted(await other.index("c1")) == sorted(ids)


async def test_an_unreadable_file_is_named_and_left_in_place(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 2)
    await store.compact("c1")  # the journal no longer holds a copy to restore it from
    damaged = folder(data_dir) / "messages" / f"{ids[1]}.json"
    damaged.write_text("{not json")
    report = await store.check("c1", repair=True)
    assert not report.repaired  # a rebuild could only drop it
    assert [name for name, _problem in report.unreadable] == [damaged.name]
    assert "not valid JSON" in report.unreadable[0][1]
    assert damaged.read_text() == "{not json"


async def test_no_rebuild_while_a_listed_file_is_gone(
    store: FileStore, data_dir: Path, tmp_path: Path
) -> None:
    # A rebuild would drop the gone message from the index and break the paths through
    # it (here "main" and the hidden messages after it): the file must come back first.
    before, after = await hide_later_messages(store, data_dir, tmp_path)
    async with FileStore(data_dir) as reopened:
        await reopened.compact("c1")  # no copy of the messages left in the journal
    gone = folder(data_dir) / "messages" / f"{before[-1]}.json"
    kept = gone.read_bytes()
    gone.unlink()
    async with FileStore(data_dir) as reopened:
        report = await reopened.check("c1", repair=True)
        assert not report.repaired
        assert report.missing == (before[-1],)
        assert report.unindexed == tuple(sorted(after))
        assert "restore or fix" in str(report)
        assert "then run with --repair" in str(report)
        assert before[-1] in await reopened.index("c1")
    gone.write_bytes(kept)
    async with FileStore(data_dir) as reopened:
        with pytest.warns(StoreWarning, match="rebuilt"):
            assert (await reopened.check("c1", repair=True)).ok
        assert await reopened.path("c1", "recovered") == before + after


async def _messages(store: FileStore, n: int, chars: int) -> list[str]:
    head = (await store.get_metadata("c1")).branches["main"].head
    ids = []
    for number in range(n):
        message = msg("user" if number % 2 == 0 else "assistant", head, f"{number} " * chars)
        await store.append_message("c1", message, branch="main")
        head = message.id
        ids.append(head)
    return ids


@pytest.mark.parametrize("chars", [1, 2000], ids=["short", "long (the index is read lazily)"])
async def test_an_older_snapshot_beside_the_current_journal_is_rebuilt_on_open(
    store: FileStore, data_dir: Path, chars: int
) -> None:
    # Only message_index.json put back: the journal starts after that snapshot ends, so
    # the messages compacted in between were in no index, and "main" led into a hole.
    snapshot = folder(data_dir) / "message_index.json"
    first = await _messages(store, 3, chars)
    await store.compact("c1")
    older = snapshot.read_bytes()
    between = await _messages(store, 3, chars)
    await store.compact("c1")
    last = await _messages(store, 10, chars)  # in the journal only, "main" moved there
    await store.close()
    snapshot.write_bytes(older)
    async with FileStore(data_dir) as reopened:
        with pytest.warns(StoreWarning, match="older than message_index.journal"):
            assert await reopened.path("c1") == first + between + last
        assert (await reopened.check("c1")).ok
    async with FileStore(data_dir) as again:  # rebuilt for good: no second warning
        assert await again.path("c1") == first + between + last


async def test_an_older_pair_of_index_files_behind_newer_metadata_hides_no_conversation(
    store: FileStore, data_dir: Path, tmp_path: Path
) -> None:
    # metadata.json names a head the put-back index does not list: the index is rebuilt.
    # The messages after that head were on "main" only through journal lines the old
    # copy does not have; they come back on a branch of their own.
    first = await chain(store, "c1", 2)
    keep_index(data_dir, tmp_path / "backup")
    middle = await _messages(store, 2, 1)
    await store.update_metadata("c1", title="heads written to metadata.json")
    last = await _messages(store, 2, 1)
    await store.close()
    put_back_index(data_dir, tmp_path / "backup")
    async with FileStore(data_dir) as reopened:
        with pytest.warns(StoreWarning, match="rebuilt|recovered"):
            assert await reopened.path("c1") == first + middle
        assert await reopened.path("c1", "recovered") == first + middle + last
        assert (await reopened.get_metadata("c1")).branches["recovered"].forked_from == middle[-1]
        assert (await reopened.check("c1")).ok


async def test_a_journal_compaction_had_not_yet_replaced_replays_without_a_rebuild(
    store: FileStore, data_dir: Path
) -> None:
    # Compaction writes the snapshot, then empties the journal: killed in between, the
    # journal's lines are all in the snapshot already. That is not an older snapshot.
    journal = folder(data_dir) / "message_index.journal"
    ids = await _messages(store, 4, 1)
    kept = journal.read_bytes()
    await store.compact("c1")
    await store.close()
    journal.write_bytes(kept)
    async with FileStore(data_dir) as reopened:  # a warning would fail the test
        assert await reopened.path("c1") == ids
        more = await _messages(reopened, 2, 1)
        assert await reopened.path("c1") == ids + more


async def test_a_message_the_index_lost_but_the_folder_holds_is_named_with_the_repair(
    store: FileStore, data_dir: Path
) -> None:
    # A journal line taken out (an edited or merged journal): "main" runs through a
    # message the index no longer lists, though its file is intact. The error must not
    # send the user to restore that file; the repair is what brings it back.
    ids = await _messages(store, 3, 1)
    await store.close()
    journal = folder(data_dir) / "message_index.journal"
    lines = journal.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3  # one line per message, in order
    journal.write_bytes(lines[0] + lines[2])
    async with FileStore(data_dir) as reopened:
        with pytest.raises(CorruptDataError, match=r"although its file .* is intact") as caught:
            await reopened.path("c1")
        assert "check --repair c1" in str(caught.value)
        with pytest.warns(StoreWarning, match="rebuilt"):
            assert (await reopened.check("c1", repair=True)).repaired
        assert await reopened.path("c1") == ids


async def test_a_stray_file_is_unreadable_not_hidden(store: FileStore, data_dir: Path) -> None:
    # Not a message of this context: named once, as unreadable; no rebuild for it.
    await chain(store, "c1", 2)
    stray = folder(data_dir) / "messages" / "notes.json"
    stray.write_text('{"hello": 1}')
    report = await store.check("c1", repair=True)
    assert not report.repaired
    assert report.unindexed == ()
    assert [name for name, _problem in report.unreadable] == ["notes.json"]
    assert "--repair" not in str(report)
    assert stray.exists()


def test_the_command_checks_every_context_and_repairs(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def setup() -> list[str]:
        async with FileStore(data_dir) as store:
            await store.create_context(ContextMetadata(id="c1", title="first"))
            return (await hide_later_messages(store, data_dir, tmp_path))[1]

    after = anyio.run(setup)
    assert main(["--data-dir", str(data_dir), "check"]) == 1
    out = capsys.readouterr().out
    assert all(f"not in the index: messages/{mid}.json" in out for mid in after)
    with warnings.catch_warnings():
        warnings.simplefilter("default", StoreWarning)  # shown by the command, one line
        assert main(["--data-dir", str(data_dir), "check", "c1", "--repair"]) == 0
    out, err = capsys.readouterr()
    assert "new branch 'recovered'" in out
    assert "warning: the message index of context 'c1' was rebuilt from 8" in err
    assert main(["--data-dir", str(data_dir), "check"]) == 0
    assert capsys.readouterr().out == "c1: 8 message(s), ok\n"


def test_the_command_names_an_unknown_context(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--data-dir", str(data_dir), "check", "nope"]) == 1
    assert "nope" in capsys.readouterr().err
    assert main(["--data-dir", str(data_dir), "check"]) == 0
    assert capsys.readouterr().out == f"No readable contexts in {data_dir}.\n"


def test_the_command_without_ids_counts_a_context_it_cannot_read(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def setup() -> None:
        async with FileStore(data_dir) as store:
            await store.create_context(ContextMetadata(id="c1", title="fine"))
            await store.create_context(ContextMetadata(id="c2", title="damaged"))

    anyio.run(setup)
    (data_dir / "contexts" / "c2" / "metadata.json").write_text("{garbage")
    assert main(["--data-dir", str(data_dir), "check"]) == 1
    out, err = capsys.readouterr()
    assert out == "c1: 0 message(s), ok\n"
    assert "c2" in err
    assert "not valid JSON" in err


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_on_a_terminal_the_command_shows_a_bar_beside_the_reports(data_dir: Path) -> None:
    async def setup() -> None:
        async with FileStore(data_dir) as store:
            for number in range(3):
                await store.create_context(ContextMetadata(id=f"c{number}", title="t"))

    anyio.run(setup)
    command = [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir), "check"]
    code, shown = in_a_terminal(command, columns=100)
    assert code == 0
    text = shown.decode()
    assert "checking: 100%" in text
    assert all(f"c{number}: 0 message(s), ok" in text for number in range(3))


@pytest.mark.parametrize("chars", [1, 2000], ids=["short", "long (the index is read lazily)"])
@pytest.mark.parametrize("where", ["at the end", "in the middle"])
async def test_a_copy_of_an_earlier_journal_line_moves_no_head_back(
    store: FileStore, data_dir: Path, chars: int, where: str
) -> None:
    # A journal only grows, each line numbered after the last. A copy of an earlier
    # line (a sync tool, a botched merge) says "main" is at an older message: it is
    # damage, and the newest head move wins.
    journal = folder(data_dir) / "message_index.journal"
    await _messages(store, 3, chars)
    await store.compact("c1")
    ids = await _messages(store, 10, chars)  # long: over 32 KiB, the index is read lazily
    await store.close()
    lines = journal.read_bytes().splitlines(keepends=True)
    at = len(lines) if where == "at the end" else 2
    journal.write_bytes(b"".join([*lines[:at], lines[0], *lines[at:]]))
    async with FileStore(data_dir) as reopened:

        async def read() -> tuple[str | None, list[str]]:
            # The head first, with no walk: a lazy index parses only the lines it needs.
            head = (await reopened.get_metadata("c1")).branches["main"].head
            return head, await reopened.path("c1")

        with pytest.warns(StoreWarning, match="message_index.journal"):
            head, path = await read()
        assert (head, path[-10:]) == (ids[-1], ids)
        assert (await reopened.check("c1")).ok
    async with FileStore(data_dir) as again:
        assert (await again.path("c1"))[-10:] == ids


async def test_a_copy_of_an_earlier_journal_line_appended_under_an_open_store_is_damage(
    store: FileStore, data_dir: Path
) -> None:
    journal = folder(data_dir) / "message_index.journal"
    ids = await _messages(store, 4, 1)
    assert await store.path("c1") == ids  # the journal read up to its end
    with journal.open("ab") as handle:
        handle.write(journal.read_bytes().splitlines(keepends=True)[0])
    with pytest.warns(StoreWarning, match="line numbers only go up"):
        path = await store.path("c1")
    assert path == ids


async def test_check_names_a_branch_head_that_leads_nowhere(
    store: FileStore, data_dir: Path
) -> None:
    ids = await chain(store, "c1", 2)
    await store.create_branch("c1", "side", head=ids[0])
    await store.compact("c1")  # the heads are in metadata.json alone
    await store.close()
    meta_path = folder(data_dir) / "metadata.json"
    raw = json.loads(meta_path.read_text())
    raw["branches"]["side"]["head"] = "m-edited-by-hand"
    meta_path.write_text(json.dumps(raw))
    async with FileStore(data_dir) as reopened:
        report = await reopened.check("c1", repair=True)
        assert not report.ok
        assert report.dangling == (("side", "m-edited-by-hand"),)
        assert "branch 'side' points at message 'm-edited-by-hand'" in str(report)
        assert "set_branch_head" in str(report)
        await reopened.set_branch_head("c1", "side", ids[1])
        assert (await reopened.check("c1")).ok


async def test_check_names_a_message_file_older_than_the_index(
    store: FileStore, data_dir: Path
) -> None:
    # A reply's file put back from a copy taken while it streamed: the index says it is
    # complete, the file still "streaming" with part of the text. Nothing can restore
    # it (compaction dropped the journal's copy): check names it.
    [asked] = await chain(store, "c1", 1)
    reply = msg("assistant", asked, "Hel").model_copy(update={"status": MessageStatus.STREAMING})
    await store.append_message("c1", reply, branch="main")
    file = folder(data_dir) / "messages" / f"{reply.id}.json"
    streaming = file.read_bytes()
    done = reply.model_copy(update={"content": "Hello.", "status": MessageStatus.COMPLETE})
    await store.update_message("c1", done)
    await store.compact("c1")
    assert (await store.check("c1")).ok
    file.write_bytes(streaming)
    report = await store.check("c1")
    assert report.stale == ((file.name, "its status is 'streaming', the index says 'complete'"),)
    assert f"older than the index: messages/{file.name}" in str(report)
    assert "restore or fix" in str(report)


def test_an_index_entry_whose_parent_is_not_the_file_s_is_found_and_repaired(
    tmp_path: Path,
) -> None:
    # Valid JSON naming a message that does not exist: reading the branch fails.
    async def scenario() -> None:
        async with FileStore(tmp_path) as store:
            await store.create_context(ContextMetadata(id="c"))
            ids = await chain(store, "c", 3)
            await store.compact("c")
        index = tmp_path / "contexts" / "c" / "message_index.json"
        text = index.read_text()
        index.write_text(text.replace(f'"parent_id":"{ids[0]}"', '"parent_id":"m01gone"', 1))
        async with FileStore(tmp_path) as store:
            # Advised for this folder: a Python caller pastes the command as it is.
            advised = f"`cm-notebook --data-dir {shlex.quote(str(tmp_path))} check c`"
            with pytest.raises(CorruptDataError, match=re.escape(advised)):
                await store.path("c")
            report = await store.check("c")
            assert not report.ok
            assert report.mislinked
            assert "m01gone" in report.mislinked[0][1]
            assert "--repair" in str(report)
            with pytest.warns(StoreWarning, match="parent or role"):
                repaired = await store.check("c", repair=True)
            assert repaired.ok
            assert await store.path("c") == ids

    anyio.run(scenario)


def test_exporting_a_context_with_an_unreadable_message_says_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def scenario() -> list[str]:
        async with FileStore(tmp_path) as store:
            await store.create_context(ContextMetadata(id="c"))
            ids = await chain(store, "c", 3)
            await store.compact("c")  # the journal no longer holds the files' text
            return ids

    ids = anyio.run(scenario)
    damaged = tmp_path / "contexts" / "c" / "messages" / f"{ids[1]}.json"
    damaged.unlink()
    damaged.mkdir()  # a folder where the file was
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped file's warning, shown by the CLI
        code = main(["--data-dir", str(tmp_path), "export", "c", "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1  # damaged data, not a usage error (2)
    assert "cannot be read" in err
    assert f"`cm-notebook --data-dir {shlex.quote(str(tmp_path))} check c`" in err
    assert not (tmp_path / "o").exists()
