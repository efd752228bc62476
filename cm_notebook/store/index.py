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
  so replaying a line twice is harmless.

Appending a message therefore writes one line, not the whole index. When the journal
holds at least as many lines as the snapshot holds entries (and at least
:data:`COMPACT_MIN_LINES`), or more bytes than :data:`COMPACT_MIN_BYTES` and the
snapshot, the writer folds it into a new snapshot and then replaces the journal with an
empty file (a new inode); see :meth:`ContextState.compact_if_due
<cm_notebook.store.context.ContextState.compact_if_due>` for what must be durable
first. The snapshot grows geometrically between compactions, so rewriting it costs
O(1) amortised bytes per append. A crash between the two replaces leaves a snapshot
that already contains the old journal's lines, which replay idempotently.

Readers in other processes keep up cheaply: :meth:`MessageIndex.refresh` ``stat``s
both files and, if the snapshot is unchanged and the journal is the same inode, reads
only the bytes appended since the last read. A journal line without its trailing
newline (a writer died mid-line, or is still writing) is ignored; the next writer,
holding the lock, truncates it. On POSIX the last-read snapshot stays open, so its
inode number cannot be reused by a later snapshot and "same inode" really means
"same file".
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from pydantic import BaseModel, ValidationError

from .. import _json
from ..errors import CorruptDataError, InvalidIdError, StoreError
from ..ids import validate_message_id
from ..model import SCHEMA_VERSION, MessageStatus
from .atomic import Fsync, atomic_write, is_temp_name, read_from, write_all
from .base import IndexEntry
from .codec import read_message_file
from .diagnostics import warn
from .journal import (
    JournalLine,
    LineError,
    check_ids,
    encode_entry_line,
    encode_head_line,
    parse_lines,
)
from .oserrors import describe_kind, open_regular, translate
from .paths import INDEX_NAME, JOURNAL_NAME, MESSAGES_DIR
from .schema import INDEX_FORMAT_SINCE, check_not_newer

