"""Two migrations into one data folder at once: the second waits for the first, then
finds its contexts migrated, and both succeed (each used to report the contexts the
other wrote first as failed, and exit 1)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from cm_notebook.migrate._lock import MIGRATE_LOCK_NAME
from cm_notebook.store.oslock import OSLock

FIXTURE = Path(__file__).parent / "fixtures" / "v1" / "branches.json"
WAITING = "waiting for another migration into"


def test_a_second_migration_waits_then_skips_what_the_first_wrote(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    source = tmp_path / "src" / "branches.json"
    source.parent.mkdir()
    shutil.copy2(FIXTURE, source)
    held = OSLock(data_dir / MIGRATE_LOCK_NAME)
    held.acquire()  # a migration under way: both runs below must wait for it
    runs = []
    command = [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir)]
    for n in (1, 2):
        path = tmp_path / f"err{n}.txt"
        with path.open("w") as err:
            process = subprocess.Popen(
                [*command, "migrate", str(source)], stdout=subprocess.PIPE, stderr=err, text=True
            )
        runs.append((process, path))
    try:
        deadline = time.monotonic() + 60
        while not all(WAITING in path.read_text() for _, path in runs):
            assert time.monotonic() < deadline, [path.read_text() for _, path in runs]
            assert all(process.poll() is None for process, _ in runs)
            time.sleep(0.05)  # polling files another process writes, with a deadline
        held.close()
        outputs = [process.communicate(timeout=120)[0] for process, _ in runs]
    finally:
        held.close()
        for process, _ in runs:
            if process.poll() is None:
                process.kill()
            process.communicate()
    for (process, _), out in zip(runs, outputs, strict=True):
        assert process.returncode == 0, out
    first, second = sorted(outputs, key=lambda out: "3 skipped" in out)
    assert "2 migrated, 1 partial, 0 skipped, 0 failed" in first, first
    assert "0 migrated, 0 partial, 3 skipped, 0 failed" in second, second
    assert second.count("already migrated") == 3
