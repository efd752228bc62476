"""Migration from v1, real runs on a FileStore: writing, validation, idempotency, dry run,
backups, reports, and records that cannot be converted."""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from store_helpers import FailingStore

from cm_notebook._cli_advice import data_dir_option
from cm_notebook.errors import MigrationError
from cm_notebook.migrate import (
    ContextStatus,
    MigrationReport,
    content_digest,
    convert,
    load_v1,
    migrate,
)
from cm_notebook.store import FileStore

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
GOOD = sorted(p.name for p in FIXTURES.glob("*.json") if p.name != "unknown_shape.json")


def copy_fixture(name: str, folder: Path) -> Path:
    """A copy of a fixture to migrate from, so that backups never land in the repo."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    shutil.copy2(FIXTURES / name, target)
    return target


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and folder under ``root`` with its mtime and contents."""
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
async def store(data_dir: Path) -> Any:
    async with FileStore(data_dir) as opened:
        yield opened


@pytest.mark.anyio
async def test_migrate_writes_and_validates(store: FileStore, tmp_path: Path) -> None:
    source = copy_fixture("branches.json", tmp_path / "src")
    report = await migrate(source, store, progress=False)
    assert isinstance(report, MigrationReport)
    assert report.ok
    assert [c.status for c in report.contexts] == [
        ContextStatus.MIGRATED,
        ContextStatus.PARTIAL,  # the 'ghost' reference
        ContextStatus.MIGRATED,
    ]
    assert [c.id for c in report.contexts] == [
        "ctx-branches",
        "ctx-inconsistent",
        "ctx-partial-branches",
    ]
    assert report.messages_migrated == 14
    assert report.contexts[1].messages_copied == 2
    assert await store.path("ctx-branches", "alt") == ["b1", "b2", "b5", "b6"]
    assert (await store.get_metadata("ctx-branches")).active_branch == "alt"
    assert len(await store.index("ctx-inconsistent")) == 6
    # The content hash in the report was computed from what the store gave back.
    v1 = json.loads(source.read_text())[0]["messages"]
    assert report.contexts[0].content_sha256 == content_digest(
        (m["role"], m["content"]) for m in v1
    )
    text = str(report)
    assert "2 migrated, 1 partial, 0 skipped, 0 failed; 14 message(s) migrated" in text
    assert "problem: branch 'feature/x' lists unknown message 'ghost'; skipped" in text
    assert report.to_dict()["contexts"][1]["status"] == "partial"


@pytest.mark.anyio
@pytest.mark.parametrize("name", GOOD)
async def test_every_fixture_migrates(store: FileStore, name: str) -> None:
    report = await migrate(FIXTURES / name, store, progress=False, backup=False)
    for result in report.contexts:
        if result.status in (ContextStatus.MIGRATED, ContextStatus.PARTIAL):
            assert result.id is not None
            meta = await store.get_metadata(result.id)
            assert meta.title == result.title
            assert len(await store.index(result.id)) == (
                result.messages_migrated + result.messages_copied
            )


@pytest.mark.anyio
async def test_second_run_changes_nothing(store: FileStore, data_dir: Path, tmp_path: Path) -> None:
    sources = [copy_fixture(n, tmp_path / "src") for n in GOOD]
    for source in sources:
        await migrate(source, store, progress=False)
    before = snapshot(data_dir)
    backups_before = sorted((tmp_path / "src").glob("*.v1-backup-*"))
    for source in sources:
        report = await migrate(source, store, progress=False)
        assert report.messages_migrated == 0
        statuses = {c.status for c in report.contexts}
        assert statuses <= {ContextStatus.SKIPPED, ContextStatus.FAILED}
        assert report.backup is None  # nothing to write: no new backup either
    assert snapshot(data_dir) == before
    assert sorted((tmp_path / "src").glob("*.v1-backup-*")) == backups_before


@pytest.mark.anyio
async def test_skip_reasons(store: FileStore) -> None:
    report = await migrate(FIXTURES / "missing_ids.json", store, progress=False, backup=False)
    first, dup, clash, same = report.contexts
    assert first.status is ContextStatus.MIGRATED
    assert dup.status is ContextStatus.MIGRATED
    assert clash.status is ContextStatus.MIGRATED
    assert clash.id != "ctx-dup-msg"
    assert "is used twice in the source" in clash.notes[0]
    assert same.status is ContextStatus.SKIPPED
    assert same.notes == ["identical to context #1 of the source"]
    again = await migrate(FIXTURES / "missing_ids.json", store, progress=False, backup=False)
    assert [c.status for c in again.contexts] == [ContextStatus.SKIPPED] * 4
    assert again.contexts[0].notes == ["already migrated"]


