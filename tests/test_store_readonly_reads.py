"""A reply whose writer died mid-stream, in a folder that cannot be written: reads go on.

A reader that finds a stream whose writer died marks it ``interrupted``, which is a
write. When the folder cannot be written (a read-only file system, a full disk, a
folder without write permission) the read is served anyway, writing nothing: the reply
as marking would leave it (interrupted, its text kept), with a StoreWarning naming its
file. Listing the data directory and the CLI work too, writes fail with the package's
errors, and the first read once the folder can be written again marks the reply.

Everything is real: the writer is a child process (``store_child.py stream``) killed
with SIGKILL while streaming, the read-only file system and the full disk are a small
tmpfs (needs root; skipped otherwise), and the permissions are the folder's own (run
as a user they apply to; skipped where they do not, as for root).
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from full_disk import Filler, mounted_tmpfs
from store_helpers import chain

from cm_notebook.cli import main
from cm_notebook.errors import StoreIOError
from cm_notebook.model import ContextMetadata, Message, MessageStatus
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.store.dead_streams import WRITER_DIED

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL and flock")

CHILD = Path(__file__).with_name("store_child.py")
CID = "c1"


# -- a context whose streaming reply lost its writer ------------------------------------


def stream_and_kill(data_dir: Path) -> str:
    """Contexts ``c1`` (a few turns, then a reply whose writer was SIGKILLed while
    streaming it) and ``other``; returns the reply's id. Nothing has read c1 since."""

    async def create() -> None:
        async with FileStore(data_dir) as store:
            await store.create_context(ContextMetadata(id=CID, title="precious"))
            await chain(store, CID, 4)
            await store.create_context(ContextMetadata(id="other", title="other"))
            await chain(store, "other", 2)

    anyio.run(create)
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), "stream", str(data_dir), CID, "main"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert first.startswith("stream "), proc.communicate()
    for _ in range(2):  # two acknowledged checkpoints: "tok tok "
        assert proc.stdout.readline().startswith("ckpt ")
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL

    return first.split()[1]


def reply_file(data_dir: Path, reply_id: str) -> Path:
    return data_dir / "contexts" / CID / "messages" / f"{reply_id}.json"


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def read_everything(data_dir: Path, reply_id: str, store: FileStore) -> list[Message]:
    """Every kind of read of c1 and the listing; the warnings about the reply checked."""

    async def reads() -> list[Message]:
        page = await store.page(CID)
        assert [m.id for m in page] == await store.path(CID)
        # As marking leaves it, although nothing could be written.
        assert (await store.index(CID))[reply_id].status is MessageStatus.INTERRUPTED
        alone = await store.get_message(CID, reply_id)
        assert alone.model_dump() == page[-1].model_dump()
        assert (await store.get_metadata(CID)).title == "precious"
        listed = {metadata.id for metadata in await store.list_contexts()}
        assert listed == {CID, "other"}
        return page

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        page = anyio.run(reads)
    about = [w.message for w in caught if isinstance(w.message, StoreWarning)]
    assert about, "the reader says the reply could not be marked"
    for warning in about:
        assert isinstance(warning, StoreWarning)
        assert warning.path == reply_file(data_dir, reply_id)
        assert "left 'streaming' by a process that died" in str(warning)
    return page


def check_as_marked(page: list[Message], reply_id: str) -> None:
    assert page[-1].id == reply_id
    assert page[-1].status is MessageStatus.INTERRUPTED  # as marking would leave it
    assert page[-1].metadata.error == WRITER_DIED
    assert page[-1].content.startswith("tok tok ")  # the partial text is kept
    assert len(page) == 6  # 4 turns, the question, the reply


def check_marked_without_warning(data_dir: Path, reply_id: str, store: FileStore) -> None:
    """The folder can be written again: the same (long-lived) reader marks the reply."""

    async def reads() -> None:
        reply = (await store.page(CID))[-1]
        assert reply.id == reply_id
        assert reply.status is MessageStatus.INTERRUPTED
        assert reply.content.startswith("tok tok ")
        assert (await store.index(CID))[reply_id].status is MessageStatus.INTERRUPTED

    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        anyio.run(reads)
    assert not (data_dir / "contexts" / CID / f".streaming-{reply_id}.lock").exists()


def close(store: FileStore) -> None:
    anyio.run(store.close)


# -- a small tmpfs: read-only, or full ---------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 2 MiB tmpfs (needs root: skipped where it cannot be mounted)."""
    with mounted_tmpfs(tmp_path / "disk") as mount:
        yield mount


def remount(mount: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(mount)], check=True)


def test_a_dead_stream_reads_on_a_read_only_file_system(tmpfs: Path) -> None:
    data_dir = tmpfs / "data"
    reply_id = stream_and_kill(data_dir)
    remount(tmpfs, "ro")
    store = FileStore(data_dir)
    try:
        page = read_everything(data_dir, reply_id, store)
        check_as_marked(page, reply_id)

        # A write cannot be made: the package's error, naming the file system's state.
        async def write() -> None:
            await store.update_metadata(CID, title="renamed")

        with pytest.raises(StoreIOError, match="read-only") as raised:
            anyio.run(write)
        assert raised.value.errno == errno.EROFS

        remount(tmpfs, "rw")
        check_marked_without_warning(data_dir, reply_id, store)
    finally:
        close(store)


def test_cli_lists_and_shows_a_read_only_data_directory(
    tmpfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmpfs / "data"
    stream_and_kill(data_dir)
    remount(tmpfs, "ro")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)  # (the CLI prints them itself)
        code = main(["--data-dir", str(data_dir), "ls"])
        out, err = capsys.readouterr()
        assert code == 0, err
        assert CID in out
        assert "other" in out
        code = main(["--data-dir", str(data_dir), "show", CID])
        out, err = capsys.readouterr()
    assert code == 0, err
    assert "tok tok" in out
    assert "Traceback" not in err


def test_a_dead_stream_reads_on_a_full_disk(tmpfs: Path) -> None:
    data_dir = tmpfs / "data"
    reply_id = stream_and_kill(data_dir)
    folder = data_dir / "contexts" / CID
    before = files_of(folder)
    filler = Filler(tmpfs)
    filler.fill()
    store = FileStore(data_dir)
    try:
        page = read_everything(data_dir, reply_id, store)
        check_as_marked(page, reply_id)
        # Nothing written, nothing half-written left (no temporary file either).
        assert files_of(folder) == before

        filler.empty()
        check_marked_without_warning(data_dir, reply_id, store)
    finally:
        close(store)


# -- a folder without write permission ---------------------------------------------------


def test_a_dead_stream_reads_in_a_folder_without_write_permission(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    reply_id = stream_and_kill(data_dir)
    folder = data_dir / "contexts" / CID
    before = files_of(folder)
    folders = [folder, folder / "messages"]
    for path in folders:
        path.chmod(0o555)
    try:
        probe = folder / "probe"
        try:
            probe.touch()
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("this user writes where permissions forbid it (root)")
        store = FileStore(data_dir)
        try:
            page = read_everything(data_dir, reply_id, store)
            check_as_marked(page, reply_id)
            assert files_of(folder) == before

            for path in folders:
                path.chmod(0o755)
            check_marked_without_warning(data_dir, reply_id, store)
        finally:
            close(store)
    finally:
        for path in folders:
            path.chmod(0o755)
