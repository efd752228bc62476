"""Streaming locks: a finished stream's lock file is reused, never another writer's."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from store_helpers import msg

from cm_notebook.errors import StoreError
from cm_notebook.model import ContextMetadata, MessageStatus
from cm_notebook.store import FileStore
from cm_notebook.store.context import lock_is_held
from cm_notebook.store.oslock import OSLock

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock and hard links")


def lock_files(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if name.startswith(".streaming-"))


async def stream_replies(store: FileStore, cid: str, count: int) -> list[int]:
    """Stream ``count`` replies; the inode of each one's lock file while it streams."""
    folder = store.data_dir / "contexts" / cid
    inodes = []
    head = None
    for n in range(count):
        asked = msg("user", head, f"question {n}")
        await store.append_message(cid, asked, branch="main")
        reply = msg("assistant", asked.id, "", status=MessageStatus.STREAMING)
        await store.append_message(cid, reply, branch="main")
        inodes.append(os.stat(folder / f".streaming-{reply.id}.lock").st_ino)
        done = reply.model_copy(update={"content": "an answer", "status": MessageStatus.COMPLETE})
        await store.update_message(cid, done)
        head = reply.id
    return inodes


def test_a_finished_streams_lock_file_is_the_next_ones(tmp_path: Path) -> None:
    async def main() -> None:
        async with FileStore(tmp_path) as store:
            await store.create_context(ContextMetadata(id="c"))
            inodes = await stream_replies(store, "c", 3)
            folder = tmp_path / "contexts" / "c"
            # One file made for three streams; between them it waits, locked, as the spare.
            assert len(set(inodes)) == 1
            [spare] = lock_files(folder)
            assert spare.startswith(".streaming-spare-")
            assert lock_is_held(folder / spare)
            # Another FileStore opening the context sweeps stale locks, not a live spare.
            async with FileStore(tmp_path) as other:
                assert len(await other.path("c")) == 6
            assert lock_files(folder) == [spare]
        assert lock_files(tmp_path / "contexts" / "c") == []  # closing removes the spare

    anyio.run(main)


def test_a_dead_writers_spare_is_swept(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import anyio, os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_streaming_locks import stream_replies
        from cm_notebook.model import ContextMetadata
        from cm_notebook.store import FileStore

        async def main():
            store = FileStore({str(tmp_path)!r})
            await store.create_context(ContextMetadata(id="c"))
            await stream_replies(store, "c", 2)
            os.kill(os.getpid(), signal.SIGKILL)

        anyio.run(main)
        """
    )
    killed = subprocess.run([sys.executable, "-c", script], check=False)
    assert killed.returncode == -9
    folder = tmp_path / "contexts" / "c"
    [spare] = lock_files(folder)
    assert not lock_is_held(folder / spare)

    async def reopen() -> int:
        async with FileStore(tmp_path) as store:
            await store.append_message("c", msg("user", None, "again"), branch=None)
            return len(await store.index("c"))

    assert anyio.run(reopen) == 5
    assert lock_files(folder) == []


def test_a_spare_never_takes_the_name_of_another_writers_lock(tmp_path: Path) -> None:
    async def main() -> None:
        async with FileStore(tmp_path) as store:
            await store.create_context(ContextMetadata(id="c"))
            await stream_replies(store, "c", 1)  # leaves a spare
            folder = tmp_path / "contexts" / "c"
            asked = msg("user", None, "mine?")
            await store.append_message("c", asked, branch=None)
            reply = msg("assistant", asked.id, "", status=MessageStatus.STREAMING)
            # Someone else (a conflicting writer) holds the lock of this very message.
            theirs = OSLock(folder / f".streaming-{reply.id}.lock")
            theirs.acquire(timeout=0)
            inode = os.stat(theirs.path).st_ino
            with pytest.raises(StoreError, match="being streamed by another"):
                await store.append_message("c", reply, branch=None)
            assert os.stat(theirs.path).st_ino == inode  # not replaced by the spare
            assert lock_is_held(theirs.path)
            theirs.close()

    anyio.run(main)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/self/fd")
def test_writes_while_another_store_streams_leak_no_descriptors(tmp_path: Path) -> None:
    # Each write checks whether the other writer's stream is still alive (its lock).
    async def main() -> None:
        async with FileStore(tmp_path) as streaming, FileStore(tmp_path) as other:
            await streaming.create_context(ContextMetadata(id="c"))
            asked = msg("user", None, "question")
            await streaming.append_message("c", asked, branch="main")
            reply = msg("assistant", asked.id, "", status=MessageStatus.STREAMING)
            await streaming.append_message("c", reply, branch="main")
            await other.update_metadata("c", title="warm")
            before = len(os.listdir("/proc/self/fd"))
            for n in range(30):
                await other.update_metadata("c", title=f"title {n}")
            # At most as many: the process's file watcher may close the watch an earlier
            # test left (its own descriptors) meanwhile; a leak would add 30.
            assert len(os.listdir("/proc/self/fd")) <= before
            assert (await other.get_message("c", reply.id)).status == MessageStatus.STREAMING

    anyio.run(main)
