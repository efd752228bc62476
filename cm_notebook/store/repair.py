"""Message files whose durable copy is a journal line: checking, repairing, flushing.

A finished message is committed by one fsync'd journal line that carries the message
(see :mod:`.journal`); its file in ``messages/`` is written just before, atomically but
without an fsync. After ``kill -9`` the file is complete (the OS has it). After a power
loss it may be missing, empty or an older version; then the journal line still holds
the message, and :func:`repair_files` rewrites the file from it when the message is
read (see :func:`cm_notebook.store.ops.read_messages`) or, at the latest, before
compaction. Before compaction
drops those lines, :func:`repair_files` with ``flush=True`` makes every such file
durable (an fsync per file and one of the folder), so the copy in the journal is no
longer needed.

A file is checked by its size, recorded in the journal line: a power loss leaves a
missing, empty or older file, and an older version of a message differs in size from
the finished one (its status, at least, is a different word). Its bytes are compared
with the journal's copy too where a size cannot tell: before compaction drops the copy
of a file no batch has made durable (a file system may leave a file of the right size
with zeros in it), and when a reader found the file damaged.

A file that differs is restored with a :class:`~.diagnostics.StoreWarning`, unless it is
exactly what an update of a finished message wrote before a kill stopped it short of
its commit line (the journal's marker says so: see :mod:`.pending`). That file is no
damage, only a version never committed, and is put back to the committed one quietly.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from .._cli_advice import for_contexts_in
from ..errors import StoreError
from ..redact import get_logger
from .atomic import Fsync, atomic_write, fsync_dir, mkdir_durable, read_from
from .codec import file_bytes_from_compact
from .diagnostics import warn
from .index import MessageIndex
from .oserrors import linked, translate
from .paths import MESSAGES_DIR, data_dir_of
from .pending import update_cut_short
from .workers import fsync_each

__all__ = ["ensure_messages_folder", "intact", "repair_files"]

_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_log = get_logger(__name__)


def intact(path: str, size: int) -> bool:
    """Whether the message file at ``path`` is a regular file of ``size`` bytes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def ensure_messages_folder(
    ctx_dir: Path, fsync: Fsync, *, make: bool = True, looked: os.stat_result | None = None
) -> bool:
    """Make the context's ``messages`` folder again if it is gone; refuse a link there.

    Git keeps no empty folder, so a new context checked out from a repository comes
    back without it; a folder deleted by hand leaves the journal's copies of its
    messages. Either way writes need it back, and :func:`repair_files` then restores
    the files the journal still holds. Write locks held. Returns whether the folder
    is there; with ``make=False`` a missing one is left for a later write to make.
    ``looked``: the folder's ``lstat`` result if the caller has just taken it.
    """
    if looked is not None and stat.S_ISDIR(looked.st_mode):
        return True  # the common case, with no path to build
    folder = ctx_dir / MESSAGES_DIR
    try:
        mode = (looked if looked is not None else os.lstat(folder)).st_mode
    except FileNotFoundError:
        if not make:
            return False
        try:
            mkdir_durable(folder, fsync)
        except OSError as exc:
            raise translate(exc, folder, "create") from exc
        warn(
            for_contexts_in(
                f"the folder {folder} was missing and was made again; message files the "
                "journal still holds are restored as they are read (`cm-notebook check "
                f"--repair {ctx_dir.name}` restores them all now)",
                data_dir_of(ctx_dir),
            ),
            folder,
        )
        return True
    if stat.S_ISLNK(mode):
        raise linked(folder)  # writing through it would write outside
    return True


def repair_files(
    index: MessageIndex,
    fsync: Fsync,
    *,
    flush: bool,
    only: list[str] | None = None,
    flushed: Mapping[str, tuple[int, int, int]] | None = None,
    compare: bool = False,
) -> int:
    """Rewrite, from the journal, every message file a power loss damaged; return how many.

    With ``flush``, also fsync every file whose durable copy is in the journal, and the
    ``messages`` folder, so that the journal's copies may be dropped; ``flushed`` (id ->
    copy) names files fsync'd already, skipped only while that very copy is the current
    one (a message committed again since has a new copy, and a new file to fsync). With
    ``only``, look at those messages alone (the ones being read, or a batch to flush).
    With ``compare``, a file of the right size is also compared byte for byte with the
    copy: with ``flush``, those no batch made durable (compaction is about to drop
    their copies); without, all of them (a reader found one damaged).
    Must run with the context lock held, right after the index was refreshed.
    """
    if only is None:
        copies = list(index.content.items())
    else:
        copies = [(mid, copy) for mid in only if (copy := index.copy_of(mid)) is not None]
    if not copies:
        return 0
    folder = index.ctx_dir / MESSAGES_DIR
    prefix = f"{folder}{os.sep}"
    repaired = 0
    done = flushed or {}
    owed: list[str] = []  # intact files to fsync, all at once below
    for message_id, copy in copies:
        path = f"{prefix}{message_id}.json"
        unflushed = flush and done.get(message_id) != copy
        whole = intact(path, copy[2])
        data = None
        if not whole or (compare and (unflushed or not flush)):
            data = _journal_copy(index, message_id, copy, path)
        if data is None or (whole and _holds(path, data)):
            if whole and unflushed:
                owed.append(path)
            continue  # intact, or no copy to restore it from (the readers report it)
        # Looked at before the file is replaced: an update cut short is no damage.
        cut_short = update_cut_short(index, message_id, path)
        try:
            atomic_write(Path(path), data, fsync=fsync, temp_dir=index.ctx_dir)
        except StoreError:
            if flush:
                raise  # the journal's copy must not be dropped
            continue  # (a folder in its place, say) reported by the readers
        repaired += 1
        if cut_short:
            _log.debug("put %s back to its committed version (an update cut short)", path)
            continue
        warn(
            f"message file {path} was missing, damaged or older than its last "
            "committed version (the machine went down before it reached the disk, "
            "or it was changed by hand); it was restored from the journal",
            Path(path),
        )
    if flush:
        fsync_each(owed, functools.partial(_flush, fsync=fsync))
        fsync_dir(folder, fsync)
    return repaired


def _journal_copy(
    index: MessageIndex, message_id: str, copy: tuple[int, int, int], path: str
) -> bytes | None:
    # The file's bytes as the journal holds them, or None (with a warning) if that
    # copy does not decode: the line parsed when it was loaded, its message part did
    # not. The file is then left alone; the readers report it if it is damaged.
    offset, length, _size = copy
    try:
        return file_bytes_from_compact(index.read_content(offset, length))
    except (ValueError, UnicodeDecodeError):
        warn(f"the journal copy of message {message_id!r} is damaged", Path(path))
        return None


def _holds(path: str, data: bytes) -> bool:
    # Whether the regular file at ``path`` holds exactly ``data`` (read without
    # following a link: intact() saw a regular file, but it may have been swapped since).
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | _NO_FOLLOW)
    except OSError:
        return False
    try:
        return read_from(fd, 0) == data
    except OSError:
        return False
    finally:
        os.close(fd)


def _flush(path: str, fsync: Fsync) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0) | _NO_FOLLOW)
        try:
            fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise translate(exc, path, "flush") from exc
