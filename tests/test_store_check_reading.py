"""A check without repair only reads: it neither waits for a writer nor needs to write.

It takes the context's write lock only to restore a missing file from the journal, so
it runs beside a writer holding the lock (a reply being stored) and on a read-only
copy of the data (a mounted backup, played here by a read-only bind mount, which
needs root; skipped otherwise).
"""

from __future__ import annotations

import functools
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from store_helpers import chain, msg

from cm_notebook.cli import main
from cm_notebook.model import ContextMetadata
from cm_notebook.store import FileStore

pytestmark = pytest.mark.anyio


async def test_a_check_runs_while_a_writer_holds_the_lock(data_dir: Path) -> None:
    go = threading.Event()
    waiting = threading.Event()

    def held_fsync(fd: int) -> None:
        waiting.set()
        go.wait(timeout=30)
        os.fsync(fd)

    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        await chain(store, "c1", 2)
    async with (
        FileStore(data_dir, fsync=held_fsync) as writer,
        FileStore(data_dir, lock_timeout=0.5) as checker,
        anyio.create_task_group() as group,
    ):
        group.start_soon(functools.partial(writer.append_message, branch=None), "c1", msg())
        await anyio.to_thread.run_sync(waiting.wait, 10)
        try:
            # A check that took the lock would time out (StoreLockTimeoutError) here.
            report = await checker.check("c1")
        finally:
            go.set()
        assert report.ok
        assert report.indexed == 3  # the writer's line is written, its fsync under way


@pytest.fixture
def read_only_copy(tmp_path: Path, data_dir: Path) -> Iterator[Path]:
    """``data_dir`` seen through a read-only bind mount (root only)."""
    if os.geteuid() != 0:
        pytest.skip("a read-only bind mount needs root")
    view = tmp_path / "read-only"
    view.mkdir()
    mounted = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(data_dir), str(view)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        # Older util-linux ignores "ro" on the first bind: make it read-only again.
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True)
        if os.access(view, os.W_OK) and _writable(view):
            pytest.skip("the bind mount stayed writable")
        yield view
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)


def _writable(folder: Path) -> bool:
    try:
        (folder / ".probe").touch()
    except OSError:
        return False
    (folder / ".probe").unlink()
    return True


async def test_a_read_only_copy_is_checked(
    data_dir: Path, read_only_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        ids = await chain(store, "c1", 2)
    async with FileStore(read_only_copy) as reader:
        assert (await reader.check("c1")).ok
    (data_dir / "contexts" / "c1" / "messages" / f"{ids[0]}.json").unlink()
    async with FileStore(read_only_copy) as reader:
        report = await reader.check("c1")
        # It cannot be restored here, so it is reported (the writable check restores it).
        assert report.missing == (ids[0],)
    arguments = ["--data-dir", str(read_only_copy), "check", "c1"]
    assert await anyio.to_thread.run_sync(main, arguments) == 1
    out = capsys.readouterr().out
    assert f"file missing: messages/{ids[0]}.json" in out
