"""Migration from v1: a record whose id an existing context that is another record
already has gets a new id; only an earlier migration of the same record is ever
offered for removal."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_process import cli

from cm_notebook.migrate import ContextStatus, migrate
from cm_notebook.model import ContextMetadata
from cm_notebook.store import FileStore


def chat(title: str, *texts: str) -> dict[str, Any]:
    return {
        "id": "1",
        "title": title,
        "messages": [{"role": "user", "content": text} for text in texts],
    }


def test_same_id_from_another_source_is_kept_under_a_new_id(tmp_path: Path) -> None:
    data = tmp_path / "data"
    work, home = tmp_path / "work.json", tmp_path / "home.json"
    work.write_text(json.dumps([chat("work chat", "work question", "work answer")]))
    home.write_text(json.dumps([chat("home chat", "home question")]))
    assert cli(data, "migrate", str(work), "--no-backup").returncode == 0
    second = cli(data, "migrate", str(home), "--no-backup")
    assert second.returncode == 0, second.stdout
    assert "rm 1" not in second.stdout
    assert f"id '1' is taken by an existing context that was migrated from {work}" in (
        " ".join(second.stdout.split())
    )
    listing = cli(data, "ls").stdout
    assert "work chat" in listing
    assert "home chat" in listing
    assert "work answer" in cli(data, "show", "1").stdout
    # Running it again recognises what it did.
    again = cli(data, "migrate", str(home), "--no-backup")
    assert again.returncode == 0
    assert "already migrated" in again.stdout


@pytest.mark.anyio
async def test_same_id_as_a_context_made_here_is_kept_under_a_new_id(
    data_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "contexts.json"
    source.write_text(json.dumps([chat("from v1", "hello")]))
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="1", title="made here"))
        report = await migrate(source, store, progress=False, backup=False)
        (result,) = report.contexts
        assert result.status is ContextStatus.MIGRATED
        assert result.id not in (None, "1")
        taken = "is taken by an existing context that did not come from v1"
        assert any(taken in note for note in result.notes)
        assert (await store.get_metadata("1")).title == "made here"


@pytest.mark.anyio
async def test_an_earlier_migration_without_a_recorded_source_is_told_apart_by_content(
    data_dir: Path, tmp_path: Path
) -> None:
    # Contexts migrated before the source file was recorded carry only the record's hash.
    source = tmp_path / "contexts.json"
    source.write_text(json.dumps([chat("home chat", "home question")]))
    async with FileStore(data_dir) as store:
        older = ContextMetadata(
            id="1",
            title="work chat",
            extra={"v1_source_sha256": "0" * 64, "v1_source_kind": "contexts.json"},
        )
        await store.create_context(older)
        report = await migrate(source, store, progress=False, backup=False)
        (result,) = report.contexts
        assert result.status is ContextStatus.MIGRATED
        assert result.id != "1"
        assert any("is a different conversation" in n for n in result.notes)
