"""The message index of one context: a compacted snapshot plus an append-only journal.

On disk:

* ``message_index.json``: ``{"schema_version": 3, "next_n": N, "entries": [...]}``, one
  :class:`~cm_notebook.store.base.IndexEntry` per line, in ``seq`` order. Written only by
  compaction and rebuilds, always atomically.
* ``message_index.journal``: one line per change (see :mod:`.journal` for the format),
  appended under the context lock. A line *is* the commit point of a new message, of
  a status change (streaming -> complete) and of a branch head move; a line that
  commits a finished message also carries the message itself, so that the line alone
  (one fsync) makes it durable. Replaying lines into a dict keyed by id is idempotent,
  so replaying lines a snapshot already holds is harmless. An update of a finished
  message also writes a marker just before its file, which commits nothing (see
  :mod:`.pending`). Lines are numbered, each after the one before it; a line numbered
  at or below an earlier one is a copy, not a change (see
  :func:`.snapshot.check_line_numbers`), and the index is rebuilt.

Appending a message therefore writes one line, not the whole index. When the journal
holds at least as many lines as the snapshot holds entries (and at least
:data:`COMPACT_MIN_LINES`), or more bytes than :data:`COMPACT_MIN_BYTES` and the
snapshot, the writer folds it into a new snapshot and then replaces the journal with an
empty file (a new inode); see :meth:`ContextState.compact_if_due
<cm_notebook.store.context.ContextState.compact_if_due>` for what must be durable
first. The snapshot grows geometrically between compactions, so rewriting it costs
O(1) amortised bytes per append. A crash between the two replaces leaves a snapshot
that already contains the old journal's lines, which replay idempotently.

What the index holds in memory (entries, head moves, durable copies) and how lines
apply to it is :mod:`.index_contents`; this module adds the files. Large files are
read lazily (see :mod:`.lazy`): opening a context of 10,000 messages parses the lines
of the messages it shows, not 10,000 entries.

Readers in other processes keep up cheaply: :meth:`MessageIndex.refresh` ``stat``s
both files and, if the snapshot is unchanged and the journal is the same inode, reads
only the bytes appended since the last read. A journal line without its trailing
newline (a writer died mid-line, or is still writing) is ignored; the next writer,
holding the lock, truncates it, once it has checked that no lines were lost after it
(a journal cut short mid-line: see :mod:`.torn_tail`). On POSIX the last-read
snapshot stays open, so its inode number cannot be reused by a later snapshot and
"same inode" really means "same file".
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError
from ..model import Message
from .atomic import Fsync, atomic_write, read_from
from .base import IndexEntry
from .codec import read_message_folder
from .diagnostics import warn
from .index_contents import IndexContents
from .index_files import read_index_files
from .journal import (
    JournalLine,
    JournalWriter,
    counted_lines,
    encode_entry_line,
    encode_head_line,
    encode_marker_line,
)
from .lazy import LAZY_MIN_BYTES
from .oserrors import open_regular, translate
from .paths import INDEX_NAME, JOURNAL_NAME, MESSAGES_DIR
from .recovered import rebuilt_entries
from .snapshot import (
    RebuildNeeded,
    empty_index_bytes,
    file_identity,
    parse_journal,
    salvage_journal,
    snapshot_bytes,
)

__all__ = [
    "COMPACT_MIN_BYTES",
    "COMPACT_MIN_LINES",
    "LAZY_MIN_BYTES",
    "MessageIndex",
    "RebuildNeeded",
    "empty_index_bytes",
]

#: Compaction waits for at least this many journal lines, so small contexts never
#: rewrite the snapshot at all.
COMPACT_MIN_LINES = 128
#: ... or for this many journal bytes (lines carry finished messages), so that opening
#: a context never parses a journal much larger than its snapshot.
COMPACT_MIN_BYTES = 1 << 20

# Holding the last-read files open pins their inode numbers (see the module docstring).
# Windows refuses to replace a file that is open, so there the files are closed at once.
_KEEP_OPEN = os.name != "nt"

# Never follow a link planted in place of an index file: a link makes the file
# "damaged", and the rebuild replaces the link with a real file.
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_BINARY", 0) | _NO_FOLLOW


@dataclass(frozen=True)
class DeferredLine:
    """A durable journal line written without its fsync (see
    :meth:`MessageIndex.deferred_fsync`)."""

    fd: int  # a duplicate of the journal's descriptor, for that fsync
    inode: tuple[int, int]  # the journal's device and inode
    end: int  # the journal's length just after the line


class MessageIndex(IndexContents):
    """The in-memory index of one context, kept in step with the files on disk.

    Not thread-safe: the owner serialises calls. Methods that write
    (:meth:`append`, :meth:`compact`, :meth:`rebuild`) must be called with the
    context's cross-process lock held and right after :meth:`refresh`.

    What it holds, and how large files are read lazily: see
    :class:`~.index_contents.IndexContents`. A damaged line found late (when a lazy
    read first needs it) raises :class:`RebuildNeeded` there and at every
    :meth:`refresh` until the index is rebuilt.
    """

    def __init__(self, ctx_dir: Path, fsync: Fsync = os.fsync) -> None:
        self.ctx_dir = ctx_dir
        self.fsync = fsync
        super().__init__(ctx_dir / INDEX_NAME, ctx_dir / JOURNAL_NAME)
        self.snapshot_size = 0  # bytes of message_index.json
        self.loaded = False
        self._index_fd = -1
        self._index_id: tuple[int, int, int, int] | None = None
        self._journal_fd = -1
        self._journal_inode: tuple[int, int] | None = None
        self._writer = JournalWriter(self.journal_path)
        self._deferred: list[DeferredLine] | None = None  # see deferred_fsync()
        self._offset = 0  # just after the last complete journal line read
        # What the lock-time refresh (or this index's own writes since) found, for the
        # writes that follow under the same lock: whether the journal ends at _offset
        # (no fragment to cut before the next line), and the files' ``stat`` results as
        # the index holds them (None: not known; see journal_stat).
        self._end_known = False
        self._journal_stat: os.stat_result | None = None
        #: The snapshot's ``stat`` result as last read or written (None: not known).
        self.index_stat: os.stat_result | None = None
        self._unsynced = False  # a line read or written may not be durable yet
        #: The journal's device, inode, end of its last complete line and size, when
        #: it was last looked at (a refresh) and ended in a fragment (see .torn_tail).
        self.torn_tail: tuple[int, int, int, int] | None = None

    # -- reading -------------------------------------------------------------------

    def refresh(
        self, looked: tuple[os.stat_result | None, os.stat_result | None] | None = None
    ) -> None:
        """Catch up with changes made by anyone (this or another process).

        ``looked``: the ``lstat`` results of the journal and the snapshot (in that
        order), if the caller has just taken them (see ``ContextState.refresh``);
        otherwise, or where one is None, both are taken here.

        Raises :class:`RebuildNeeded` if a file is missing or damaged and
        :class:`~cm_notebook.errors.SchemaVersionError` if it is from a newer version.
        """
        if self._damage is not None:
            raise self._damage
        st_journal, st_index = looked if looked is not None else (None, None)
        if st_journal is None or st_index is None:
            try:
                # The journal first: see _full_reload for why the order matters. lstat:
                # a link in place of an index file is damage that _full_reload reports.
                st_journal = os.lstat(self.journal_path)
                st_index = os.lstat(self.index_path)
            except FileNotFoundError as exc:
                path = Path(str(exc.filename))
                raise RebuildNeeded(f"{path.name} is missing", path) from None
            except OSError as exc:
                raise translate(exc, exc.filename, "read") from exc
        if (
            self.loaded
            and file_identity(st_index) == self._index_id
            and (st_journal.st_dev, st_journal.st_ino) == self._journal_inode
            and st_journal.st_size >= self._offset
        ):
            # Bytes past the last complete line are new lines, or a line being written
            # (or torn). Re-reading a fragment is cheap and such fragments are rare;
            # comparing sizes with the last read instead could miss a torn line that a
            # writer replaced by a complete line of exactly the same length.
            if st_journal.st_size != self._offset:
                self._read_journal_tail()
            # Under the lock (a write's refresh) nobody else changes the files until it
            # is let go: what was just looked at stays true but for this index's writes.
            self.index_stat = st_index
            self._note_journal(st_journal)
            return
        self._full_reload()

    def _note_journal(self, st_journal: os.stat_result) -> None:
        # The journal as looked at, if it ends where the lines read end (no fragment).
        self._end_known = st_journal.st_size == self._offset
        self._journal_stat = st_journal if self._end_known else None
        self.torn_tail = None
        if st_journal.st_size > self._offset:
            self.torn_tail = (
                st_journal.st_dev,
                st_journal.st_ino,
                self._offset,
                st_journal.st_size,
            )

    def journal_stat(self) -> os.stat_result:
        """The journal's ``stat`` result now, with the lock held since the refresh (an
        ``fstat`` of the open journal, unless nothing was written since it was taken)."""
        if self._journal_stat is None:
            if self._journal_fd >= 0:
                self._journal_stat = os.fstat(self._journal_fd)
            else:  # pragma: no cover - Windows: the journal is not kept open
                self._journal_stat = os.lstat(self.journal_path)
        return self._journal_stat

    def _full_reload(self) -> None:
        try:
            read = read_index_files(self.index_path, self.journal_path, keep_open=_KEEP_OPEN)
        except OSError as exc:
            raise translate(exc, self.ctx_dir, "read the message index in") from exc
        # Only now: a failed read leaves the previous state untouched.
        self._close_files()
        if read.lazy is None:
            snapshot, lines = read.snapshot, read.lines
            self._load([*snapshot, *(line.entry for line in lines if line.entry is not None)])
            # What the lines of another journal said (places in it, head moves) is gone.
            self._heads, self._content, self._pending = {}, {}, {}
            self.last_at, self.next_n = None, read.next_n
            for line in lines:
                self._apply_record(line)
            self._snapshot_count, self._lines_read = len(snapshot), counted_lines(lines)
        else:
            self._read_lazily(read.lazy, read.streaming)
        self._lines_after = 0
        self.heads_version += 1
        self.snapshot_size = read.snapshot_size
        self._offset = read.end
        self._unsynced = read.end > 0  # lines of writers that may not have fsync'd them
        self._index_id = read.index_id
        self._journal_inode = (read.journal_stat.st_dev, read.journal_stat.st_ino)
        self._index_fd, self._journal_fd = read.index_fd, read.journal_fd
        self.index_stat = read.index_stat
        self._note_journal(read.journal_stat)
        self.loaded = True
        if not _KEEP_OPEN:  # pragma: no cover - Windows
            self._close_files()

    def _read_journal_tail(self) -> None:
        if self._journal_fd >= 0:
            data = read_from(self._journal_fd, self._offset)
        else:  # pragma: no cover - Windows: the journal is not kept open
            with open(self.journal_path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        # Other writers' lines, numbered from next_n on.
        lines, end = parse_journal(data, self._offset, self.journal_path, after=self.next_n - 1)
        for line in lines:
            self._take(line)
        if lines:
            self.heads_version += 1
            self._unsynced = True  # another writer's: durable or not, we cannot tell
        self._lines_after += counted_lines(lines)
        self._offset += end

    # -- writing (cross-process lock held, right after refresh) ----------------------

    def append(
        self,
        entry: IndexEntry,
        *,
        at: str,
        branch: str | None = None,
        content: bytes | None = None,
        size: int = 0,
        durable: bool = True,
    ) -> None:
        """Commit ``entry`` with one journal line, fsync'd unless ``durable`` is False.

        ``branch`` moves that branch's head to the entry; ``content`` (the message's
        compact JSON, its file being ``size`` bytes) makes the line the durable copy of
        the message. On failure (a full disk) whatever part of the line reached the file
        is cut off again, so nothing is committed, and the package's error is raised.
        """
        line = encode_entry_line(
            entry, n=self.next_n, at=at, branch=branch, content=content, size=size
        )
        span = None
        if content is not None:
            span = (self._offset + len(line) - len(content) - 1, len(content))
        record = JournalLine(entry, self.next_n, at, branch, entry.id, span, size)
        self._write_line(line, durable)
        self._take(record)
        self.heads_version += 1

    def append_marker(self, entry: IndexEntry, digest: str) -> None:
        """Say, with one journal line that is not fsync'd, that an update of ``entry``'s
        message (its committed entry) is about to replace the file with bytes of
        ``digest``: a marker, which commits nothing (see :mod:`.pending`). It moves no
        head and no time, and is not counted toward a compaction."""
        line = encode_marker_line(entry, n=self.next_n, digest=digest)
        record = JournalLine(entry, self.next_n, None, None, entry.id, None, 0, digest)
        self._write_line(line, False, counted=False)
        self._take(record)

    def append_head(self, branch: str, head: str | None, *, at: str) -> None:
        """Move ``branch`` to ``head`` with one durable journal line."""
        line = encode_head_line(n=self.next_n, at=at, branch=branch, head=head)
        record = JournalLine(None, self.next_n, at, branch, head, None, 0)
        self._write_line(line, True)
        self._take(record)
        self.heads_version += 1

    def _write_line(self, line: bytes, durable: bool, *, counted: bool = True) -> None:
        # ``counted``: whether the line counts toward a compaction (see journal_lines).
        assert self._journal_inode is not None
        deferred = durable and self._deferred is not None
        fsync = self.fsync if durable and not deferred else None
        # The refresh under this lock (or this index's last line) found the journal to
        # end at _offset: the writer need not look for a fragment to cut.
        checked, self._end_known, self._journal_stat = self._end_known, False, None
        self._writer.append(self._journal_inode, self._offset, line, fsync, checked=checked)
        self._end_known, self.torn_tail = True, None  # the writer cut any fragment off
        self._offset += len(line)
        self._lines_after += counted
        # An fsync makes every line before it durable too; a deferred one is not made yet.
        self._unsynced = not durable or deferred
        # The write's first deferred line only: its fsync, made after the write, covers
        # any line after it too (synced_through then keeps the journal "unsynced").
        if deferred and self._deferred is not None and not self._deferred:
            try:
                fd = self._writer.duplicate(self._journal_inode)
            except StoreError:  # no descriptor to spare: the fsync made here
                self._writer.sync(self._journal_inode, self.fsync)
                self._unsynced = False
            else:
                self._deferred.append(DeferredLine(fd, self._journal_inode, self._offset))

    @contextlib.contextmanager
    def deferred_fsync(self) -> Iterator[list[DeferredLine]]:
        """Within: a durable line is written without its fsync, which is the caller's
        to make once its locks are released (see :mod:`.group_sync`). The list yielded
        then holds the line (its ``fd`` the caller's to close); it stays empty if no
        durable line was written."""
        lines: list[DeferredLine] = []
        self._deferred = lines
        try:
            yield lines
        finally:
            self._deferred = None

    def synced_through(self, line: DeferredLine) -> None:
        """``line``'s fsync was made: if no line came after it, every line read or
        written is durable (no fsync owed before a metadata.json write). With the
        state lock held."""
        if self._journal_inode == line.inode and self._offset == line.end:
            self._unsynced = False

    def make_durable(self) -> None:
        """fsync the journal if a line read or written since its last fsync may not be
        durable (a streaming placeholder, another writer's line): a file that names what
        the journal committed (metadata.json's heads) must never outlive the line."""
        if self._unsynced and self._journal_inode is not None:
            self._writer.sync(self._journal_inode, self.fsync)
            self._unsynced = False

    def mark(self) -> int:
        """Where the journal ends now: :meth:`retract` takes the index back to this point."""
        return self._offset

    def retract(self, mark: int) -> None:
        """Take back the journal lines appended since :meth:`mark` (a write that failed).

        Only valid while the lock that was held for the append is still held and no
        compaction ran in between; readers that saw the lines reload when they notice the
        journal shrank.
        """
        if self._offset == mark:
            return
        assert self._journal_inode is not None
        self._end_known, self._journal_stat = False, None
        self._writer.truncate(self._journal_inode, mark, self.fsync)
        self._full_reload()

    def compaction_due(self) -> bool:
        """Whether the journal has grown enough to fold it (see the module docstring)."""
        return self.journal_lines >= max(COMPACT_MIN_LINES, self.snapshot_count) or (
            self._offset >= max(COMPACT_MIN_BYTES, self.snapshot_size)
        )

    def compact(self) -> None:
        """Fold the journal into a new snapshot, then start an empty journal.

        The caller first made durable what only the journal holds (message files, head
        moves): see ContextState.compact_if_due.
        """
        ordered = sorted(self.materialize().values(), key=lambda entry: entry.seq)
        self._write_snapshot(ordered)

    def rebuild(
        self, reason: str, path: Path, known: Mapping[str, IndexEntry] | None = None
    ) -> list[Message]:
        """Recreate the snapshot from the message files, warning about what was lost;
        returns the messages read that it lists (not those no conversation leads to,
        which it leaves out: see :func:`.recovered.rebuilt_entries`).

        ``known``: the entries the damaged index still told (see
        :func:`.recovered.rebuilt_entries`: an unreadable file among them keeps its
        place in the tree). Other unreadable files are skipped, each with a StoreWarning.
        Messages are numbered by creation time, then id.
        """
        found, skipped = read_message_folder(self.ctx_dir / MESSAGES_DIR)
        entries = rebuilt_entries(found, skipped, known or {}, self.ctx_dir / MESSAGES_DIR)
        self._write_snapshot(entries)
        self._load(entries)
        warn(
            f"the message index of context {self.ctx_dir.name!r} was rebuilt from "
            f"{len(found)} message files because {reason}",
            path,
        )
        listed = {entry.id for entry in entries}
        return [message for message in found if message.id in listed]

    def _write_snapshot(self, ordered: list[IndexEntry]) -> None:
        snapshot = snapshot_bytes(ordered, self.next_n)
        atomic_write(self.index_path, snapshot, fsync=self.fsync)
        # Only now start a new journal: until this replace, the old journal's lines are
        # in both files, which is harmless because replay is idempotent.
        atomic_write(self.journal_path, b"", fsync=self.fsync)
        self._close_files()
        index_fd = os.open(self.index_path, _READ_FLAGS)
        journal_fd = os.open(self.journal_path, _READ_FLAGS)
        self.index_stat = os.fstat(index_fd)
        self._index_id = file_identity(self.index_stat)
        st_journal = os.fstat(journal_fd)
        self._journal_inode = (st_journal.st_dev, st_journal.st_ino)
        self._index_fd, self._journal_fd = index_fd, journal_fd
        if not _KEEP_OPEN:  # pragma: no cover - Windows
            self._close_files()
        self._snapshot_count = len(ordered)
        self.snapshot_size = len(snapshot)
        self._lines_read, self._lines_after = 0, 0
        self._offset = 0
        self._note_journal(st_journal)
        self._unsynced = False  # the new journal is empty
        # Folded into metadata.json and message files before the snapshot was written.
        self._heads, self.last_at, self._content, self._pending = {}, None, {}, {}
        self.heads_version += 1
        self.loaded = True

    def read_content(self, offset: int, length: int) -> bytes:
        """``length`` bytes of the journal from ``offset`` (a message's durable copy)."""
        if self._journal_fd >= 0:
            data = os.pread(self._journal_fd, length, offset)
        else:  # pragma: no cover - Windows: the journal is not kept open
            with open(self.journal_path, "rb") as handle:
                handle.seek(offset)
                data = handle.read(length)
        if len(data) != length:
            raise RebuildNeeded("message_index.journal is shorter than it was", self.journal_path)
        return data

    def salvage(self) -> list[JournalLine]:
        """The lines of a damaged journal that still parse, one by one (before a rebuild).

        They keep what only the journal holds (head moves, durable copies of messages)
        from being lost with it. Missing or unreadable: nothing is salvaged.
        """
        found = salvage_journal(self.journal_path)
        # What is left of the index is rebuilt next: forget what was read lazily.
        self._lazy, self._damage = None, None
        self._heads, self.last_at, self._content, self._pending = {}, None, {}, {}
        for record in found:
            self._apply_record(record)
        self.heads_version += 1
        # Kept open for read_content until the rebuild replaces the journal.
        self._close_files()
        with contextlib.suppress(OSError, StoreError):  # CorruptDataError: not a file
            self._journal_fd = open_regular(self.journal_path, check_folder=False)
        return found

    def _close_files(self) -> None:
        self._end_known, self._journal_stat, self.index_stat = False, None, None
        self._writer.close()
        for fd in (self._index_fd, self._journal_fd):
            if fd >= 0:
                os.close(fd)
        self._index_fd = self._journal_fd = -1

    def close(self) -> None:
        """Close the files held open and forget everything (the next refresh reloads)."""
        self._close_files()
        self._load([])  # nothing lazily read may outlive the files it was read from
        self.loaded = False
        self._index_id = None
        self._journal_inode = None