@pytest.mark.anyio
async def test_dry_run_writes_nothing(store: FileStore, data_dir: Path, tmp_path: Path) -> None:
    source = copy_fixture("tool_calls.json", tmp_path / "src")
    before_src = source.read_bytes()
    before = snapshot(data_dir)
    report = await migrate(source, store, dry_run=True, progress=False)
    assert report.dry_run
    assert [c.status for c in report.contexts] == [ContextStatus.PARTIAL]
    assert report.contexts[0].messages_migrated == 7
    assert report.backup is None
    assert snapshot(data_dir) == before
    assert await store.list_contexts() == []
    assert sorted(p.name for p in source.parent.iterdir()) == ["tool_calls.json"]
    assert source.read_bytes() == before_src
    assert str(report).startswith("Dry run: ")
    assert "1 partial" in str(report)
    assert "7 message(s) would be migrated" in str(report)


@pytest.mark.anyio
async def test_backup_is_made_and_source_untouched(store: FileStore, tmp_path: Path) -> None:
    source = copy_fixture("localstorage.json", tmp_path / "src")
    stat = source.stat()
    report = await migrate(source, store, progress=False)
    assert report.backup is not None
    assert report.backup.parent == source.parent
    assert report.backup.name.startswith("localstorage.json.v1-backup-")
    assert report.backup.read_bytes() == source.read_bytes()
    assert source.stat().st_mtime_ns == stat.st_mtime_ns
    assert (FIXTURES / "localstorage.json").read_bytes() == source.read_bytes()
    # An identical backup is reused rather than piled up when writing again.
    await store.delete_context("1714636800000")
    again = await migrate(source, store, progress=False)
    assert again.backup == report.backup
    assert len(list(source.parent.glob("*.v1-backup-*"))) == 1


@pytest.mark.anyio
async def test_no_backup(store: FileStore, tmp_path: Path) -> None:
    source = copy_fixture("contexts_list.json", tmp_path / "src")
    report = await migrate(source, store, progress=False, backup=False)
    assert report.backup is None
    assert list(source.parent.iterdir()) == [source]


@pytest.mark.anyio
@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="needs a folder this user cannot write"
)
async def test_backup_falls_back_to_the_data_dir(
    store: FileStore, data_dir: Path, tmp_path: Path
) -> None:
    source = copy_fixture("contexts_list.json", tmp_path / "ro")
    source.parent.chmod(0o555)
    try:
        report = await migrate(source, store, progress=False)
    finally:
        source.parent.chmod(0o755)
    assert report.backup is not None
    assert report.backup.parent == data_dir / "backups"


@pytest.mark.anyio
async def test_no_migration_without_a_backup(store: FileStore, tmp_path: Path) -> None:
    # A name so long that "<name>.v1-backup-<time>" exceeds the file system's name limit:
    # no backup can be made anywhere, so nothing may be written.
    name = "c" * 220 + ".json"
    source = tmp_path / name
    shutil.copy2(FIXTURES / "contexts_list.json", source)
    with pytest.raises(MigrationError, match=r"cannot back up .*nothing was migrated"):
        await migrate(source, store, progress=False)
    assert await store.list_contexts() == []
    report = await migrate(source, store, progress=False, backup=False)
    assert report.ok


@pytest.mark.anyio
async def test_bad_records_do_not_stop_the_rest(store: FileStore) -> None:
    report = await migrate(FIXTURES / "malformed.json", store, progress=False, backup=False)
    assert [c.status for c in report.contexts] == [
        ContextStatus.PARTIAL,
        ContextStatus.FAILED,
        ContextStatus.FAILED,
        ContextStatus.MIGRATED,
    ]
    assert not report.ok
    partial = report.contexts[0]
    assert (partial.source_messages, partial.messages_migrated) == (8, 7)
    assert len(partial.problems) == 3
    assert report.contexts[1].problems == ["cannot convert: context #1 is a str, not an object"]
    assert {c.id for c in await store.list_contexts()} == {"ctx-malformed", "ctx-after"}
    assert "7/8 message(s)" in str(report)


@pytest.mark.anyio
async def test_changed_source_is_not_overwritten(store: FileStore, tmp_path: Path) -> None:
    source = copy_fixture("contexts_list.json", tmp_path / "src")
    await migrate(source, store, progress=False, backup=False)
    data = json.loads(source.read_text())
    data[0]["messages"].append({"id": "m6", "role": "user", "content": "one more"})
    source.write_text(json.dumps(data))
    report = await migrate(source, store, progress=False, backup=False)
    changed, same = report.contexts
    assert changed.status is ContextStatus.FAILED
    assert "different version of this record" in changed.problems[0]
    # The command names the store's folder (not the default one): pasted, it acts there.
    option = data_dir_option(store.data_dir)
    assert f"cm-notebook {option} rm ctx-planning" in changed.problems[0]
    assert same.status is ContextStatus.SKIPPED
    assert len(await store.index("ctx-planning")) == 5


