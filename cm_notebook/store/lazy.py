"""Reading large index files lazily: only the lines an operation needs are parsed.

Opening a context of 10,000 messages to show its last 50 must not cost 200 times what
opening one of 50 does, yet validating every entry of ``message_index.json`` and every
line of the journal is O(all messages). Both files are written by the store in one
layout (see :mod:`.snapshot` and :mod:`.journal`) in which every line that describes a
message starts with ``{"id":"<id>"``, and compact JSON escapes newlines inside strings.
So ``\\n{"id":"<id>"`` occurs only where that message's line starts, and finding it is
one byte search (C speed, no parsing); walking parent links from a branch head finds
each parent a little way before its child.

:class:`LazyFiles` keeps the bytes of both files and parses a line only when its entry
is asked for, validated exactly like a fully parsed file (a hostile id is refused
before it ever becomes a path). What an open needs beyond the entries it reads is also
found by search: the journal's last line (line number and time), each branch's last
head move, the lines that say ``streaming``. The price: damage in a line is found when
the line is first needed, not at open, and lines in another layout (hand-written JSON)
are only seen by :meth:`LazyFiles.parse_all`, which :class:`~.index.MessageIndex` runs
whenever something needs every entry (the tree, ``FileStore.index()``, compaction).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..model import MessageStatus
from .base import IndexEntry
from .journal import JournalLine
from .oserrors import translate
from .snapshot import (
    LineParser,
    RebuildNeeded,
    check_line_numbers,
    entry_line_parser,
    journal_line_parser,
    parse_journal,
    parse_snapshot,
    snapshot_layout,
)

__all__ = [
    "LAZY_MAX_LOOKUPS",
    "LAZY_MIN_BYTES",
    "LazyEntries",
    "LazyFiles",
    "Region",
    "reread_from",
    "snapshot_region",
]

#: Index files at least this large together are read lazily: opening a context then
#: parses only the lines it needs, not every entry.
LAZY_MIN_BYTES = 1 << 15
#: A lazily read index parses everything once this many entries were looked up: a walk
#: over a whole long branch is faster that way.
LAZY_MAX_LOOKUPS = 512

_ID_KEY = b'\n{"id":"'
# Every id, and the seq of every entry line (snapshot and journal alike). Each pattern
# starts with the newline before a line, which lets the regular expression engine skip
# ahead to candidates; the journal's first line is matched on its own.
_ID_AT = rb'\{"id":"([^"\n]*)"'
_SEQ_AT = rb'\{"id":"[^"\n]*","parent_id":(?:null|"[^"\n]*"),"role":"[a-z_]+","seq":(\d{1,18}),'
_IDS = (re.compile(b"\n" + _ID_AT), re.compile(_ID_AT))
_SEQS = (re.compile(b"\n" + _SEQ_AT), re.compile(_SEQ_AT))
_STREAMING = b'"status":"streaming"'
#: After this many searches for ids a region does not hold, it collects all its ids once
#: (one regular expression over the file), so that repeated misses stay cheap.
_MISSES_BEFORE_ID_SET = 2


class Region:
    """Complete lines of one index file, found by id and parsed only when asked for.

    ``data[first:last]`` holds whole lines, each ending with a newline; ``data`` is the
    file as read (never copied: a large context's files stay in memory once). ``latest``:
    several lines may describe one id and the last one counts (the journal); otherwise
    ids are unique (the snapshot, whose lines end with a comma but the last). ``parse``
    validates a line (see the module docstring).
    """

    def __init__(
        self, data: bytes, first: int, last: int, *, latest: bool, parse: LineParser
    ) -> None:
        self._data: bytes | None = data
        self._reread: Callable[[], bytes] | None = None
        self.first = first
        self.last = last
        self.latest = latest
        self.parse = parse
        self._hint = last
        self._misses = 0
        self._ids: set[bytes] | None = None
        self._found: dict[str, JournalLine | None] = {}
        #: Ids found whose last line is an update's marker -> its digest (see
        #: :mod:`.pending`); :meth:`find` returns the line before such markers.
        self.markers: dict[str, str] = {}

    @property
    def data(self) -> bytes:
        """The file's bytes (read again if :meth:`release` let them go)."""
        if self._data is None:
            assert self._reread is not None
            self._data = self._reread()
        return self._data

    def release(self, reread: Callable[[], bytes]) -> None:
        """Let the bytes go until a line is needed again; ``reread`` reads the same file
        again (the store never changes a snapshot in place: it replaces it)."""
        self._data, self._reread = None, reread

    def _line(self, start: int) -> JournalLine:
        """The parsed line that starts at ``start``."""
        end = self.data.find(b"\n", start, self.last)
        line = self.data[start:end]
        if not self.latest and line.endswith(b","):
            line = line[:-1]
        return self.parse(line, start)

    def line_before_last(self) -> JournalLine | None:
        """The line before the last, parsed (None: fewer than two lines)."""
        if self.last <= self.first:
            return None
        start = self._start_of(self.last - 1)
        return None if start <= self.first else self._line(self._start_of(start - 1))

    def _start_of(self, at: int) -> int:
        """Where the line holding ``data[at]`` starts."""
        return self.data.rfind(b"\n", self.first, at) + 1 or self.first

    def find(self, message_id: str) -> JournalLine | None:
        """The line of ``message_id`` (the last one if ``latest``, an update's marker
        aside: see :attr:`markers`), or None."""
        if message_id in self._found:
            return self._found[message_id]
        line = self._search(message_id)
        self._found[message_id] = line
        return line

    def _search(self, message_id: str) -> JournalLine | None:
        key = message_id.encode("utf-8", "replace")
        if self._ids is not None and key not in self._ids:
            return None
        needle = _ID_KEY + key + b'"'
        if self.latest:
            start = self._last_start(needle, self.last)
            line = self._line(start) if start >= 0 else None
            while line is not None and line.pending is not None and _of(line, message_id):
                # An update's marker restates the committed entry, which the line before
                # it holds with the message's copy (see .pending).
                self.markers.setdefault(message_id, line.pending)
                start = self._last_start(needle, start)
                line = self._line(start) if start >= 0 else None
        else:
            start = self._next_start(needle)
            line = self._line(start) if start >= 0 else None
        if line is None:
            self._misses += 1
            if self._misses >= _MISSES_BEFORE_ID_SET and self._ids is None:
                self._ids = set(self._find_all(_IDS))
            return None
        self._hint = start
        if not _of(line, message_id):
            return None  # a look-alike needle (an id with a quote, say): no such line
        return line

    def _last_start(self, needle: bytes, end: int) -> int:
        """Where the last line before ``end`` that starts with ``needle[1:]`` starts, or
        -1. The newline before the first line is the snapshot's header's (data[first -
        1]); the journal's first line starts the file and is checked on its own."""
        data, first = self.data, self.first
        at = data.rfind(needle, max(first - 1, 0), end)
        if at >= 0:
            return at + 1
        return 0 if first == 0 and end > 0 and data.startswith(needle[1:]) else -1

    def _next_start(self, needle: bytes) -> int:
        """Like :meth:`_last_start` over the region, but looking near the last line
        found first: pages and walks follow parent links, which point a little way back."""
        data, first, last = self.data, self.first, self.last
        at = data.rfind(needle, max(first - 1, 0), self._hint + len(needle))
        if at < 0:
            at = data.find(needle, self._hint, last)
        if at >= 0:
            return at + 1
        return 0 if first == 0 and last > 0 and data.startswith(needle[1:]) else -1

    def streaming(self) -> list[JournalLine]:
        """The lines whose entry says ``streaming`` (in the index part of the line)."""
        found = []
        data = self.data
        at = data.find(_STREAMING, self.first, self.last)
        while at >= 0:
            start = self._start_of(at)
            if data.find(b"\t", start, at) < 0:  # not inside a message carried by the line
                line = self._line(start)
                if line.entry is not None:
                    found.append(line)
            at = data.find(_STREAMING, at + 1, self.last)
        return found

    def branch_line(self, branch: str) -> JournalLine | None:
        """The last line that moves ``branch`` (journal lines only)."""
        name = json.dumps(branch, ensure_ascii=False, separators=(",", ":"))
        needle = b'"branch":' + name.encode("utf-8")
        data = self.data
        end = self.last
        while True:
            at = data.rfind(needle, self.first, end)
            if at < 0:
                return None
            start = self._start_of(at)
            if data.find(b"\t", start, at) < 0:
                line = self._line(start)
                if line.branch == branch:
                    return line
            end = at

    def last_line(self) -> JournalLine | None:
        """The last line, parsed (None: no lines)."""
        return self._line(self._start_of(self.last - 1)) if self.last > self.first else None

    def max_seq(self) -> int:
        """The largest ``seq`` of the lines (-1 if none)."""
        if not self.latest:
            last = self.last_line()  # the snapshot is written in seq order
            return -1 if last is None or last.entry is None else last.entry.seq
        return max(map(int, self._find_all(_SEQS)), default=-1)

    def _find_all(self, patterns: tuple[re.Pattern[bytes], re.Pattern[bytes]]) -> list[bytes]:
        """What the pattern's group matches on every line (see ``_IDS``)."""
        data, first, last = self.data, self.first, self.last
        found = patterns[0].findall(data, max(first - 1, 0), last)
        if first == 0 and (match := patterns[1].match(data, 0, last)) is not None:
            found.append(match.group(1))
        return found

    def count_lines(self) -> int:
        """How many lines the region holds."""
        return self.data.count(b"\n", self.first, self.last)


def reread_from(fd: int, size: int, path: Path) -> bytes:
    """The ``size`` bytes of a snapshot read before (see :meth:`Region.release`), again
    from its file, still open: the store replaces snapshots, never changes one in place."""
    try:
        data = os.pread(fd, size + 1, 0)
    except OSError as exc:
        raise translate(exc, path, "read") from exc
    if len(data) != size:  # changed in place (by hand)
        raise RebuildNeeded(f"{path.name} was changed in place", path)
    return data


def snapshot_region(data: bytes, path: Path) -> tuple[Region, int] | None:
    """The entry lines of a snapshot in the store's layout, and its ``next_n``; None for
    any other layout (see :func:`~cm_notebook.store.snapshot.snapshot_layout`)."""
    layout = snapshot_layout(data, path)
    if layout is None:
        return None
    next_n, first, last = layout
    return Region(data, first, last, latest=False, parse=entry_line_parser(path)), next_n


@dataclass
class LazyFiles:
    """A snapshot and a journal read lazily (see the module docstring)."""

    snapshot: Region
    journal: Region
    next_n: int  # from the snapshot's header and the journal's last line
    tail: JournalLine | None  # the journal's last line
    #: Lines applied since the files were read (later lines, own appends), in order:
    #: :meth:`parse_all` returns them after the files' own.
    replay: list[JournalLine] = field(default_factory=list)
    absent: set[str] = field(default_factory=set)  # ids neither file holds
    heads: dict[str, tuple[int, str | None] | None] = field(default_factory=dict)
    lookups: int = 0

    @classmethod
    def read(
        cls, snapshot: Region, next_n: int, journal: bytes, journal_path: Path
    ) -> LazyFiles | None:
        """Lazy files: ``snapshot`` (see :func:`snapshot_region`, with its ``next_n``)
        and the journal's bytes. None if the journal has lines without numbers (format
        2): then parse both whole. Raises RebuildNeeded if the last line is damaged."""
        end = journal.rfind(b"\n") + 1
        lines = Region(journal, 0, end, latest=True, parse=journal_line_parser(journal_path))
        files = cls(snapshot, lines, next_n, lines.last_line())
        if files.tail is not None:
            if files.tail.n < 0 or files.tail.at is None:
                return None
            # A copy of an earlier line appended at the end would move heads back (the
            # lines in between are checked when everything is parsed: parse_all).
            before = lines.line_before_last()
            if before is not None:
                check_line_numbers([before, files.tail], -1, journal_path)
            files.next_n = max(next_n, files.tail.n + 1)
        return files

    @property
    def end(self) -> int:
        """How many bytes of the journal file the lines span."""
        return self.journal.last

    def find(self, message_id: str) -> IndexEntry | None:
        """The entry of ``message_id`` as the files say (the journal's last line first)."""
        if message_id in self.absent:
            return None
        self.lookups += 1
        line = self.journal.find(message_id) or self.snapshot.find(message_id)
        if line is None or line.entry is None:
            self.absent.add(message_id)
            return None
        return line.entry

    def streaming_ids(self, said: list[JournalLine]) -> set[str]:
        """Ids whose entries say ``streaming``: of the snapshot lines ``said`` that do,
        and the journal's. The latest line of each message decides."""
        lines = [*said, *self.journal.streaming()]
        found = [self.find(line.entry.id) for line in lines if line.entry is not None]
        return {entry.id for entry in found if entry and entry.status is MessageStatus.STREAMING}

    def head_move(self, branch: str) -> tuple[int, str | None] | None:
        """The journal's last head move of ``branch``: (line number, head), or None."""
        if branch not in self.heads:
            line = self.journal.branch_line(branch)
            self.heads[branch] = None if line is None else (line.n, line.head)
        return self.heads[branch]

    def copy_of(self, message_id: str) -> tuple[int, int, int] | None:
        """Where the journal's last line of ``message_id`` holds the message, if it does."""
        line = self.journal.find(message_id)
        if line is None or line.content is None:
            return None
        return (*line.content, line.size)

    def pending_of(self, message_id: str) -> str | None:
        """The digest of the journal's last line of ``message_id`` if that line is an
        update's marker (see :mod:`.pending`)."""
        self.journal.find(message_id)
        return self.journal.markers.get(message_id)

    def next_seq(self) -> int:
        """Above every ``seq`` in the files."""
        return max(self.snapshot.max_seq(), self.journal.max_seq()) + 1

    def parse_all(
        self, index_path: Path, journal_path: Path
    ) -> tuple[list[IndexEntry], list[JournalLine]]:
        """Every entry of the snapshot, and every journal line then those of ``replay``."""
        entries = parse_snapshot(self.snapshot.data, index_path)[0]
        data = self.journal.data[: self.journal.last]
        lines = parse_journal(data, 0, journal_path, after=-1)[0]
        return entries, [*lines, *self.replay]


def _of(line: JournalLine, message_id: str) -> bool:
    # Whether ``line`` describes ``message_id`` (a needle can match a look-alike id).
    return line.entry is not None and line.entry.id == message_id


class LazyEntries(Mapping[str, IndexEntry]):
    """Message id -> entry, looking entries up one by one (``lookup``) until it is
    iterated, which first parses everything (``materialize``)."""

    def __init__(
        self,
        lookup: Callable[[str], IndexEntry | None],
        materialize: Callable[[], Mapping[str, IndexEntry]],
    ) -> None:
        self._lookup = lookup
        self._materialize = materialize

    def __getitem__(self, message_id: str) -> IndexEntry:
        entry = self._lookup(message_id)
        if entry is None:
            raise KeyError(message_id)
        return entry

    def __contains__(self, message_id: object) -> bool:
        return isinstance(message_id, str) and self._lookup(message_id) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._materialize())

    def __len__(self) -> int:
        return len(self._materialize())
