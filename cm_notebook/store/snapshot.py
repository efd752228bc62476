"""The bytes of ``message_index.json``, and parsing the index files: whole, or one line.

The snapshot is written by :func:`snapshot_bytes` in one fixed layout: a header line,
then one :class:`~cm_notebook.store.base.IndexEntry` per line as compact JSON that
starts with its ``id``, then ``]}``. :func:`snapshot_layout` recognises that layout from
the header and the end alone, which lets :mod:`.lazy` read the lines between on demand.

Every parser here validates what it returns the same way, whether it parses a whole file
or one line: pydantic, and ids held to :func:`~cm_notebook.ids.validate_message_id`
(ids become file names). Damage raises :class:`RebuildNeeded` naming the file; data
from a newer cm_notebook raises :class:`~cm_notebook.errors.SchemaVersionError`.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import BaseModel, ValidationError

from .. import _json
from ..errors import CorruptDataError, InvalidIdError, StoreError
from ..model import SCHEMA_VERSION
from .atomic import read_from
from .base import IndexEntry
from .journal import JournalLine, LineError, check_ids, parse_lines
from .oserrors import describe_kind, open_regular
from .schema import INDEX_FORMAT_SINCE, check_not_newer

__all__ = [
    "LineParser",
    "RebuildNeeded",
    "check_line_numbers",
    "empty_index_bytes",
    "entry_line_parser",
    "file_identity",
    "journal_line_parser",
    "open_index_file",
    "parse_journal",
    "parse_snapshot",
    "salvage_journal",
    "snapshot_bytes",
    "snapshot_layout",
]


class RebuildNeeded(Exception):
    """The snapshot or journal is missing or damaged; rebuild from ``messages/``."""

    def __init__(self, reason: str, path: Path) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path


class _IndexDoc(BaseModel):
    schema_version: int
    entries: list[IndexEntry]
    next_n: int = 0  # the number of the next journal line (0 in format 2)


#: Parses one line (without its newline) found at a file offset; raises RebuildNeeded.
LineParser = Callable[[bytes, int], JournalLine]

_HEADER = '{{"schema_version": {version}, "next_n": {next_n}, "entries": ['
_HEADER_RE = re.compile(rb'\{"schema_version": (\d{1,9}), "next_n": (\d{1,18}), "entries": \[')
_EMPTY_TAIL = b"]}\n"
_TAIL = b"\n]}\n"


def open_index_file(path: Path) -> int:
    """Open an index file for reading (RebuildNeeded if it is missing or not a file)."""
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


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one version of a file from another: device, inode, size, mtime."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def snapshot_bytes(entries: list[IndexEntry], next_n: int) -> bytes:
    """The snapshot holding ``entries`` (in ``seq`` order) in the layout described above."""
    body = ",\n".join(entry.model_dump_json() for entry in entries)
    start = _HEADER.format(version=SCHEMA_VERSION, next_n=next_n)
    return f"{start}\n{body}\n]}}\n".encode() if entries else f"{start}]}}\n".encode()


def empty_index_bytes() -> bytes:
    """The snapshot of a context without messages."""
    return snapshot_bytes([], 0)


def snapshot_layout(data: bytes, path: Path) -> tuple[int, int, int] | None:
    """``next_n`` and where the entry lines are (from ``first`` up to ``last``, see
    :class:`~cm_notebook.store.lazy.Region`) of a snapshot in :func:`snapshot_bytes`'s
    layout; None for any other layout or an older format (:func:`parse_snapshot` says
    what is wrong with it). Only the header and the end are read.
    """
    header = _HEADER_RE.match(data)
    if header is None:
        return None
    first = header.end()
    version, next_n = int(header.group(1)), int(header.group(2))
    check_not_newer(version, path)
    if version < INDEX_FORMAT_SINCE:
        return None
    if len(data) == first + len(_EMPTY_TAIL) and data.endswith(_EMPTY_TAIL):
        return next_n, first, first
    if data.startswith(b"\n", first) and data.endswith(_TAIL) and len(data) > first + len(_TAIL):
        return next_n, first + 1, len(data) - len(_TAIL) + 1
    return None


def parse_snapshot(data: bytes, path: Path) -> tuple[list[IndexEntry], int]:
    """Every entry of a snapshot, and its ``next_n``."""
    try:
        doc = _IndexDoc.model_validate_json(data)
    except ValidationError:
        version = _sniff_version(data)
        if isinstance(version, int):
            check_not_newer(version, path)
        raise RebuildNeeded(f"{path.name} is damaged", path) from None
    check_not_newer(doc.schema_version, path)
    if doc.schema_version < INDEX_FORMAT_SINCE:
        # Derived data from an older version: rebuilding it is the upgrade.
        raise RebuildNeeded(f"{path.name} is from an older version", path)
    try:
        check_ids(doc.entries)
    except InvalidIdError:
        raise RebuildNeeded(f"{path.name} has an invalid id", path) from None
    return doc.entries, doc.next_n


def _sniff_version(data: bytes) -> object:
    try:
        raw = _json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return raw.get("schema_version") if isinstance(raw, dict) else None


def parse_journal(
    data: bytes, start: int, path: Path, *, after: int | None = None
) -> tuple[list[JournalLine], int]:
    """The complete lines of journal bytes read from offset ``start``, and how many bytes
    they span.

    A last line without its newline is left out: a writer is still writing it, or died
    doing so (then the next writer truncates it). With ``after`` (the number of the
    line before them, -1 for none) the lines' numbers are checked too (see
    :func:`check_line_numbers`).
    """
    try:
        lines, end = parse_lines(data, start)
        check_ids([line.entry for line in lines if line.entry is not None])
    except (LineError, InvalidIdError) as exc:
        raise RebuildNeeded(
            f"{path.name} has {exc}"
            if isinstance(exc, LineError)
            else f"{path.name} has a damaged line after byte {start}",
            path,
        ) from None
    if after is not None:
        check_line_numbers(lines, after, path)
    return lines, end


def check_line_numbers(lines: Sequence[JournalLine], after: int, path: Path) -> None:
    """Raise RebuildNeeded unless each numbered line comes after the one before it.

    A journal only grows, each line numbered after the last (format 2 lines have no
    number). A line numbered at or below an earlier one is a copy of an older line
    (a sync tool, a botched merge): replayed, it would move a branch head back.
    """
    last = after
    for line in lines:
        if line.n < 0:
            continue
        if line.n <= last:
            raise RebuildNeeded(
                f"{path.name} has line {line.n} after line {last}, and a journal's line "
                "numbers only go up (a copy of an earlier line?)",
                path,
            )
        last = line.n


def journal_line_parser(path: Path) -> LineParser:
    """A parser of single journal lines (see :data:`LineParser`)."""

    def parse(line: bytes, offset: int) -> JournalLine:
        lines = parse_journal(line + b"\n", offset, path)[0]
        if len(lines) != 1:
            raise RebuildNeeded(f"{path.name} has a damaged line after byte {offset}", path)
        return lines[0]

    return parse


def entry_line_parser(path: Path) -> LineParser:
    """A parser of single snapshot lines (an entry; see :data:`LineParser`)."""

    def parse(line: bytes, offset: int) -> JournalLine:
        try:
            entry = IndexEntry.model_validate_json(line)
            check_ids([entry])
        except (ValueError, InvalidIdError):  # pydantic's ValidationError included
            raise RebuildNeeded(f"{path.name} has a damaged entry at byte {offset}", path) from None
        return JournalLine(entry, -1, None, None, entry.id, None, 0)

    return parse


def salvage_journal(path: Path) -> list[JournalLine]:
    """The lines of a damaged journal that still parse, one by one (before a rebuild).

    They keep what only the journal holds (head moves, durable copies of messages)
    from being lost with it. Missing or unreadable: nothing is salvaged.
    """
    try:
        fd = open_regular(path, check_folder=False)  # never a FIFO's wait
    except (OSError, CorruptDataError, StoreError):
        return []
    try:
        data = read_from(fd, 0)
    except OSError:
        return []
    finally:
        os.close(fd)
    found: list[JournalLine] = []
    position, last = 0, -1
    for line in data.split(b"\n")[:-1]:
        with contextlib.suppress(RebuildNeeded):
            parsed = parse_journal(line + b"\n", position, path)[0]
            # A copy of an earlier line (numbered at or below one before it) is dropped:
            # replayed, it would move a head back (see check_line_numbers).
            if parsed and 0 <= parsed[0].n <= last:
                parsed = []
            found += parsed
            last = max([last, *(item.n for item in parsed)])
        position += len(line) + 1
    return found


def first_journal_line(journal: bytes, path: Path) -> JournalLine | None:
    """The first complete line of journal bytes, parsed (None if there is none)."""
    end = journal.find(b"\n")
    return journal_line_parser(path)(journal[:end], 0) if end >= 0 else None


def check_journal_follows(
    next_n: int, first: JournalLine | None, snapshot_path: Path, journal_path: Path
) -> None:
    """Raise RebuildNeeded unless the journal's ``first`` line follows the snapshot.

    Compaction writes a snapshot whose ``next_n`` is the number the new journal's first
    line takes, and a journal it has not yet replaced starts before that (its lines are
    in the snapshot already, and replay idempotently). A journal that starts *after* it
    follows a newer snapshot: this one is an older copy put back (a folder restored file
    by file, a sync tool), and the lines in between, with the messages they held, are in
    no index. Lines without numbers (format 2) are not checked.
    """
    if first is not None and first.n > next_n:
        raise RebuildNeeded(
            f"{snapshot_path.name} is older than {journal_path.name}: it ends before line "
            f"{next_n}, and the journal starts at line {first.n} (an older copy was put "
            "back)",
            snapshot_path,
        )
