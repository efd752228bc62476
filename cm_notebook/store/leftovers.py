"""What dead writers leave in a context folder, and its removal when the folder opens.

Besides the context folder itself, two of its folders get temporary files from writers
that do not hold the context's lock: the signal log's compaction (``signals/``) and
decision records (``decisions/``). Those writers hold an OS lock on their temporary
file while they write it (:func:`write_temp`), so one is left over only if no process
holds that lock and it has not been touched for :data:`STRAY_TEMP_SECONDS` (the lock
is taken a moment after the file is made, and let go just before it is renamed or
linked into place).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Container
from pathlib import Path

from ..errors import CMError
from ..ids import validate_message_id
from ..model import MessageStatus
from .atomic import is_temp_name, write_all
from .codec import read_message_file
from .oslock import lock_is_held
from .paths import DECISIONS_DIR, SIGNALS_DIR, STREAMING_PREFIX, STREAMING_SUFFIX, message_path

if sys.platform != "win32":
    import fcntl

__all__ = ["STRAY_TEMP_SECONDS", "remove_leftovers", "write_temp"]

#: How long a temporary file of ``signals/`` or ``decisions/`` must have been left
#: untouched, its lock free, before it counts as left by a writer that died.
STRAY_TEMP_SECONDS = 60.0


def remove_leftovers(
    ctx_dir: Path, streaming_ids: Container[str], indexed: Callable[[str], bool]
) -> None:
    """Remove what dead writers left: temporary files, unused streaming locks, and the
    placeholders of replies whose append never committed.

    Runs with every lock of the context held. Every write happens under the context
    lock, so a temporary file seen now belongs to a writer that died before its
    rename. A streaming lock file of a message that is not streaming (not in
    ``streaming_ids``) is left over (a writer that died between its journal line and
    the removal, or a probe that raced with the removal); one that an OS lock still
    holds belongs to a live process and stays. Streams whose writer died are finished
    by :mod:`.dead_streams`.

    A reply's append takes its streaming lock, writes the placeholder's file, then
    commits it with a journal line. A writer killed between the file and the line
    leaves the lock and a placeholder file the index does not list (``indexed(id)``
    is False): an empty, never acknowledged reply, removed with its lock (the file
    first: a sweep cut short finds the lock again). A file with any text or tool call
    is not such a placeholder (checkpoints come only after the commit) and stays, for
    ``check`` to report.

    Only the context folder is listed, and ``signals/`` and ``decisions/`` (a few
    files each; see the module docstring for how theirs are judged), never
    ``messages/``, whose size grows with the conversation: message files are written
    through temporary files in the context folder (``atomic_write(temp_dir=...)``).
    Message files a power loss took are restored when they are read or before
    compaction.
    """
    for folder in (SIGNALS_DIR, DECISIONS_DIR):
        _remove_unheld_temps(ctx_dir / folder)
    try:
        names = os.listdir(ctx_dir)
    except OSError:
        return  # reported by the reads that need the folder
    for name in names:
        if name.startswith(".") and _is_leftover(ctx_dir / name, streaming_ids):
            message_id = _streaming_id(name)
            if message_id is not None and not indexed(message_id):
                _remove_uncommitted_placeholder(ctx_dir, message_id)
            with contextlib.suppress(OSError):
                (ctx_dir / name).unlink()


def _streaming_id(name: str) -> str | None:
    # The message id a streaming lock file is named after (None: not such a file).
    if not (name.startswith(STREAMING_PREFIX) and name.endswith(STREAMING_SUFFIX)):
        return None
    return name[len(STREAMING_PREFIX) : -len(STREAMING_SUFFIX)]


def _remove_uncommitted_placeholder(ctx_dir: Path, message_id: str) -> None:
    try:
        path = message_path(ctx_dir, validate_message_id(message_id))
        message = read_message_file(path, message_id)
    except (CMError, OSError):
        return  # no file (killed before writing it), or not one to judge: left alone
    if message.status is MessageStatus.STREAMING and not message.content and not message.tool_calls:
        with contextlib.suppress(OSError):
            path.unlink()


def _is_leftover(path: Path, streaming_ids: Container[str]) -> bool:
    name = path.name
    if is_temp_name(name):
        return True
    message_id = _streaming_id(name)
    if message_id is None:
        return False
    if message_id in streaming_ids:
        return False
    try:
        return not lock_is_held(path)
    except OSError:
        return False  # not a lock file this store made (a link, say): leave it


def write_temp(path: Path, data: bytes, fsync: Callable[[int], None] | None) -> None:
    """Write ``data`` to a new temporary file ``path`` (fsync'd with ``fsync`` if given),
    holding its OS lock meanwhile, for a writer without the context's lock: so a sweep
    never takes a file being written for one a dead writer left. Raises OSError."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        hold(fd)
        write_all(fd, data)
        if fsync is not None:
            fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    os.close(fd)  # (lets go of the lock)


def hold(fd: int) -> None:
    """Take the OS lock of a temporary file just made (see :func:`write_temp`); best
    effort: the sweep's wait (:data:`STRAY_TEMP_SECONDS`) covers a file not locked."""
    if sys.platform != "win32":
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _remove_unheld_temps(folder: Path) -> None:
    if os.path.islink(folder):
        return  # planted: what it points to is outside the context, never swept
    try:
        names = [name for name in os.listdir(folder) if is_temp_name(name)]
    except OSError:
        return  # no such folder (nothing written there yet), or unreadable
    now = time.time()
    for name in names:
        path = folder / name
        try:
            if now - os.lstat(path).st_mtime < STRAY_TEMP_SECONDS or lock_is_held(path):
                continue
            path.unlink()
        except OSError:
            continue
