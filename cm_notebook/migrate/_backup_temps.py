"""Backup copies being written, and those a killed migration left half written.

A backup is written as ``<source>.v1-backup-<time>.tmp`` and renamed when complete,
so a backup is either whole or absent. A run killed while writing it leaves the
``.tmp`` copy next to the user's data. The writer holds an OS lock (``flock``) on the
copy (the file, or the folder) from the moment it makes it until it is renamed, so a
later run can tell a copy still being written (by a migration of the same source into
another data folder) from one whose writer is gone: the lock is free. Only copies
named as this module names them, for this source, and not locked, are removed.
Where there are no such locks (Windows), a copy left behind is reported, not removed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["clear_stale_copies", "write_locked"]

_STAMP = r"\d{8}T\d{6}Z(?:-\d+)?"


@contextlib.contextmanager
def _locked(path: Path, *, wait: bool) -> Iterator[bool]:
    """Hold an exclusive lock on the file or folder ``path``; yields whether it was
    taken (never, where there are no ``flock`` locks; without ``wait``, not if held)."""
    if fcntl is None:  # pragma: no cover - Windows
        yield False
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # which releases the lock


def write_locked(temp: Path, target: Path, content: bytes | dict[str, bytes]) -> None:
    """Write ``content`` (a file's bytes, or a folder's files) as ``temp``, locked while
    it is written, then rename it to ``target``. Raises OSError (``temp`` may remain:
    the caller removes it)."""
    if isinstance(content, bytes):
        os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    else:
        temp.mkdir()
    with _locked(temp, wait=True):
        if isinstance(content, bytes):
            temp.write_bytes(content)
        else:
            for name, data in content.items():
                (temp / name).write_bytes(data)
        os.replace(temp, target)  # a backup is either complete or absent


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def clear_stale_copies(folder: Path, source_name: str) -> list[str]:
    """Remove the half-written backup copies of ``source_name`` in ``folder`` that no
    process is writing; notes saying what was removed, or what was left and why."""
    pattern = re.compile(rf"{re.escape(source_name)}\.v1-backup-{_STAMP}\.tmp")
    try:
        names = sorted(n for n in os.listdir(folder) if pattern.fullmatch(n))
    except OSError:
        return []  # no folder (yet), or unlistable: the backup itself will say
    notes = []
    for name in names:
        path = folder / name
        try:
            with _locked(path, wait=False) as free:
                if free:
                    _remove(path)
                    notes.append(
                        f"removed {path}: a backup copy that an earlier migration was "
                        "stopped in the middle of writing"
                    )
                    continue
        except OSError as exc:
            notes.append(
                f"{path} is a backup copy that an earlier migration was stopped in the "
                f"middle of writing; it could not be removed ({exc.strerror or exc}): "
                "remove it"
            )
            continue
        if fcntl is None:  # pragma: no cover - Windows
            notes.append(
                f"{path} is a backup copy that a migration did not finish writing: "
                "remove it when no migration of this source is running"
            )
        else:
            notes.append(f"{path} is a backup copy that another migration is writing now")
    return notes
