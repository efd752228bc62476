"""Operating-system errors of the store, translated into the package's own errors.

Every file the store touches is read or written through a few primitives
(:mod:`~cm_notebook.store.atomic`, :func:`open_regular`); they turn an ``OSError`` into
one of these, naming the path and saying what to do:

* :class:`~cm_notebook.errors.StorageFullError` for ``ENOSPC``/``EDQUOT`` (free space);
* :class:`~cm_notebook.errors.CorruptDataError` when something that is not a regular
  file (a folder, a FIFO, a socket, a symbolic link) sits where the store keeps a file:
  that is damage, reported like a file that does not parse;
* :class:`~cm_notebook.errors.StoreIOError` for everything else (permissions, a
  read-only file system, I/O errors).

``FileStore`` also translates any ``OSError`` that escapes an operation at its
boundary, so callers never see a bare ``IsADirectoryError`` or ``PermissionError``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import CorruptDataError, StorageFullError, StoreError, StoreIOError

__all__ = [
    "DISK_FULL",
    "KEEP_OR_MOVE",
    "OUT_OF_RESOURCES",
    "describe_kind",
    "linked",
    "looped",
    "not_a_file",
    "open_regular",
    "translate",
]

_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
# O_NONBLOCK: opening a FIFO planted where a file should be must not wait for a writer.
# It changes nothing for regular files.
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | _NO_FOLLOW | getattr(os, "O_NONBLOCK", 0)
#: The errors of a full disk or quota: StorageFullError, whose remedy is free space.
DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})
_DENIED = {errno.EACCES, errno.EPERM}
_NOT_A_FILE = {errno.EISDIR, errno.ENOTDIR, errno.ENXIO, getattr(errno, "EOPNOTSUPP", -1)}
#: Errors of the process or the system, not of the file (too many open files, no
#: memory): whoever reads many files must not take them for damage to one.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM})

#: Where the store's data directory is chosen, for a Python caller.
_DATA_DIR_SETTINGS = "(CM_NOTEBOOK_DATA_DIR or data_dir=)"
#: What a data directory that cannot be written still allows.
_READ_ONLY = "its contexts can be read, not changed"
#: The remedy for a data directory that cannot be written. It may be a colleague's
#: folder, opened to read: choosing another data directory alone would lose sight of
#: its contexts, so working on a copy of them comes first. (Not `cm-notebook import` in
#: backquotes: the command line would add the read-only folder as its --data-dir.)
KEEP_OR_MOVE = (
    "To keep working on these contexts, copy the data directory to a place you can "
    "write to and use the copy (or `cm-notebook export` a context, then import the file "
    "into a data directory of your own with cm-notebook import); to work elsewhere, "
    f"choose a writable data directory {_DATA_DIR_SETTINGS}."
)

_REPLACE = "Replace it with the file or folder it points to."


def linked(path: Path, remedy: str = _REPLACE) -> CorruptDataError:
    """The error for a symbolic link found where the store keeps its own files.

    ``remedy`` says what to do; the default suits the store's own data (and a link that
    goes round a loop of links, pointing at nothing to replace it with, is said to be
    one). Files whose content decides something (a decision record, an allow-list) say
    instead to remove the link: what it points to may be someone else's file.
    """
    if remedy == _REPLACE and _loops(path):
        return _loop(path, path)
    return CorruptDataError(
        f"{path} is a symbolic link; the store does not follow links out of a context "
        f"folder. {remedy}",
        path,
    )


def looped(path: Path) -> CorruptDataError:
    """The error for ``ELOOP`` at ``path``: :func:`linked` if ``path`` itself is a symbolic
    link (an open that does not follow links refuses it so), else one naming the link on
    the way to it that goes round a loop of links (each component is looked at without
    following it), or saying that the path goes through such a loop if none is found."""
    at = Path()
    for part in path.parts:
        at = at / part
        try:
            mode = os.lstat(at).st_mode
        except OSError:
            break  # gone or unreachable: no link of its own to name
        if not stat.S_ISLNK(mode):
            continue
        try:
            os.stat(at)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                return _loop(at, path)
            break
        if at == path:
            return linked(path)
    return CorruptDataError(
        f"{path} cannot be reached: its path goes through a loop of symbolic links (too "
        "many levels of symbolic links). Point the links on its path at the folders they "
        "are meant to reach.",
        path,
    )


def _loops(link: Path) -> bool:
    # Whether following ``link`` goes round a loop of symbolic links.
    try:
        os.stat(link)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _loop(link: Path, path: Path) -> CorruptDataError:
    # ``link`` leads back to itself through links: nothing below it can be reached.
    try:
        target = f" (it points to {os.readlink(link)})"
    except OSError:
        target = ""
    beyond = "" if link == path else f", so {path} cannot be reached"
    return CorruptDataError(
        f"{link} is a symbolic link that leads round a loop of symbolic links"
        f"{target}{beyond}. Point it at the file or folder it is meant to reach, or "
        "replace it with that file or folder.",
        link,
    )


def describe_kind(mode: int) -> str:
    """``a folder``, ``a FIFO``, ... for a ``st_mode`` that is not a regular file."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def not_a_file(path: Path, mode: int) -> CorruptDataError:
    """The error for a folder, FIFO, socket or device where the store keeps a file."""
    return CorruptDataError(
        f"{path} is {describe_kind(mode)}, where the store keeps a file. Move it out of the "
        "way (and restore the file from a backup if you have one); the rest of the data "
        "directory is unaffected.",
        path,
    )


