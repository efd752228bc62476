"""A journal cut short mid-line, read by a process that cannot write to the folder.

A reader with write access rebuilds the index and warns (test_store_journal_cut.py).
One that can only read cannot take the lock, so it cannot repair: it reads the
shorter conversation, but warns (a StoreWarning naming the journal) that lines were
lost and how to repair it, and writes nothing. A write killed mid-line (no lines
lost after it) stays silent, as for a writable folder.

The folder is made read-only for real: a read-only bind mount as root (skipped where
mounting is not allowed), its permissions otherwise (which root would bypass).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from test_store_journal_cut import branches, cut_in_line, journal, prepare

from cm_notebook.session import ContextSession
from cm_notebook.store import StoreWarning
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions")


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """``(data_dir, view)``: a data directory to prepare, and a read-only view of it."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    view = tmp_path / "read-only"
    if os.geteuid() != 0:
        yield data_dir, view  # the test copies data_dir here, then takes write bits away
        os.chmod(view, 0o755)  # so that the temporary folder can be removed
        for root, dirs, _files in os.walk(view):
            for name in dirs:
                os.chmod(os.path.join(root, name), 0o755)
        return
    view.mkdir()
    mounted = subprocess.run(
        ["mount", "--bind", "-o", "ro", str(data_dir), str(view)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()}")
    try:
        # Older util-linux ignores "ro" on the first bind: make it read-only again.
        subprocess.run(["mount", "-o", "remount,ro,bind", str(view)], capture_output=True)
        yield data_dir, view
    finally:
        # Lazily if a file in it is still open (a session's file closed a moment later):
        # never left mounted under pytest's temporary folders, which it then cannot clean.
        if subprocess.run(["umount", str(view)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(view)], capture_output=True)


def _make_read_only(data_dir: Path, view: Path) -> None:
    if os.geteuid() == 0:
        return  # the bind mount shows it read-only already
    shutil.copytree(data_dir, view)
    for root, dirs, files in os.walk(view):
        for name in files:
            os.chmod(os.path.join(root, name), 0o444)
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o555)
    os.chmod(view, 0o555)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_read_only_reader_of_a_cut_journal_warns_and_writes_nothing(
    read_only: tuple[Path, Path],
) -> None:
    data_dir, view = read_only
    ids = anyio.run(prepare, data_dir)
    journal(data_dir).write_bytes(cut_in_line(journal(data_dir).read_bytes(), 4))
    _make_read_only(data_dir, view)
    before = _files(view)

    with pytest.warns(StoreWarning) as caught:
        seen = anyio.run(branches, view)
    shown = seen["main"]  # what the cut journal lists: all it can show
    assert len(shown) < len(ids)
    assert shown == ids[: len(shown)]
    said = [w.message for w in caught if "ends in the middle of a line" in str(w.message)]
    assert len(said) == 1, [str(w.message) for w in caught]
    (warning,) = said
    text = str(warning)
    assert "lines after it were lost" in text
    assert "cannot write" in text  # why it was not repaired
    assert "Open it with write access" in text  # and what to do
    assert "cm-notebook check --repair" in text
    assert isinstance(warning, StoreWarning)
    assert warning.path is not None
    assert warning.path.name == "message_index.journal"
    assert _files(view) == before  # nothing written

    # A session on the read-only folder warns too.
    with pytest.warns(StoreWarning, match="ends in the middle of a line"):
        session = ContextSession.open("c1", provider=ScriptedProvider(), data_dir=view)
    try:
        assert [m.id for m in session.history()] == shown
    finally:
        session.close()
    assert _files(view) == before


def test_a_read_only_reader_of_a_write_killed_mid_line_stays_silent(
    read_only: tuple[Path, Path],
) -> None:
    data_dir, view = read_only
    ids = anyio.run(prepare, data_dir)
    with journal(data_dir).open("ab") as handle:
        handle.write(b'{"id": "m-never-acked", "par')  # nothing listed is lost
    _make_read_only(data_dir, view)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        assert anyio.run(branches, view)["main"] == ids
