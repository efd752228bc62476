"""v1 per-context records (those with a ``message_pool``) wherever they appear: in a
list, in ``{"contexts": [...]}`` beside plain records, in an id -> context mapping;
and a migration that leaves messages out does not exit 0."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cm_notebook.migrate import read_v1

FOLDER = Path(__file__).parent / "fixtures" / "v1" / "context_files"
AB = "3f6c1a52-8a4e-4d2b-9c1e-2b7f4e9a1c01"
TOOLS = "7d2e9b40-1c3a-4f5e-8b6d-0a9c8e7f6d02"


def cli(data_dir: Path, *argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
    )


def pool_record(name: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads((FOLDER / f"{name}.json").read_text("utf-8"))
    return record


def stored_messages(data_dir: Path) -> dict[str, int]:
    """Context id -> number of message files written for it."""
    return {
        folder.name: len(list((folder / "messages").glob("*.json")))
        for folder in (data_dir / "contexts").iterdir()
    }


def test_the_folder_runs_advice_for_a_list_of_pool_records_migrates_every_message(
    tmp_path: Path,
) -> None:
    source = tmp_path / "v1"
    source.mkdir()
    (source / "array.json").write_text(json.dumps([pool_record(AB), pool_record(TOOLS)]), "utf-8")
    data = tmp_path / "data"
    folder_run = cli(data, "migrate", "--no-backup", "v1", cwd=tmp_path)
    assert folder_run.returncode == 1, folder_run.stderr
    advice = re.search(r"migrate it on its own: `cm-notebook (.*)`", folder_run.stdout)
    assert advice is not None, folder_run.stdout
    # The command as advised, run where the folder run was.
    done = cli(data, *shlex.split(advice.group(1))[2:], cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 migrated, 0 partial, 0 skipped, 0 failed; 9 message(s) migrated" in done.stdout
    assert "migrated as empty" not in done.stdout
    # The same messages as migrating each per-context file on its own.
    reference = tmp_path / "reference"
    for name in (AB, TOOLS):
        one = cli(reference, "migrate", "--no-backup", str(FOLDER / f"{name}.json"))
        assert one.returncode == 0, one.stdout
    assert stored_messages(data) == stored_messages(reference) == {AB: 5, TOOLS: 4}
    # A second run changes nothing.
    again = cli(data, *shlex.split(advice.group(1))[2:], cwd=tmp_path)
    assert again.returncode == 0, again.stdout
    assert "0 migrated, 0 partial, 2 skipped, 0 failed" in again.stdout


def test_a_pool_record_beside_plain_records_keeps_its_messages(tmp_path: Path) -> None:
    plain = {"id": "plain", "title": "Plain", "messages": [{"role": "user", "content": "Hi"}]}
    source = tmp_path / "contexts.json"
    source.write_text(json.dumps({"contexts": [plain, pool_record(AB)]}), "utf-8")
    data = tmp_path / "data"
    done = cli(data, "migrate", "--no-backup", str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 migrated, 0 partial, 0 skipped, 0 failed; 6 message(s) migrated" in done.stdout
    assert stored_messages(data) == {"plain": 1, AB: 5}


def test_a_mapping_of_pool_records_is_read_as_contexts(tmp_path: Path) -> None:
    record = pool_record(TOOLS)
    del record["id"]  # the key names it
    source = tmp_path / "contexts.json"
    source.write_text(json.dumps({TOOLS: record}), "utf-8")
    (ctx,) = read_v1(source).contexts
    assert (ctx.id, ctx.message_count, len(ctx.messages)) == (TOOLS, 4, 4)


def test_messages_left_out_make_the_command_fail(tmp_path: Path) -> None:
    record = {
        "id": "damaged",
        "title": "One message unreadable",
        "messages": [{"role": "user", "content": "Hi"}, 42, {"role": "assistant", "content": "Yo"}],
    }
    source = tmp_path / "contexts.json"
    source.write_text(json.dumps([record]), "utf-8")
    for command in ("migrate", "import"):
        data = tmp_path / command
        done = cli(data, command, "--no-backup", str(source))
        assert done.returncode == 1, done.stdout + done.stderr
        assert "1 partial" in done.stdout
        assert done.stdout.rstrip().splitlines()[-1] == (
            "warning: 1 context(s) migrated without 1 of their v1 message(s) (see their "
            "problems above); the v1 source still holds them"
        )
        # What could be read was written all the same.
        assert stored_messages(data) == {"damaged": 2}


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_partial_context_with_every_message_exits_0(tmp_path: Path, dry_run: bool) -> None:
    # A branch naming a message v1 never had loses nothing that was there.
    record = {
        "id": "ghostly",
        "messages": [{"id": "m1", "role": "user", "content": "Hi"}],
        "branches": {"main": ["m1", "ghost"]},
    }
    source = tmp_path / "contexts.json"
    source.write_text(json.dumps([record]), "utf-8")
    extra = ["--dry-run"] if dry_run else []
    done = cli(tmp_path / "data", "migrate", "--no-backup", *extra, str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 partial" in done.stdout
    assert "warning:" not in done.stdout