__all__ = [
    "COMPACT_MIN_BYTES",
    "COMPACT_MIN_LINES",
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


class _IndexDoc(BaseModel):
    schema_version: int
    entries: list[IndexEntry]
    next_n: int = 0  # the number of the next journal line (0 in format 2)


class RebuildNeeded(Exception):
    """The snapshot or journal is missing or damaged; rebuild from ``messages/``."""

    def __init__(self, reason: str, path: Path) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path


def _open_index_file(path: Path) -> int:
    # The index is derived data: anything but a regular file at its place (missing, a
    # link, a folder, a FIFO, a socket) is rebuilt from the message files. Other
    # failures (permissions, I/O errors) are raised: a rebuild would not fix them.
    try:
        return open_regular(path, check_folder=False)
    except FileNotFoundError:
        raise RebuildNeeded(f"{path.name} is missing", path) from None
    except CorruptDataError:
        try:
            kind = describe_kind(os.lstat(path).st_mode)
        except OSError:
            kind = "not a regular file"
        raise RebuildNeeded(f"{path.name} is {kind}", path) from None


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def empty_index_bytes() -> bytes:
    """The snapshot of a context without messages."""
    return _snapshot_bytes([], 0)


def _snapshot_bytes(entries: list[IndexEntry], next_n: int) -> bytes:
    body = ",\n".join(entry.model_dump_json() for entry in entries)
    start = f'{{"schema_version": {SCHEMA_VERSION}, "next_n": {next_n}, "entries": ['
    return f"{start}\n{body}\n]}}\n".encode() if entries else f"{start}]}}\n".encode()


class MessageIndex:
    """The in-memory index of one context, kept in step with the files on disk.

    Not thread-safe: the owner serialises calls. Methods that write
    (:meth:`append`, :meth:`compact`, :meth:`rebuild`) must be called with the
    context's cross-process lock held and right after :meth:`refresh`.
    """

    def __init__(self, ctx_dir: Path, fsync: Fsync = os.fsync) -> None:
        self.ctx_dir = ctx_dir
        self.fsync = fsync
        self.index_path = ctx_dir / INDEX_NAME
        self.journal_path = ctx_dir / JOURNAL_NAME
        self.entries: dict[str, IndexEntry] = {}
        self._children: dict[str | None, list[str]] | None = {}
        self.streaming_ids: set[str] = set()  # status "streaming", kept for O(1) checks
        self.next_seq = 0
        self.snapshot_count = 0  # entries in message_index.json
        self.journal_lines = 0  # complete lines in the journal
        self.snapshot_size = 0  # bytes of message_index.json
        #: Head moves in the journal: branch -> (line number, head).
        self.heads: dict[str, tuple[int, str | None]] = {}
        #: The number and time of the last journal line that carried one.
        self.last_at: tuple[int, str] | None = None
        #: Changes whenever ``heads`` or ``last_at`` may have changed.
        self.heads_version = 0
        #: The number the next journal line gets.
        self.next_n = 0
        #: Messages whose durable content is in the journal: id -> (offset, length, size).
        self.content: dict[str, tuple[int, int, int]] = {}
        self.loaded = False
        self._index_fd = -1
        self._index_id: tuple[int, int, int, int] | None = None
        self._journal_fd = -1
        self._journal_inode: tuple[int, int] | None = None
        self._offset = 0  # just after the last complete journal line read

    # -- reading -------------------------------------------------------------------

    def refresh(self) -> None:
        """Catch up with changes made by anyone (this or another process).

        Raises :class:`RebuildNeeded` if a file is missing or damaged and
        :class:`~cm_notebook.errors.SchemaVersionError` if it is from a newer version.
        """
        try:
            # The journal first: see _full_reload for why the order matters. lstat: a
            # link in place of an index file is damage that _full_reload reports.
            st_journal = os.lstat(self.journal_path)
            st_index = os.lstat(self.index_path)
        except FileNotFoundError as exc:
            path = Path(str(exc.filename))
            raise RebuildNeeded(f"{path.name} is missing", path) from None
        except OSError as exc:
            raise translate(exc, exc.filename, "read") from exc
        if (
            self.loaded
            and _identity(st_index) == self._index_id
            and (st_journal.st_dev, st_journal.st_ino) == self._journal_inode
            and st_journal.st_size >= self._offset
        ):
            # Bytes past the last complete line are new lines, or a line being written
            # (or torn). Re-reading a fragment is cheap and such fragments are rare;
            # comparing sizes with the last read instead could miss a torn line that a
            # writer replaced by a complete line of exactly the same length.
            if st_journal.st_size != self._offset:
                self._read_journal_tail()
            return
        self._full_reload()

    def _full_reload(self) -> None:
        # Open the journal before reading the snapshot. Compaction replaces the snapshot
        # first and the journal second, so a journal opened earlier is either the one
        # that belongs to the snapshot we then read or an older one whose lines that
        # snapshot already contains: either way nothing is missed.
        journal_fd = _open_index_file(self.journal_path)
        index_fd = -1
        try:
            index_fd = _open_index_file(self.index_path)
            index_id = _identity(os.fstat(index_fd))
            snapshot_data = read_from(index_fd, 0)
            snapshot, next_n = self._parse_snapshot(snapshot_data)
            st_journal = os.fstat(journal_fd)
            journal = read_from(journal_fd, 0)
            lines, end = self._parse_lines(journal, 0)
        except BaseException as exc:
            # Leave the previous state untouched: a failed reload changes nothing.
            for fd in (index_fd, journal_fd):
                if fd >= 0:
                    os.close(fd)
            if isinstance(exc, OSError):
                raise translate(exc, self.ctx_dir, "read the message index in") from exc
            raise
        self._close_files()
        self._load([*snapshot, *(line.entry for line in lines if line.entry is not None)])
        self.heads, self.last_at, self.content = {}, None, {}
        self.next_n = next_n
        for line in lines:
            self._apply_record(line)
        self.heads_version += 1
        self.snapshot_count = len(snapshot)
        self.snapshot_size = len(snapshot_data)
        self.journal_lines = len(lines)
        self._offset = end
        self._index_id = index_id
        self._journal_inode = (st_journal.st_dev, st_journal.st_ino)
        self._index_fd, self._journal_fd = index_fd, journal_fd
        self.loaded = True
        if not _KEEP_OPEN:  # pragma: no cover - Windows
            self._close_files()

    def _parse_snapshot(self, data: bytes) -> tuple[list[IndexEntry], int]:
        try:
            doc = _IndexDoc.model_validate_json(data)
        except ValidationError:
            version = _sniff_version(data)
            if isinstance(version, int):
                check_not_newer(version, self.index_path)
            raise RebuildNeeded("message_index.json is damaged", self.index_path) from None
        check_not_newer(doc.schema_version, self.index_path)
        if doc.schema_version < INDEX_FORMAT_SINCE:
            # Derived data from an older version: rebuilding it is the upgrade.
            raise RebuildNeeded("message_index.json is from an older version", self.index_path)
        try:
            check_ids(doc.entries)
        except InvalidIdError:
            raise RebuildNeeded("message_index.json has an invalid id", self.index_path) from None
        return doc.entries, doc.next_n

    def _read_journal_tail(self) -> None:
        if self._journal_fd >= 0:
            data = read_from(self._journal_fd, self._offset)
        else:  # pragma: no cover - Windows: the journal is not kept open
            with open(self.journal_path, "rb") as handle:
                handle.seek(self._offset)
                data = handle.read()
        lines, end = self._parse_lines(data, self._offset)
        for line in lines:
            if line.entry is not None:
                self._apply(line.entry)
            self._apply_record(line)
        if lines:
            self.heads_version += 1
        self.journal_lines += len(lines)
        self._offset += end

    def _parse_lines(self, data: bytes, start: int) -> tuple[list[JournalLine], int]:
        """The complete lines of ``data``, and how many bytes they span.

        A last line without its newline is left out: a writer is still writing it, or
        died doing so (then the next writer truncates it).
        """
        try:
            lines, end = parse_lines(data, start)
            check_ids([line.entry for line in lines if line.entry is not None])
        except (LineError, InvalidIdError) as exc:
            raise RebuildNeeded(
                f"message_index.journal has {exc}"
                if isinstance(exc, LineError)
                else f"message_index.journal has a damaged line after byte {start}",
                self.journal_path,
            ) from None
        return lines, end

    def _apply_record(self, line: JournalLine) -> None:
        """Note what a line says beyond its entry: head move, time, durable content."""
        if line.n >= 0:
            if line.n >= self.next_n:
                self.next_n = line.n + 1
            if line.branch is not None:
                self.heads[line.branch] = (line.n, line.head)
            if line.at is not None:
                self.last_at = (line.n, line.at)
        if line.content is not None and line.entry is not None:
            offset, length = line.content
            self.content[line.entry.id] = (offset, length, line.size)

    def _load(self, entries: list[IndexEntry]) -> None:
        """Replace the in-memory index with ``entries`` (later lines win, as on replay)."""
        # Builtin passes only: this runs over every entry when a context opens. The
        # parent -> children map is built when first asked for (see ``children``).
        known = {entry.id: entry for entry in entries}
        streaming_status = MessageStatus.STREAMING
        self.streaming_ids = {
            mid for mid, entry in known.items() if entry.status is streaming_status
        }
        self.next_seq = max((entry.seq for entry in known.values()), default=-1) + 1
        self.entries = known
        self._children = None

    @property
    def children(self) -> dict[str | None, list[str]]:
        """Parent id (None: the roots) -> ids of its children, oldest first."""
        if self._children is None:
            children: dict[str | None, list[str]] = {}
            last_seq = -1
            in_order = True
            for entry in self.entries.values():
                siblings = children.get(entry.parent_id)
                if siblings is None:
                    children[entry.parent_id] = [entry.id]
                else:
                    siblings.append(entry.id)
                if entry.seq > last_seq:
                    last_seq = entry.seq
                else:
                    in_order = False
            if not in_order:
                # A rebuilt or hand-edited snapshot may list entries out of order.
                entries = self.entries
                for siblings in children.values():
                    siblings.sort(key=lambda mid: entries[mid].seq)
            self._children = children
        return self._children

    def _apply(self, entry: IndexEntry) -> None:
        known = entry.id in self.entries
        self.entries[entry.id] = entry
        if entry.status is MessageStatus.STREAMING:
            self.streaming_ids.add(entry.id)
        else:
            self.streaming_ids.discard(entry.id)
        if not known:
            if self._children is not None:
                self._children.setdefault(entry.parent_id, []).append(entry.id)
            if entry.seq >= self.next_seq:
                self.next_seq = entry.seq + 1

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
        self._apply(entry)
        self._apply_record(record)
        self.heads_version += 1

    def append_head(self, branch: str, head: str | None, *, at: str) -> None:
        """Move ``branch`` to ``head`` with one durable journal line."""
        line = encode_head_line(n=self.next_n, at=at, branch=branch, head=head)
        record = JournalLine(None, self.next_n, at, branch, head, None, 0)
        self._write_line(line, True)
        self._apply_record(record)
        self.heads_version += 1

    def _write_line(self, line: bytes, durable: bool) -> None:
        try:
            fd = self._open_journal_for_writing()
            try:
                if os.fstat(fd).st_size > self._offset:
                    # A writer died mid-line. Cut the fragment so our line starts cleanly.
                    os.ftruncate(fd, self._offset)
                try:
                    write_all(fd, line)
                    if durable:
                        self.fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, self._offset)
                    raise
            finally:
                os.close(fd)
        except OSError as exc:
            raise translate(exc, self.journal_path, "append to") from exc
        self._offset += len(line)
        self.journal_lines += 1

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
        try:
            fd = self._open_journal_for_writing()
            try:
                os.ftruncate(fd, mark)
                self.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise translate(exc, self.journal_path, "truncate") from exc
        self._full_reload()

    def _open_journal_for_writing(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0) | _NO_FOLLOW
        fd = os.open(self.journal_path, flags)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._journal_inode:
            os.close(fd)
            raise RuntimeError("journal changed under the lock; refresh() was not called")
        return fd

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
        ordered = sorted(self.entries.values(), key=lambda entry: entry.seq)
        self._write_snapshot(ordered)

    def rebuild(self, reason: str, path: Path) -> None:
        """Recreate the snapshot from the message files, warning about what was lost.

        Message files that cannot be read are skipped, each with a StoreWarning. Messages
        are numbered by creation time, then id.
        """
        messages_dir = self.ctx_dir / MESSAGES_DIR
        messages_dir.mkdir(exist_ok=True)
        found = []
        skipped: list[tuple[str, Path]] = []
        for name in sorted(os.listdir(messages_dir)):
            file = messages_dir / name
            if is_temp_name(name):
                # Left by a writer that was killed before its rename: never committed.
                file.unlink(missing_ok=True)
                continue
            if not name.endswith(".json"):
                continue  # not ours (e.g. .DS_Store)
            try:
                message_id = validate_message_id(name[: -len(".json")])
                found.append(read_message_file(file, message_id))
            except (CorruptDataError, ValueError) as exc:
                skipped.append((str(exc), file))
        found.sort(key=lambda message: (message.created_at, message.id))
        entries = [IndexEntry.of(message, seq) for seq, message in enumerate(found)]
        self._write_snapshot(entries)
        self._load(entries)
        warn(
            f"the message index of context {self.ctx_dir.name!r} was rebuilt from "
            f"{len(entries)} message files because {reason}",
            path,
        )
        for problem, file in skipped:
            warn(f"skipped an unreadable message file while rebuilding the index: {problem}", file)

    def _write_snapshot(self, ordered: list[IndexEntry]) -> None:
        snapshot = _snapshot_bytes(ordered, self.next_n)
        atomic_write(self.index_path, snapshot, fsync=self.fsync)
        # Only now start a new journal: until this replace, the old journal's lines are
        # in both files, which is harmless because replay is idempotent.
        atomic_write(self.journal_path, b"", fsync=self.fsync)
        self._close_files()
        index_fd = os.open(self.index_path, _READ_FLAGS)
        journal_fd = os.open(self.journal_path, _READ_FLAGS)
        self._index_id = _identity(os.fstat(index_fd))
        st_journal = os.fstat(journal_fd)
        self._journal_inode = (st_journal.st_dev, st_journal.st_ino)
        self._index_fd, self._journal_fd = index_fd, journal_fd
        if not _KEEP_OPEN:  # pragma: no cover - Windows
            self._close_files()
        self.snapshot_count = len(ordered)
        self.snapshot_size = len(snapshot)
        self.journal_lines = 0
        self._offset = 0
        # Folded into metadata.json and message files before the snapshot was written.
        self.heads, self.last_at, self.content = {}, None, {}
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
        try:
            fd = open_regular(self.journal_path, check_folder=False)  # never a FIFO's wait
        except (OSError, CorruptDataError, StoreError):
            return []
        try:
            data = read_from(fd, 0)
        except OSError:
            return []
        finally:
            os.close(fd)
        found: list[JournalLine] = []
        position = 0
        for line in data.split(b"\n")[:-1]:
            try:
                parsed, _end = self._parse_lines(line + b"\n", position)
            except RebuildNeeded:
                parsed = []
            found += parsed
            position += len(line) + 1
        self.heads, self.last_at, self.content = {}, None, {}
        for record in found:
            self._apply_record(record)
        self.heads_version += 1
        # Kept open for read_content until the rebuild replaces the journal.
        self._close_files()
        with contextlib.suppress(OSError):
            self._journal_fd = os.open(self.journal_path, _READ_FLAGS)
        return found

    def _close_files(self) -> None:
        for fd in (self._index_fd, self._journal_fd):
            if fd >= 0:
                os.close(fd)
        self._index_fd = self._journal_fd = -1

    def close(self) -> None:
        """Close the files held open and forget everything (the next refresh reloads)."""
        self._close_files()
        self.loaded = False
        self._index_id = None
        self._journal_inode = None


def _sniff_version(data: bytes) -> object:
    try:
        raw = _json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return raw.get("schema_version") if isinstance(raw, dict) else None
