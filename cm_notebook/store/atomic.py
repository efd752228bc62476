"""Crash-safe file primitives: atomic replace and directory fsync.

The guarantees the rest of the store builds on:

* :func:`atomic_write` either leaves the old file or the complete new one at ``path``,
  never a mix, for every reader and after ``kill -9`` or power loss: the data goes to a
  temporary file in the same folder (or another on the same file system), is fsync'd,
  renamed over the target with ``os.replace`` (atomic on POSIX and Windows), and then
  the target's folder is fsync'd so the rename is on disk too.
* :func:`atomic_write` raises the package's errors (see :mod:`.oserrors`), never a
  bare ``OSError``, and never leaves its temporary file behind unless the process dies.

Every fsync goes through an ``fsync`` argument (default :func:`os.fsync`), so that a
:class:`~cm_notebook.store.filestore.FileStore` can count them (its ``fsync`` parameter);
``fsync=None`` asks for the same atomic replace without making it durable.

Temporary files are named ``.<target>.<unique>.tmp`` so that they can never be mistaken
for a message file (those end in ``.json`` and never start with a dot); a target name
over 200 bytes has only its start there, so that a target the file system takes (255
bytes on most) has a temporary file it takes too. ``<unique>``
(:func:`unique_part`) is a random draw made once per process, then a count: a draw per
file would cost a ``getrandom`` call per write. They are created with ``O_EXCL``, so a
name that is taken anyway (a forked child that kept its parent's draw) fails rather
than reaching another writer's file, and is then drawn again.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from .oserrors import translate

__all__ = [
    "TEMP_SUFFIX",
    "Fsync",
    "atomic_write",
    "fsync_dir",
    "is_temp_name",
    "mkdir_durable",
    "read_from",
    "unique_part",
    "write_all",
]

#: What flushes one open file to stable storage (``os.fsync`` or a counting wrapper).
Fsync = Callable[[int], None]

TEMP_SUFFIX = ".tmp"
_BINARY = getattr(os, "O_BINARY", 0)  # Windows would otherwise translate newlines.
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _BINARY
#: The most of a target's name (in bytes) its temporary file's name holds: with the dot,
#: the unique part and the suffix it stays under the 255 bytes most file systems allow.
_TEMP_STEM_BYTES = 200


_draw: tuple[str, itertools.count[int]] = (secrets.token_hex(5), itertools.count())


def new_draw() -> None:
    """Draw anew what :func:`unique_part` starts with (a forked child does, at once)."""
    global _draw
    _draw = (secrets.token_hex(5), itertools.count())


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=new_draw)


def unique_part() -> str:
    """A part for a file name that no other call makes, in this process or another
    (a random draw per process and a count; next() on a count is atomic)."""
    prefix, count = _draw
    return f"{prefix}{next(count):x}"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of :func:`atomic_write`'s temporary files."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def _temp_stem(name: str) -> str:
    # The part of a target's name its temporary file's name holds: all of it, unless
    # that would make a name too long for the file system (cut at a character).
    if len(name) <= _TEMP_STEM_BYTES // 4:  # at most 4 bytes a character: short enough
        return name
    name = name[:_TEMP_STEM_BYTES]  # at least a byte a character
    while len(os.fsencode(name)) > _TEMP_STEM_BYTES:
        name = name[:-1]
    return name


def fsync_dir(path: Path | str, fsync: Fsync = os.fsync) -> None:
    """Make renames and creations inside the folder ``path`` durable.

    Windows cannot open a folder for fsync (and NTFS journals metadata itself), so this
    is a no-op there.
    """
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def mkdir_durable(path: Path, fsync: Fsync | None = os.fsync, *, parents: bool = False) -> None:
    """Create the folder ``path`` unless it exists, durably: then fsync its parent.

    A new folder's name is an entry of its parent, and until the parent is fsync'd a
    power loss can take it away with everything later written in it, fsync'd or not.
    With ``parents``, missing parents are made the same way. A folder that exists
    costs one ``stat``; one another process makes meanwhile is taken as it is (its
    parent is fsync'd all the same). ``FileExistsError`` if ``path`` is a file.
    """
    if path.is_dir():
        return
    if parents:
        mkdir_durable(path.parent, fsync, parents=True)
    try:
        os.mkdir(path)
    except FileExistsError:
        if not path.is_dir():
            raise
    if fsync is not None:
        fsync_dir(path.parent, fsync)


def write_all(fd: int, data: bytes) -> None:
    """Write all of ``data`` to ``fd`` (``os.write`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(
    path: Path, data: bytes, *, fsync: Fsync | None = os.fsync, temp_dir: Path | None = None
) -> None:
    """Replace ``path`` with ``data`` atomically and durably (see the module docstring).

    With ``fsync=None`` the replace is atomic for every reader and survives ``kill -9``
    (the data is in the OS's cache), but not necessarily a power loss: for files whose
    content is already durable elsewhere (see :mod:`cm_notebook.store.filestore`).
    ``temp_dir`` (default: the folder of ``path``, and on the same file system) is where
    the temporary file is made, so that a small folder can be swept for leftovers
    instead of a large one.

    Any failure (a full disk included) removes the temporary file, leaves the old
    ``path`` untouched and raises the package's error naming ``path``
    (:class:`~cm_notebook.errors.StorageFullError` for a full disk).
    """
    # A string, not a Path: joining Paths costs more than the write on a fast disk.
    start = f"{path.parent if temp_dir is None else temp_dir}{os.sep}.{_temp_stem(path.name)}."
    tmp = f"{start}{unique_part()}{TEMP_SUFFIX}"
    try:
        try:
            fd = os.open(tmp, _CREATE, 0o644)
        except FileExistsError:
            new_draw()  # another process made the same draw: see the module docstring
            tmp = f"{start}{unique_part()}{TEMP_SUFFIX}"
            fd = os.open(tmp, _CREATE, 0o644)
        try:
            try:
                write_all(fd, data)
                if fsync is not None:
                    fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except BaseException:
            # Leave no temporary file behind on an ordinary failure (a crash still can;
            # the next writer to open the context sweeps those up).
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if fsync is not None:
            fsync_dir(path.parent, fsync)
    except OSError as exc:
        raise translate(exc, path, "write") from exc


def read_from(fd: int, offset: int) -> bytes:
    """Everything in the open file ``fd`` from ``offset`` to its current end."""
    size = os.fstat(fd).st_size - offset
    if size >= 0 and hasattr(os, "pread"):
        # The common case in one read: a file that does not grow while being read.
        data = os.pread(fd, size + 1, offset)
        if len(data) <= size:
            return data
    os.lseek(fd, offset, os.SEEK_SET)
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