@pytest.mark.anyio
async def test_incomplete_earlier_migration_is_finished(store: FileStore) -> None:
    conv = convert(load_v1(FIXTURES / "contexts_object.json")[0])
    empty = {n: b.model_copy(update={"head": None}) for n, b in conv.metadata.branches.items()}
    await store.create_context(conv.metadata.model_copy(update={"branches": empty}))
    await store.append_message(conv.metadata.id, conv.messages[0], branch=None)
    report = await migrate(FIXTURES / "contexts_object.json", store, progress=False, backup=False)
    result = report.contexts[0]
    assert result.status is ContextStatus.MIGRATED, result.problems
    assert any("interrupted after 1 of its messages" in note for note in result.notes)
    assert sorted(await store.index(conv.metadata.id)) == sorted(m.id for m in conv.messages)


@pytest.mark.anyio
async def test_an_earlier_versions_migration_whose_branch_leads_somewhere_is_left_alone(
    store: FileStore,
) -> None:
    # No "unfinished" mark: an earlier version migrated it (this version converts the
    # record to more messages, say) or was stopped, and the context was used since. Left
    # as it is, with a note; not a failure whose remedy deletes the user's work.
    conv = convert(load_v1(FIXTURES / "contexts_object.json")[0])
    empty = {n: b.model_copy(update={"head": None}) for n, b in conv.metadata.branches.items()}
    await store.create_context(conv.metadata.model_copy(update={"branches": empty}))
    first = conv.messages[0]
    name = next(iter(conv.metadata.branches))
    await store.append_message(conv.metadata.id, first, branch=name)  # someone used it
    report = await migrate(FIXTURES / "contexts_object.json", store, progress=False, backup=False)
    result = report.contexts[0]
    assert result.status is ContextStatus.SKIPPED, result.problems
    assert not result.problems
    (note,) = result.notes
    assert f"already migrated as {conv.metadata.id!r} by an earlier version" in note
    assert f"{len(conv.messages) - 1} message(s) this version makes of it" in note
    assert f"branch {name!r} already leads somewhere" in note
    assert f"cm-notebook {data_dir_option(store.data_dir)} export {conv.metadata.id}" in note
    assert list(await store.index(conv.metadata.id)) == [first.id]  # nothing written


class _UnreadableMessages:
    """The real FileStore behind the Store protocol, whose message files fail to read
    (a disk's I/O error)."""

    def __init__(self, inner: FileStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get_messages(self, context_id: str, ids: Any) -> Any:
        raise OSError(errno.EIO, "Input/output error")


@pytest.mark.anyio
async def test_an_earlier_migration_that_cannot_be_read_is_a_failure_to_run_again(
    store: FileStore,
) -> None:
    # Not "already migrated by an earlier version": nothing is known about it.
    conv = convert(load_v1(FIXTURES / "contexts_object.json")[0])
    empty = {n: b.model_copy(update={"head": None}) for n, b in conv.metadata.branches.items()}
    await store.create_context(conv.metadata.model_copy(update={"branches": empty}))
    await store.append_message(conv.metadata.id, conv.messages[0], branch=None)
    failing = _UnreadableMessages(store)
    report = await migrate(
        FIXTURES / "contexts_object.json",
        failing,
        progress=False,
        backup=False,  # type: ignore[arg-type]
    )
    result = report.contexts[0]
    assert result.status is ContextStatus.FAILED
    assert "could not be read: [Errno 5] Input/output error" in result.problems[0]
    assert "run the migration again" in result.problems[0]
    assert not result.notes


@pytest.mark.anyio
async def test_write_failure_discards_that_context_only(store: FileStore) -> None:
    failing = FailingStore(store, fail_on="m3")
    report = await migrate(
        FIXTURES / "contexts_list.json",
        failing,
        progress=False,
        backup=False,
    )
    planning, poem = report.contexts
    assert planning.status is ContextStatus.FAILED
    assert planning.problems == ["could not write: [Errno 28] No space left on device"]
    assert poem.status is ContextStatus.MIGRATED
    assert [c.id for c in await store.list_contexts()] == ["ctx-poem"]
    # The failed context was removed, so a later run migrates it afresh.
    report = await migrate(FIXTURES / "contexts_list.json", store, progress=False, backup=False)
    assert [c.status for c in report.contexts] == [ContextStatus.MIGRATED, ContextStatus.SKIPPED]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.anyio
@pytest.mark.parametrize("progress", [True, False])
async def test_progress_bar(
    store: FileStore, monkeypatch: pytest.MonkeyPatch, progress: bool
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    report = await migrate(FIXTURES / "contexts_list.json", store, progress=progress, backup=False)
    assert report.ok
    if progress:
        assert "migrating" in terminal.getvalue()
        assert "2/2" in terminal.getvalue()
    else:
        assert terminal.getvalue() == ""


@pytest.mark.anyio
async def test_progress_bar_is_off_when_stderr_is_not_a_terminal(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    await migrate(FIXTURES / "contexts_list.json", store, backup=False)
    assert pipe.getvalue() == ""


@pytest.mark.anyio
async def test_unreadable_source_raises_before_touching_the_store(
    store: FileStore, data_dir: Path
) -> None:
    with pytest.raises(MigrationError, match="is not JSON"):
        await migrate(FIXTURES / "not_json.txt", store)
    assert snapshot(data_dir) == {}
