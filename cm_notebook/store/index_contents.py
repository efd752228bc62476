"""What one context's message index holds in memory: entries, head moves, durable copies.

:class:`IndexContents` is what applying the index files' entries and journal lines
gives; :class:`~.index.MessageIndex` adds the files themselves (reading, appending,
compacting) and keeps the contents in step with them. Applying a line again is
harmless: later lines win, as on replay.

Large files are read lazily (see :mod:`.lazy`): the contents then start from a
:class:`~.lazy.LazyFiles` and hold only what was asked for or applied since. A lookup
parses the line of the entry asked for; anything that needs every entry (iterating
:attr:`~IndexContents.entries`, the children map, every head move or durable copy)
parses everything once. A damaged line found that late raises :class:`RebuildNeeded`
there, and is remembered so that every later refresh says so until the rebuild.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from ..model import MessageStatus
from .base import IndexEntry, children_map
from .journal import JournalLine, counted_lines
from .lazy import LAZY_MAX_LOOKUPS, LazyEntries, LazyFiles
from .snapshot import RebuildNeeded

__all__ = ["IndexContents"]

T = TypeVar("T")


class IndexContents:
    """The entries, head moves and durable copies of one context's index (see the
    module docstring). Not thread-safe: the owner serialises calls.

    ``index_path`` and ``journal_path`` are the files a lazy reader parses whole when
    every entry is needed.
    """

    def __init__(self, index_path: Path, journal_path: Path) -> None:
        self.index_path = index_path
        self.journal_path = journal_path
        # Every entry; while lazy, those found or applied so far.
        self._entries: dict[str, IndexEntry] = {}
        self._lazy: LazyFiles | None = None
        self._damage: RebuildNeeded | None = None
        self._children: dict[str | None, list[str]] | None = {}
        self.streaming_ids: set[str] = set()  # status "streaming", kept for O(1) checks
        self._seq_floor = 0  # above every seq applied or parsed
        self._lazy_next_seq: int | None = None  # above every seq of the lazy files
        self._snapshot_count: int | None = 0  # entries in message_index.json
        self._lines_read: int | None = 0  # complete journal lines when it was read
        self._lines_after = 0  # ... and appended or read since
        #: Head moves in the journal: branch -> (line number, head); while lazy, only
        #: those since the files were read (see :meth:`head_move`).
        self._heads: dict[str, tuple[int, str | None]] = {}
        #: The number and time of the last journal line that carried one.
        self.last_at: tuple[int, str] | None = None
        #: Changes whenever a head move or ``last_at`` may have changed.
        self.heads_version = 0
        self.generation = 0  # up when entries are replaced (load, rebuild); else they grow
        #: The number the next journal line gets.
        self.next_n = 0
        #: Messages whose durable content is in the journal: id -> (offset, length,
        #: size); while lazy, only those since the files were read (see :meth:`copy_of`).
        self._content: dict[str, tuple[int, int, int]] = {}
        #: Messages whose last journal line is an update's marker: id -> the digest of
        #: the file it was writing (see :mod:`.pending`); None where a later line applied
        #: overrides a marker the lazily read files hold (see :meth:`pending_update`).
        self._pending: dict[str, str | None] = {}

    # -- what the index holds --------------------------------------------------------

    @property
    def entries(self) -> Mapping[str, IndexEntry]:
        """Message id -> entry (see the module docstring for lazily read files)."""
        return self._entries if self._lazy is None else LazyEntries(self.lookup, self.materialize)

    def lookup(self, message_id: str) -> IndexEntry | None:
        """The entry of ``message_id``, or None; while lazy, parses only its line."""
        entry = self._entries.get(message_id)
        lazy = self._lazy
        if entry is not None or lazy is None:
            return entry
        if lazy.lookups >= LAZY_MAX_LOOKUPS:
            return self.materialize().get(message_id)
        entry = self._lazy_read(lambda: lazy.find(message_id))
        if entry is not None:
            self._entries[message_id] = entry
        return entry

    def _lazy_read(self, read: Callable[[], T]) -> T:
        try:
            return read()
        except RebuildNeeded as need:
            self._damage = need  # until the rebuild, every refresh says so
            raise

    def materialize(self) -> dict[str, IndexEntry]:
        """Parse whatever is still unread (a no-op unless lazy); return every entry."""
        lazy = self._lazy
        if lazy is None:
            return self._entries
        if self._damage is not None:
            raise self._damage
        parsed, lines = self._lazy_read(lambda: lazy.parse_all(self.index_path, self.journal_path))
        self._snapshot_count = len(parsed)
        self._lines_read = counted_lines(lines[: len(lines) - len(lazy.replay)])
        self._load([*parsed, *(line.entry for line in lines if line.entry is not None)])
        self._heads, self._content, self._pending, self.last_at = {}, {}, {}, None
        for line in lines:
            self._apply_record(line)  # next_n only grows: the owner may have raised it
        return self._entries

    @property
    def children(self) -> dict[str | None, list[str]]:
        """Parent id (None: the roots) -> ids of its children, oldest first."""
        if self._children is None:
            self._children = children_map(self.materialize())
        return self._children

    @property
    def heads(self) -> dict[str, tuple[int, str | None]]:
        """Every head move in the journal: branch -> (line number, head)."""
        self.materialize()
        return self._heads

    @property
    def loaded_heads(self) -> dict[str, tuple[int, str | None]] | None:
        """Every head move in the journal if it is loaded, None if it is read lazily."""
        return self._heads if self._lazy is None else None

    def head_move(self, branch: str) -> tuple[int, str | None] | None:
        """The last head move of ``branch`` in the journal: (line number, head), or None."""
        move = self._heads.get(branch)
        lazy = self._lazy
        if move is not None or lazy is None:
            return move
        return self._lazy_read(lambda: lazy.head_move(branch))

    @property
    def content(self) -> dict[str, tuple[int, int, int]]:
        """Every message whose durable copy is in the journal: id -> (offset, length, size)."""
        self.materialize()
        return self._content

    def copy_of(self, message_id: str) -> tuple[int, int, int] | None:
        """Where the journal holds ``message_id``'s durable copy (offset, length, size)."""
        copy = self._content.get(message_id)
        lazy = self._lazy
        if copy is not None or lazy is None:
            return copy
        return self._lazy_read(lambda: lazy.copy_of(message_id))

    def pending_update(self, message_id: str) -> str | None:
        """The digest of the file an update of ``message_id`` was writing, if the
        journal's last line for it is that update's marker (see :mod:`.pending`)."""
        if message_id in self._pending:
            return self._pending[message_id]
        lazy = self._lazy
        if lazy is None:
            return None
        return self._lazy_read(lambda: lazy.pending_of(message_id))

    @property
    def next_seq(self) -> int:
        """The ``seq`` of the next new entry."""
        lazy = self._lazy
        if lazy is not None and self._lazy_next_seq is None:
            self._lazy_next_seq = lazy.next_seq()
        return max(self._seq_floor, self._lazy_next_seq or 0)

    @property
    def snapshot_count(self) -> int:
        """How many entries message_index.json holds."""
        if self._snapshot_count is None:
            self._snapshot_count = self._lazy.snapshot.count_lines() if self._lazy else 0
        return self._snapshot_count

    @property
    def journal_lines(self) -> int:
        """How many complete lines the journal holds, not counting updates' markers
        (see :mod:`.pending`; a journal read lazily counts those it held when read)."""
        if self._lines_read is None:
            self._lines_read = self._lazy.journal.count_lines() if self._lazy else 0
        return self._lines_read + self._lines_after

    # -- applying what the files say -------------------------------------------------

    def _read_lazily(self, lazy: LazyFiles, streaming: set[str]) -> None:
        """Start over from lazily read files (``streaming``: ids whose entries say so)."""
        self._entries, self._lazy, self._damage, self._children = {}, lazy, None, None
        self.generation += 1
        self._heads, self._content, self._pending, self._seq_floor = {}, {}, {}, 0
        self._lazy_next_seq = self._snapshot_count = self._lines_read = None
        self.next_n, self.last_at = lazy.next_n, None
        if lazy.tail is not None:
            self._apply_record(lazy.tail)
        self.streaming_ids = streaming

    def _take(self, line: JournalLine) -> None:
        """Apply a line read after the files, or just appended."""
        if line.entry is not None:
            self._apply(line.entry)
        self._apply_record(line)
        if self._lazy is not None:
            self._lazy.replay.append(line)

    def _apply_record(self, line: JournalLine) -> None:
        """Note what a line says beyond its entry: head move, time, durable content, an
        update under way (a marker)."""
        if line.n >= 0:
            if line.n >= self.next_n:
                self.next_n = line.n + 1
            if line.branch is not None:
                self._heads[line.branch] = (line.n, line.head)
            if line.at is not None:
                self.last_at = (line.n, line.at)
        if line.entry is None:
            return
        message_id = line.entry.id
        if line.content is not None:
            offset, length = line.content
            self._content[message_id] = (offset, length, line.size)
        if line.pending is not None:
            self._pending[message_id] = line.pending
        elif self._lazy is not None:
            self._pending[message_id] = None  # overrides a marker in the files read
        elif self._pending:
            self._pending.pop(message_id, None)

    def _load(self, entries: list[IndexEntry]) -> None:
        """Replace the in-memory index with ``entries`` (later lines win, as on replay)."""
        # Builtin passes only: this runs over every entry when a context opens. The
        # parent -> children map is built when first asked for (see ``children``).
        known = {entry.id: entry for entry in entries}
        streaming_status = MessageStatus.STREAMING
        self.streaming_ids = {
            mid for mid, entry in known.items() if entry.status is streaming_status
        }
        self._seq_floor = max((entry.seq for entry in known.values()), default=-1) + 1
        self._lazy_next_seq = None
        self._entries = known
        self.generation += 1
        self._lazy = None
        self._damage = None
        self._children = None

    def _apply(self, entry: IndexEntry) -> None:
        known = entry.id in self._entries
        self._entries[entry.id] = entry
        if self._lazy is not None:
            self._lazy.absent.discard(entry.id)
        if entry.status is MessageStatus.STREAMING:
            self.streaming_ids.add(entry.id)
        else:
            self.streaming_ids.discard(entry.id)
        if entry.seq >= self._seq_floor:
            self._seq_floor = entry.seq + 1
        if not known and self._children is not None:
            self._children.setdefault(entry.parent_id, []).append(entry.id)
