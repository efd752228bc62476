"""A FIFO, a folder or a socket where `migrate` and `import` (and the migration's
functions) read a file: refused at once, saying what it is and what to give instead,
never a wait for a writer that is not there; a pipe that a process writes into is
still read."""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from cli_process import cli

from cm_notebook.cli import main
from cm_notebook.errors import MigrationError
from cm_notebook.migrate import migrate, migrate_source, read_v1, read_v1_file
from cm_notebook.store import FileStore

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
#: Seconds a command may take; a read that waits for a writer fails the test here.
DEADLINE = 60
NO_WRITER = "is a FIFO (named pipe) that no process is writing into, not a file: give the path of"


def contexts(data_dir: Path) -> list[str]:
    folder = data_dir / "contexts"
    return sorted(os.listdir(folder)) if folder.is_dir() else []


@contextlib.contextmanager
def unblocked_after(fifo: Path, seconds: float = 10) -> Iterator[None]:
    """Should a read of ``fifo`` in this process wait for a writer (what these tests
    guard against), be that writer after ``seconds``, writing nothing: the read then
    ends empty, and the test fails on what it got instead of hanging."""
    done = threading.Event()

    def write() -> None:
        if done.wait(seconds):
            return
        while not done.is_set():
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:  # no reader yet
                time.sleep(0.05)
                continue
            os.close(fd)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    try:
        yield
    finally:
        done.set()
        writer.join()


@pytest.mark.parametrize("command", ["migrate", "import"])
def test_the_cli_refuses_a_fifo_at_once(command: str, data_dir: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "contexts.json"
    os.mkfifo(fifo)
    done = cli(data_dir, command, str(fifo), timeout=DEADLINE)
    assert done.returncode == 1, done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()  # one line, no traceback
    assert line.startswith(f"cm-notebook: error: {fifo} {NO_WRITER} ")
    assert line.endswith("(or start what writes into it first; reading it now would wait for ever)")
    # Nothing lost, nothing made: the FIFO is still one, no backup beside it, no context.
    assert fifo.is_fifo()
    assert sorted(os.listdir(tmp_path)) == ["contexts.json", "data"]
    assert contexts(data_dir) == []


@pytest.mark.parametrize(("command", "path"), [("import", "-"), ("migrate", "/dev/stdin")])
def test_an_empty_pipe_says_it_is_empty(command: str, path: str, data_dir: Path) -> None:
    # `: | cm-notebook import -`: the writer ran and wrote nothing (no FIFO waits here).
    done = subprocess.run(
        [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir), command, path],
        input="",
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(
        "cm-notebook: error: /dev/stdin is empty: what wrote into it ended without writing "
        "anything, so there is nothing to read. Check that command's output, or give the path "
    )
    assert "no process is writing" not in line
    assert contexts(data_dir) == []


def test_the_migration_functions_refuse_a_fifo(data_dir: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "contexts.json"
    os.mkfifo(fifo)
    refused = f"^{re.escape(f'{fifo} {NO_WRITER} a v1 file ')}"
    with unblocked_after(fifo):
        for read in (read_v1, read_v1_file):
            with pytest.raises(MigrationError, match=refused):
                read(fifo)

        async def run() -> None:
            async with FileStore(data_dir) as store:
                with pytest.raises(MigrationError, match=refused):
                    await migrate(fifo, store)
                # Data read elsewhere, with the FIFO as the path to back up: its backup
                # must not read the FIFO again.
                source = read_v1(FIXTURES / "branches.json")
                with pytest.raises(MigrationError) as raised:
                    await migrate_source(source, store, path=fifo)
                assert str(raised.value).startswith(
                    f"{fifo} is a FIFO (named pipe), not a file: give the path of the v1 "
                    "file or folder that was read, or pass what was read from it as content="
                )
                assert await store.list_contexts() == []

        anyio.run(run)
    assert fifo.is_fifo()
    assert sorted(os.listdir(tmp_path)) == ["contexts.json", "data"]


def test_a_pipe_that_a_process_writes_into_is_read(data_dir: Path, tmp_path: Path) -> None:
    # What /dev/stdin and <(...) are: `import` and `migrate` read them as before, the
    # writer there all along and writing in its own time.
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    data = (FIXTURES / "branches.json").read_bytes()
    half = len(data) // 2
    keeper = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # so the writer may open at once
    writer = os.open(fifo, os.O_WRONLY)
    child = subprocess.Popen(
        [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir), "import", str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        try:
            for part in (data[:half], data[half:]):
                os.write(writer, part)
                waiting(keeper)  # read by the command (this end never reads)
        finally:
            os.close(writer)  # the end of the data
        out, err = child.communicate(timeout=DEADLINE)
    finally:
        os.close(keeper)
        if child.poll() is None:  # a failed test leaves no command waiting
            child.kill()
            child.communicate()
    assert child.returncode == 0, err
    assert "migrated" in out
    assert contexts(data_dir) == ["ctx-branches", "ctx-inconsistent", "ctx-partial-branches"]
    [backup] = os.listdir(data_dir / "backups")  # not beside the FIFO
    assert (data_dir / "backups" / backup).read_bytes() == data


def waiting(fd: int) -> None:
    """Wait until the pipe ``fd`` reads from holds nothing (its other reader took it)."""
    deadline = time.monotonic() + DEADLINE
    held = array.array("i", [0])
    while True:
        fcntl.ioctl(fd, termios.FIONREAD, held)
        if held[0] == 0:
            return
        assert time.monotonic() < deadline, "the command never read the pipe"
        time.sleep(0.01)


def test_a_fifo_in_a_folder_is_reported_and_the_other_files_migrated(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    source = Path(shutil.copytree(FIXTURES / "context_files", tmp_path / "src"))
    fifo = source / "0-stray.json"
    os.mkfifo(fifo)
    with unblocked_after(fifo):
        code = main(["--data-dir", str(data_dir), "migrate", str(source), "--no-backup"])
    out, _ = capsys.readouterr()
    assert code == 1
    assert f"{fifo} is a FIFO (named pipe), not a file: move it out of {source}" in out
    assert len(contexts(data_dir)) == 3  # the good per-context files (one is damaged)
    assert fifo.is_fifo()


def test_a_folder_where_a_file_is_read_says_so(tmp_path: Path) -> None:
    folder = Path(shutil.copytree(FIXTURES / "context_files", tmp_path / "src"))
    said = f"{folder} is a folder, not a file: give the path of a v1 file"
    with pytest.raises(MigrationError, match=f"^{re.escape(said)}"):
        read_v1_file(folder)
    assert len(read_v1(folder).contexts) == 4  # where a folder is taken, it is read


@pytest.mark.parametrize("command", ["migrate", "import"])
def test_a_socket_is_refused_saying_what_it_is(
    command: str, capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    path = tmp_path / "s.json"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        code = main(["--data-dir", str(data_dir), command, str(path)])
    _, err = capsys.readouterr()
    assert code == 1
    assert err.startswith(f"cm-notebook: error: {path} is a socket, not a file: give the path of")
    assert contexts(data_dir) == []
