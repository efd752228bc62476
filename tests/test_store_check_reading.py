"""A check without repair only reads: it neither waits for a writer nor needs to write.

It takes the context's write lock only to look again at what seems wrong (a file the
index does not list may be another process's append, written but not yet committed)
and to restore a missing file from the journal, so it runs beside a writer holding the
lock (a reply being stored) and on a read-only copy of the data (a mounted backup,
played here by a read-only bind mount, which needs root; skipped otherwise).
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
from cm_notebook.errors import StoreLockTimeoutError
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


async def test_a_file_an_unfinished_append_wrote_is_looked_at_again_under_the_lock(
    data_dir: Path,
) -> None:
    # Another process's append has written its message file and not yet committed it
    # (played by a file put in while a writer holds the context's lock): the check waits
    # for that writer, as every writer does, instead of calling the file unindexed.
    go = threading.Event()
    waiting = threading.Event()
    messages = data_dir / "contexts" / "c1" / "messages"

    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        await store.create_context(ContextMetadata(id="c2"))
        await chain(store, "c1", 2)
        (stray,) = await chain(store, "c2", 1)
    in_progress = (data_dir / "contexts" / "c2" / "messages" / f"{stray}.json").read_bytes()

    def held_fsync(fd: int) -> None:
        if not waiting.is_set():
            (messages / f"{stray}.json").write_bytes(in_progress)
            waiting.set()
            go.wait(timeout=30)
            # The append failed (a full disk, say) and took its file back.
            (messages / f"{stray}.json").unlink()
        os.fsync(fd)

    async with FileStore(data_dir, fsync=held_fsync) as writer, anyio.create_task_group() as tg:
        tg.start_soon(functools.partial(writer.append_message, branch=None), "c1", msg())
        await anyio.to_thread.run_sync(waiting.wait, 10)
        try:
            async with FileStore(data_dir, lock_timeout=0.3) as impatient:
                # The writer holds the lock beyond its timeout: the usual error, no report.
                with pytest.raises(StoreLockTimeoutError, match="another process"):
                    await impatient.check("c1")
            reports = []

            async def check() -> None:
                async with FileStore(data_dir, lock_timeout=30) as checker:
                    reports.append(await checker.check("c1"))

            async with anyio.create_task_group() as checking:
                checking.start_soon(check)
                await anyio.sleep(0.3)  # it sees the file, then waits for the writer
                go.set()
        finally:
            go.set()
    (report,) = reports
    assert report.ok, str(report)
    assert report.indexed == 3  # the writer's message


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
    # A file the index does not list: looked at again under the lock where the lock can
    # be taken, else reported as found.
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c2"))
        (stray,) = await chain(store, "c2", 1)
    stray_file = f"{stray}.json"
    (data_dir / "contexts" / "c2" / "messages" / stray_file).rename(
        data_dir / "contexts" / "c1" / "messages" / stray_file
    )
    async with FileStore(read_only_copy) as reader:
        assert (await reader.check("c1")).unindexed == (stray,)
    arguments = ["--data-dir", str(read_only_copy), "check", "c1"]
    assert await anyio.to_thread.run_sync(main, arguments) == 1
    out = capsys.readouterr().out
    assert f"file missing: messages/{ids[0]}.json" in out
