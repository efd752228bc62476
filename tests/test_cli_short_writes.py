"""``cm-notebook`` output cut short by the system (a file size limit, a reader gone
away): all of it is written, or the command fails; never a cut file and exit 0."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import pytest

from cm_notebook.model import ContextMetadata, Message
from cm_notebook.store import FileStore

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="no file size limits")

#: The most bytes a file the command writes may hold in these tests.
_LIMIT = 100_000


def _big_context(data_dir: Path) -> str:
    async def make() -> None:
        store = FileStore(data_dir)
        await store.create_context(ContextMetadata(id="big", title="big"))
        await store.append_message(
            "big", Message(role="user", content="x" * 300_000), branch="main"
        )
        await store.close()

    anyio.run(make)
    return "big"


def _small_files_only() -> None:
    # In the child, before the command starts: a write past the limit fails (EFBIG)
    # instead of killing the process (SIGXFSZ), as under `ulimit -f`.
    resource.setrlimit(resource.RLIMIT_FSIZE, (_LIMIT, _LIMIT))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def _command(data_dir: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir), *argv]


@pytest.mark.parametrize("command", ["export", "show"])
def test_output_to_stdout_past_a_file_size_limit_fails_and_says_so(
    command: str, data_dir: Path, tmp_path: Path
) -> None:
    cid = _big_context(data_dir)
    target = tmp_path / "out.json"
    with open(target, "wb") as stdout:
        done = subprocess.run(
            _command(data_dir, command, cid),
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_small_files_only,
            timeout=120,
            check=False,
        )
    assert done.returncode == 1
    assert done.stderr == "cm-notebook: error: cannot write to standard output: File too large\n"
    assert target.stat().st_size == _LIMIT  # what the system let through, said to be cut


def test_an_export_to_a_reader_that_goes_away_fails_as_show_does(data_dir: Path) -> None:
    cid = _big_context(data_dir)
    codes = []
    for argv in (("export", cid), ("show", cid)):
        with subprocess.Popen(
            _command(data_dir, *argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        ) as child:
            assert child.stdout is not None
            assert child.stderr is not None
            assert len(child.stdout.read(10)) == 10
            child.stdout.close()  # `| head -c 10`
            error = child.stderr.read()
            codes.append(child.wait(timeout=120))
        assert error == b""  # a reader gone away is nothing to report
    assert codes == [1, 1]


def test_an_export_into_a_fifo_whose_reader_goes_away_fails(data_dir: Path, tmp_path: Path) -> None:
    cid = _big_context(data_dir)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)

    def read_a_little() -> None:
        with open(fifo, "rb") as reader:
            reader.read(10)

    reader = threading.Thread(target=read_a_little)
    reader.start()
    done = subprocess.run(
        _command(data_dir, "export", cid, "-o", str(fifo)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    reader.join(timeout=30)
    assert (done.returncode, done.stderr) == (1, ""), done.stderr


def test_an_export_within_the_limit_is_whole(data_dir: Path, tmp_path: Path) -> None:
    # The check of each write takes nothing away from an export that fits.
    async def make() -> None:
        store = FileStore(data_dir)
        await store.create_context(ContextMetadata(id="small", title="small"))
        await store.append_message(
            "small", Message(role="user", content="y" * 20_000), branch="main"
        )
        await store.close()

    anyio.run(make)
    target = tmp_path / "out.json"
    with open(target, "wb") as stdout:
        done = subprocess.run(
            _command(data_dir, "export", "small"),
            stdout=stdout,
            stderr=subprocess.PIPE,
            preexec_fn=_small_files_only,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert json.loads(target.read_text())["metadata"]["id"] == "small"
