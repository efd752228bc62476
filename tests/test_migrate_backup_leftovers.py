"""Backup copies a killed migration left half written (``<source>.v1-backup-<time>.tmp``)
are removed by the next run, and only they: a copy another process is writing stays."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
POOL = FIXTURES / "context_files" / "3f6c1a52-8a4e-4d2b-9c1e-2b7f4e9a1c01.json"


def cli(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_half_written_backup_of_a_folder_is_removed_by_the_next_run(tmp_path: Path) -> None:
    source = tmp_path / "v1"
    source.mkdir()
    shutil.copy(POOL, source / POOL.name)
    # What a run killed while copying the folder leaves: a .tmp folder, part of the files.
    cut = tmp_path / "v1.v1-backup-20260101T000000Z.tmp"
    cut.mkdir()
    (cut / POOL.name).write_bytes(POOL.read_bytes()[:100])
    # Not this source's, or not named as a backup copy is named: left alone.
    others = [
        tmp_path / "v1-old.v1-backup-20260101T000000Z.tmp",
        tmp_path / "v1.v1-backup-mine.tmp",
        tmp_path / "v1.v1-backup-20260101T000000Z.tmp.keep",
    ]
    for other in others:
        other.write_text("mine")
    done = cli(tmp_path / "data", "migrate", str(source))
    assert done.returncode == 0, done.stdout + done.stderr
    assert not cut.exists()
    assert (
        f"note: removed {cut}: a backup copy that an earlier migration was stopped in the "
        "middle of writing" in done.stdout
    )
    assert all(other.read_text() == "mine" for other in others)
    (backup,) = tmp_path.glob("v1.v1-backup-2*Z")
    assert os.listdir(backup) == [POOL.name]
    assert (backup / POOL.name).read_bytes() == POOL.read_bytes()


@pytest.mark.skipif(sys.platform == "win32", reason="flock locks")
def test_a_backup_copy_being_written_is_left_alone_and_named(tmp_path: Path) -> None:
    import fcntl

    source = tmp_path / "contexts.json"
    shutil.copy(FIXTURES / "branches.json", source)
    # Another migration of this file (into another data folder) writing its copy now.
    writing = tmp_path / "contexts.json.v1-backup-20260101T000000Z-2.tmp"
    writing.write_bytes(b"[")
    with writing.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        done = cli(tmp_path / "data", "migrate", str(source))
        assert writing.read_bytes() == b"["
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"note: {writing} is a backup copy that another migration is writing now" in (
        done.stdout
    )
    # Once its writer is gone, the next run that backs the file up removes it.
    again = cli(tmp_path / "other", "migrate", str(source))
    assert f"note: removed {writing}" in again.stdout
    assert not writing.exists()