def translate(
    exc: OSError, path: Path | str | None, doing: str, *, instead: str | None = None
) -> StoreError:
    """The package's error for ``exc``, raised while ``doing`` (a verb) ``path``.

    A write refused by a read-only file system or by permissions is advised for a data
    directory: copy it somewhere writable to keep working on its contexts, or choose
    another (:data:`KEEP_OR_MOVE`). ``instead`` is for a file the caller named, which
    is no data directory: the remedy then is that text (``"choose another path for
    the CSV file"``). Already-translated errors are returned unchanged.
    """
    if isinstance(exc, StoreError):
        return exc
    where = Path(path) if path is not None else Path(str(exc.filename or "?"))
    reason = exc.strerror or str(exc)
    code = exc.errno
    if code in DISK_FULL:
        return StorageFullError(
            f"no space left on the device holding {where} (could not {doing} it: {reason}). "
            "Nothing half-written was kept; free some space (or raise the disk quota) and "
            "try again.",
            where,
            code,
        )
    if code == errno.ELOOP:
        return looped(where)
    if code in _NOT_A_FILE:
        try:
            mode = os.lstat(where).st_mode
        except OSError:
            mode = 0
        if mode and not stat.S_ISREG(mode):
            return not_a_file(where, mode)
    if code in _DENIED:
        if instead is not None:
            remedy = f"Give the user running cm_notebook access to it, or {instead}."
        elif doing == "read":
            remedy = (
                "Give the user running cm_notebook read and write access to it, or choose "
                f"another data directory {_DATA_DIR_SETTINGS}."
            )
        else:
            remedy = f"Give the user running cm_notebook write access to it. {KEEP_OR_MOVE}"
        return StoreIOError(
            f"permission denied to {doing} {where} ({reason}). {remedy}", where, code
        )
    if code in OUT_OF_RESOURCES:
        return StoreIOError(
            f"could not {doing} {where}: {reason}. The file is not at fault: this process "
            "(or the system) has run out of open files or memory. Close what holds them "
            "(or raise the limit, `ulimit -n`) and try again.",
            where,
            code,
        )
    if code == errno.EROFS:
        remedy = f"{instead}." if instead is not None else f"{_READ_ONLY}. {KEEP_OR_MOVE}"
        return StoreIOError(
            f"could not {doing} {where}: the file system is read-only; {remedy}", where, code
        )
    return StoreIOError(
        f"could not {doing} {where}: {reason}. Check that its folder exists and can be "
        "reached, and that the disk works.",
        where,
        code,
    )


def open_regular(path: Path | str, *, check_folder: bool = True) -> int:
    """Open ``path`` for reading, refusing anything but a regular file; return the fd.

    A symbolic link (at ``path`` or, with ``check_folder``, its folder) raises the
    :func:`linked` error and a folder, FIFO, socket or device :func:`not_a_file`: a link
    planted in a context folder must not make the store read outside it, and a folder
    is damage, not an I/O error. A missing file raises ``FileNotFoundError`` (the
    callers know what a missing file means for them); other failures are translated.
    """
    if check_folder and os.path.islink(os.path.dirname(path)):
        raise looped(Path(path).parent)  # the link named, or the loop it goes round
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise looped(Path(path)) from exc
        if os.path.islink(path):
            raise linked(Path(path)) from exc
        raise translate(exc, path, "read") from exc
    try:
        mode = os.fstat(fd).st_mode
    except OSError as exc:
        os.close(fd)
        raise translate(exc, path, "read") from exc
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise not_a_file(Path(path), mode)
    return fd
