"""Reading a context's two index files as one consistent state.

:func:`read_index_files` opens ``message_index.journal`` before ``message_index.json``.
Compaction replaces the snapshot first and the journal second, so a journal opened
earlier is either the one that belongs to the snapshot read next, or an older one whose
lines that snapshot already contains: either way nothing is missed. Large files are
read lazily (see :mod:`.lazy`); small ones are parsed whole.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import read_from
from .base import IndexEntry
from .journal import JournalLine
from .lazy import LAZY_MIN_BYTES, LazyFiles, reread_from, snapshot_region
from .snapshot import (
    check_journal_follows,
    file_identity,
    first_journal_line,
    open_index_file,
    parse_journal,
    parse_snapshot,
)

__all__ = ["IndexFiles", "read_index_files"]


@dataclass
class IndexFiles:
    """Both index files as read: their open descriptors (the caller owns them now),
    identities, and either their parsed entries and lines or a lazy reader of them."""

    index_fd: int
    journal_fd: int
    index_id: tuple[int, int, int, int]
    index_stat: os.stat_result
    journal_stat: os.stat_result
    snapshot_size: int
    end: int  # just after the journal's last complete line
    lazy: LazyFiles | None = None
    streaming: set[str] = field(default_factory=set)  # with ``lazy``: ids said streaming
    snapshot: list[IndexEntry] = field(default_factory=list)  # without ``lazy``
    lines: list[JournalLine] = field(default_factory=list)
    next_n: int = 0


def read_index_files(index_path: Path, journal_path: Path, *, keep_open: bool) -> IndexFiles:
    """Open and read both files (see the module docstring).

    ``keep_open``: the snapshot stays open, so a lazy reader may read it again rather
    than keep it in memory. On any error both files are closed again and the error
    raised (``OSError``, or ``RebuildNeeded`` for damage).
    """
    journal_fd = open_index_file(journal_path)
    index_fd = -1
    try:
        index_fd = open_index_file(index_path)
        index_stat = os.fstat(index_fd)
        index_id = file_identity(index_stat)
        snapshot_data = read_from(index_fd, 0)
        snapshot_size = len(snapshot_data)
        st_journal = os.fstat(journal_fd)
        region = None
        if snapshot_size + st_journal.st_size >= LAZY_MIN_BYTES:
            region = snapshot_region(snapshot_data, index_path)
        said = region[0].streaming() if region is not None else []
        if region is not None and not said and keep_open:
            # A page is usually all in the journal: until a line of the snapshot is
            # needed, only the journal stays in memory (and is read only now).
            region[0].release(functools.partial(reread_from, index_fd, snapshot_size, index_path))
            snapshot_data = b""
        journal = read_from(journal_fd, 0)
        read = IndexFiles(index_fd, journal_fd, index_id, index_stat, st_journal, snapshot_size, 0)
        if region is not None:
            first = first_journal_line(journal, journal_path)
            check_journal_follows(region[1], first, index_path, journal_path)
            lazy = LazyFiles.read(*region, journal, journal_path)
            if lazy is not None:
                read.lazy, read.streaming, read.end = lazy, lazy.streaming_ids(said), lazy.end
                return read
            # Lines without numbers (format 2): both files are parsed whole.
            snapshot_data = region[0].data
        read.snapshot, read.next_n = parse_snapshot(snapshot_data, index_path)
        read.lines, read.end = parse_journal(journal, 0, journal_path, after=-1)
        first_line = read.lines[0] if read.lines else None
        check_journal_follows(read.next_n, first_line, index_path, journal_path)
        return read
    except BaseException:
        for fd in (index_fd, journal_fd):
            if fd >= 0:
                os.close(fd)
        raise
