"""Temporary file names: unique without a random draw per file (see store/atomic.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cm_notebook.store import atomic
from cm_notebook.store.atomic import atomic_write, is_temp_name, unique_part


def test_unique_parts_differ_and_make_temp_names() -> None:
    parts = {unique_part() for _ in range(1000)}
    assert len(parts) == 1000
    assert all(is_temp_name(f".metadata.json.{part}.tmp") for part in parts)


def test_a_taken_name_is_drawn_again(tmp_path: Path) -> None:
    # Another process that made the same draw (say, a child forked past the hook)
    # has a temporary file under the next name: the write draws again, and neither
    # file is harmed. The next name is this process's draw and the count after one.
    atomic.new_draw()
    prefix = unique_part()[:-1]  # the draw, then the count (0)
    theirs = tmp_path / f".target.{prefix}1.tmp"
    theirs.write_bytes(b"theirs")
    atomic_write(tmp_path / "target", b"ours", fsync=None)
    assert (tmp_path / "target").read_bytes() == b"ours"
    assert theirs.read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == [theirs.name, "target"]
    assert not unique_part().startswith(prefix)


def test_a_target_as_long_as_a_file_name_may_be_is_written(tmp_path: Path) -> None:
    # Its temporary file's name holds only the start of the target's: '.<target>.
    # <unique>.tmp' would pass the 255 bytes most file systems allow.
    for name in ("x" * 255, "é" * 127, "日" * 85):
        atomic_write(tmp_path / name, b"data", fsync=None)
        assert (tmp_path / name).read_bytes() == b"data"
    assert len(os.listdir(tmp_path)) == 3


_FORKING = """
import os
from cm_notebook.store.atomic import unique_part
unique_part()
pid = os.fork()
if pid == 0:
    print(unique_part(), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print(unique_part(), flush=True)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_draws_its_own() -> None:
    # In a process of its own: forking pytest's, which has threads, is unsafe.
    done = subprocess.run(
        [sys.executable, "-c", _FORKING], capture_output=True, text=True, check=True, timeout=60
    )
    child, parent = done.stdout.split()
    assert child[:10] != parent[:10]
