"""Crash-safe file primitives: atomic replace, directory fsync, durable line appends.

The guarantees the rest of the store builds on:

* :func:`atomic_write` either leaves the old file or the complete new one at ``path``,
  never a mix, for every reader and after ``kill -9`` or power loss: the data goes to a
  temporary file in the same folder, is fsync'd, renamed over the target with
  ``os.replace`` (atomic on POSIX and Windows), and then the folder itself is fsync'd so
  the rename is on disk too.
* :func:`append_line` adds one ``\\n``-terminated line with ``O_APPEND`` and fsyncs it
  before returning. A crash can leave at most one incomplete last line, which readers
  recognise by its missing newline.

Temporary files are named ``.<target>.<random>.tmp`` so that they can never be mistaken
for a message file (those end in ``.json`` and never start with a dot).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = [
    "TEMP_SUFFIX",
    "append_line",
    "atomic_write",
    "fsync_dir",
    "is_temp_name",
    "read_bytes",
    "read_from",
]

TEMP_SUFFIX = ".tmp"
_BINARY = getattr(os, "O_BINARY", 0)  # Windows would otherwise translate newlines.


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of :func:`atomic_write`'s temporary files."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def fsync_dir(path: Path) -> None:
    """Make renames and creations inside the folder ``path`` durable.

    Windows cannot open a folder for fsync (and NTFS journals metadata itself), so this
    is a no-op there.
    """
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see the module docstring)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BINARY, 0o644)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        # Leave no temporary file behind on an ordinary failure (a crash still can;
        # index rebuilds sweep those up).
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def append_line(path: Path, line: bytes) -> None:
    """Append one line (which must end in ``\\n``) to an existing file, durably.

    The file is not created: a missing journal means damage that the caller must see.
    """
    if not line.endswith(b"\n") or b"\n" in line[:-1]:
        raise ValueError("append_line takes exactly one newline-terminated line")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | _BINARY)
    try:
        _write_all(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_bytes(path: Path) -> bytes:
    """The whole content of ``path``."""
    with open(path, "rb") as handle:
        return handle.read()


def read_from(fd: int, offset: int) -> bytes:
    """Everything in the open file ``fd`` from ``offset`` to its current end."""
    os.lseek(fd, offset, os.SEEK_SET)
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
