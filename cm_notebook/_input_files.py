"""Reading a file the user named (v1 data to migrate, an export to import) without
ever waiting for a writer that is not there.

``open()`` of a FIFO waits until some process opens it for writing, and ``read()``
of one waits for data: given the path of a FIFO that nothing writes into, a command
would hang for ever without a word. So the path is opened with ``O_NONBLOCK``, which
never waits, and judged by ``fstat`` of the descriptor opened, not by a look at the
path first (the path could name something else by the time it is opened):

* a regular file is read (links are followed: the user named it);
* where a pipe may be read (``pipes=True``: ``/dev/stdin``, the ``/dev/fd/63`` that
  ``<(...)`` gives, a FIFO that a process writes into), a pipe or FIFO is read if a
  process writes into it now or left data in it, and refused at once otherwise (a
  pipe without a name whose writer ended without writing is said to be empty); a
  terminal is read too (typed or pasted input, ended by Ctrl-D);
* anything else (a folder, a socket, a device, and a pipe where none may be read)
  is refused, with a message naming the path, what it is and what to do.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

from .errors import InvalidInputError
from .store.oserrors import describe_kind

__all__ = ["read_input_file"]

# O_NONBLOCK: opening a FIFO must not wait for a writer (it changes nothing for a
# regular file). O_NOCTTY: a terminal named as the file must not become this
# process's controlling terminal.
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_FLAGS = (
    os.O_RDONLY
    | _NONBLOCK
    | getattr(os, "O_NOCTTY", 0)
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
)
_CHUNK = 1 << 20


def read_input_file(
    path: Path,
    *,
    remedy: str,
    error: Callable[[str], Exception] = InvalidInputError,
    pipes: bool = False,
) -> tuple[bytes, os.stat_result]:
    """The bytes of the file ``path`` names and the ``fstat`` of what was read.

    Never waits for a writer that is not there (see the module docstring). What is
    not a file to read raises ``error(message)``, the message naming ``path`` and
    what it is, then ``remedy`` (what to give instead, e.g. "give the path of a v1
    file"). ``pipes``: read a pipe, FIFO or terminal that has a writer. Other
    failures (no such file, no permission) raise their ``OSError``.
    """
    try:
        fd = os.open(path, _FLAGS)
    except FileNotFoundError:
        raise
    except OSError as exc:
        # A socket (ENXIO), or a folder on systems that refuse to open one: say what
        # it is rather than the system's words for the failure.
        mode = _mode(path)
        if mode is not None and not stat.S_ISREG(mode):
            raise error(_not_a_file(path, mode, remedy)) from exc
        raise
    try:
        info = os.fstat(fd)
        return _read(fd, info.st_mode, path, remedy, error, pipes), info
    finally:
        os.close(fd)


def _read(
    fd: int,
    mode: int,
    path: Path,
    remedy: str,
    error: Callable[[str], Exception],
    pipes: bool,
) -> bytes:
    fifo = stat.S_ISFIFO(mode)
    if not stat.S_ISREG(mode) and not (pipes and (fifo or _is_terminal(fd, mode))):
        raise error(_not_a_file(path, mode, remedy))
    first = b""
    if fifo and _NONBLOCK:
        try:
            first = os.read(fd, _CHUNK)
        except BlockingIOError:
            pass  # a process writes into it, nothing yet: wait for it, as for stdin
        else:
            if not first and _unnamed_pipe(mode, fd):
                # A pipe made for `|` or `<(...)`: none can open it later, so its writer
                # came and went, writing nothing.
                raise error(
                    f"{path} is empty: what wrote into it ended without writing anything, "
                    f"so there is nothing to read. Check that command's output, or {remedy}"
                )
            if not first:
                # End of file at once: nothing was left in it and no process has it
                # open for writing. A blocking read would wait for one for ever.
                raise error(
                    f"{path} is {describe_kind(mode)} that no process is writing into, not "
                    f"a file: {remedy} (or start what writes into it first; reading it "
                    "now would wait for ever)"
                )
    if _NONBLOCK:
        os.set_blocking(fd, True)  # from here on, wait for the writer that is there
    chunks = [first]
    while chunk := os.read(fd, _CHUNK):
        chunks.append(chunk)
    return b"".join(chunks)


def _unnamed_pipe(mode: int, fd: int) -> bool:
    """Whether ``fd`` is a pipe without a name (the ``|`` of a shell, ``<(...)``), not a
    FIFO in a folder: the system keeps every pipe without a name on one device."""
    if not stat.S_ISFIFO(mode):
        return False
    reader, writer = os.pipe()
    try:
        return os.fstat(reader).st_dev == os.fstat(fd).st_dev
    finally:
        os.close(reader)
        os.close(writer)


def _is_terminal(fd: int, mode: int) -> bool:
    return stat.S_ISCHR(mode) and os.isatty(fd)


def _mode(path: Path) -> int | None:
    try:
        return os.stat(path).st_mode
    except OSError:
        return None


def _not_a_file(path: Path, mode: int, remedy: str) -> str:
    return f"{path} is {describe_kind(mode)}, not a file: {remedy}"
