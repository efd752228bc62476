"""The line format of ``message_index.journal``, and its fast parser.

Each line is one JSON object, optionally followed by a tab and a second JSON text, then
``\\n``. Compact JSON escapes tabs and newlines inside strings, so neither separator can
occur inside either part. Four kinds of line:

* an entry line (format 2, still read): the fields of an
  :class:`~cm_notebook.store.base.IndexEntry` and nothing else;
* an entry line (format 3): the same fields plus ``n`` (the line's number, growing for
  the life of the context), ``at`` (when it was written: the context's
  ``updated_at``), and optionally ``branch`` (the branch whose head now is this
  message) and ``size`` with the tab-separated message itself (the exact JSON of its
  file, compacted), when this line is the commit point of that message's content;
* a head line: ``{"n": ..., "at": ..., "branch": ..., "head": <id or null>}``;
* an update's marker: an entry line that restates a finished message's committed
  entry and adds ``pending`` (the digest of the file an update is about to put in
  place), with ``n`` but no ``at``, ``branch`` or message. It commits nothing; it lets
  a repair tell an update cut short from damage (see :mod:`.pending`). Readers that do
  not know ``pending`` (older versions) see an entry line that changes nothing.

Only the part before the tab is parsed when a journal is loaded; the message part is
read back only to repair a message file that a power loss took (see
:mod:`cm_notebook.store.filestore`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_json

from ..errors import InvalidIdError
from ..ids import MAX_ID_LENGTH, validate_branch_name, validate_message_id
from .atomic import Fsync, write_all
from .base import IndexEntry
from .oserrors import translate

__all__ = [
    "JournalLine",
    "JournalWriter",
    "LineError",
    "check_ids",
    "counted_lines",
    "encode_entry_line",
    "encode_head_line",
    "encode_marker_line",
    "parse_lines",
]

_ENTRY_LIST = TypeAdapter(list[IndexEntry])
_ENTRY_KEYS = frozenset(IndexEntry.model_fields)


class LineError(ValueError):
    """A complete journal line that does not parse (damage: the index is rebuilt)."""


@dataclass(frozen=True, slots=True)
class JournalLine:
    """What one journal line says (``entry`` None: a head line)."""

    entry: IndexEntry | None
    n: int  # -1 for format 2 lines, which carry no number
    at: str | None  # ISO time of the write
    branch: str | None  # the branch whose head moved, if any
    head: str | None  # the new head (a head line; an entry line moves it to its entry)
    content: tuple[int, int] | None  # (offset, length) of the message JSON in the file
    size: int  # the message file's size in bytes (with ``content``)
    pending: str | None = None  # an update's marker: the digest of the file it writes


def encode_entry_line(
    entry: IndexEntry,
    *,
    n: int,
    at: str,
    branch: str | None,
    content: bytes | None = None,
    size: int = 0,
) -> bytes:
    """The bytes of an entry line (``content``: the compact JSON of the message)."""
    raw: dict[str, Any] = entry.model_dump(mode="json")
    raw["n"] = n
    raw["at"] = at
    if branch is not None:
        raw["branch"] = branch
    if content is None:
        return _compact(raw) + b"\n"
    raw["size"] = size
    return _compact(raw) + b"\t" + content + b"\n"


def encode_head_line(*, n: int, at: str, branch: str, head: str | None) -> bytes:
    """The bytes of a line that moves ``branch`` to ``head``."""
    return _compact({"n": n, "at": at, "branch": branch, "head": head}) + b"\n"


def encode_marker_line(entry: IndexEntry, *, n: int, digest: str) -> bytes:
    """The bytes of a marker: an update of ``entry``'s message (its committed entry) is
    about to replace the file with bytes of ``digest`` (see :mod:`.pending`)."""
    raw: dict[str, Any] = entry.model_dump(mode="json")
    raw["n"] = n
    raw["pending"] = digest
    return _compact(raw) + b"\n"


def counted_lines(lines: list[JournalLine]) -> int:
    """How many of ``lines`` count toward a compaction: all but updates' markers, so
    that an update of a finished message makes one due no sooner than before."""
    return sum(1 for line in lines if line.pending is None)


def _compact(raw: dict[str, Any]) -> bytes:
    # Compact JSON as json.dumps(raw, ensure_ascii=False, separators=(",", ":")) writes
    # it, from pydantic-core: a line is encoded on every write, and this is ~5x faster.
    return to_json(raw, inf_nan_mode="constants")


def parse_lines(data: bytes, start: int) -> tuple[list[JournalLine], int]:
    """The lines of ``data`` (read from file offset ``start``) and how many bytes they span.

    A last line without its newline is left out: a writer is still writing it, or died
    doing so (the next writer truncates it), or the journal was cut short there (the
    writer that next holds the lock tells which first: see :mod:`.torn_tail`). Raises
    :class:`LineError` for a damaged complete line.
    """
    end = data.rfind(b"\n") + 1
    if end == 0:
        return [], 0
    heads: list[dict[str, Any]] = []
    spans: list[tuple[int, int] | None] = []
    entry_dicts: list[dict[str, Any]] = []
    position = 0
    loads = json.loads
    for line in data[: end - 1].split(b"\n"):
        tab = line.find(b"\t")
        head_part = line if tab < 0 else line[:tab]
        try:
            raw = loads(head_part)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise LineError(f"a damaged line after byte {start + position}") from None
        if not isinstance(raw, dict):
            raise LineError(f"a line that is not an object after byte {start + position}")
        heads.append(raw)
        spans.append(None if tab < 0 else (start + position + tab + 1, len(line) - tab - 1))
        if "id" in raw:
            entry_dicts.append({key: raw[key] for key in _ENTRY_KEYS if key in raw})
        position += len(line) + 1
    try:
        entries = iter(_ENTRY_LIST.validate_python(entry_dicts))
        lines = [_line(raw, span, entries) for raw, span in zip(heads, spans, strict=True)]
    except (ValidationError, InvalidIdError, TypeError, ValueError):
        raise LineError(f"a damaged line after byte {start}") from None
    return lines, end


def _line(raw: dict[str, Any], span: tuple[int, int] | None, entries: Any) -> JournalLine:
    n = raw.get("n", -1)
    at = raw.get("at")
    branch = raw.get("branch")
    if not isinstance(n, int) or (at is not None and not isinstance(at, str)):
        raise ValueError("bad n or at")
    if branch is not None:
        _check_branch(branch)
    if "id" in raw:
        entry: IndexEntry = next(entries)
        size = raw.get("size", 0)
        pending = raw.get("pending")
        if not isinstance(size, int) or (pending is not None and not isinstance(pending, str)):
            raise ValueError("bad size or pending")
        if span is not None:
            pending = None  # a line that carries the message commits it: no marker
        return JournalLine(entry, n, at, branch, entry.id, span, size, pending)
    if branch is None or n < 0:
        raise ValueError("a head line without a branch or number")
    head = raw.get("head")
    if head is not None:
        validate_message_id(head)
    return JournalLine(None, n, at, branch, head, None, 0)


@functools.lru_cache(maxsize=256)
def _check_branch(name: str) -> None:
    # A journal names a few branches on many lines; the full check (Unicode scripts,
    # normal forms) is costly enough to do once per name. Refusals are not cached.
    validate_branch_name(name)


# A fast, batch pre-check of ids read from disk (one regex over all of them). It
# mirrors cm_notebook.ids; anything it flags is re-checked by the authoritative
# validate_message_id, so it can only ever be a shortcut, never a second rule book.
_PLAUSIBLE_IDS = re.compile(rf"(?:[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_ID_LENGTH - 1}}}\n)*")
_RESERVED_IDS = re.compile(r"(?im)^(?:con|prn|aux|nul|com[0-9]|lpt[0-9])$")


def check_ids(entries: list[IndexEntry]) -> None:
    """Refuse (InvalidIdError) ids from disk that would not be accepted from a caller."""
    # Ids from disk become file names, so they are held to the same rules as ids from
    # callers: a hand-edited index must not be able to steer reads outside the folder.
    ids = [entry.id for entry in entries]
    # A parent that is itself one of these entries is checked as an id already.
    known = set(ids)
    ids += [p for entry in entries if (p := entry.parent_id) is not None and p not in known]
    joined = "\n".join(ids) + "\n" if ids else ""
    if (
        joined.count("\n") == len(ids)  # no id smuggles in a separator
        and _PLAUSIBLE_IDS.fullmatch(joined)
        and ".." not in joined
        and not _RESERVED_IDS.search(joined)
    ):
        return
    for value in ids:
        validate_message_id(value)


# -- writing (the context lock held; see MessageIndex) ------------------------------

_WRITE_FLAGS = os.O_WRONLY | os.O_APPEND | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOFOLLOW", 0)


class JournalWriter:
    """The journal at ``path``, opened for appending and kept open between writes.

    Every write names the journal it means by device and inode: the one the index read
    under the lock (a compaction replaces the file). The descriptor is reused while it
    is that file, in the process that opened it; otherwise the path is opened again and
    checked to be that file. Opening, checking and closing per line would cost three
    system calls of a write's fifteen or so (lock, look at the files, message file,
    line, the token it leaves, unlock).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = -1
        self._inode: tuple[int, int] | None = None
        self._pid = -1

    def append(
        self,
        inode: tuple[int, int],
        end: int,
        line: bytes,
        fsync: Fsync | None,
        *,
        checked: bool = False,
    ) -> None:
        """Append ``line`` to the journal whose complete lines end at ``end``, then
        ``fsync`` it (None: not durable).

        A fragment past ``end`` (a writer died mid-line) is cut first, unless ``checked``
        says the caller knows the file to end at ``end`` (it looked, under the lock held
        since); on failure (a full disk) whatever part of the line reached the file is
        cut off again, and the package's error is raised.
        """
        try:
            fd = self._descriptor(inode)
            try:
                if not checked and os.fstat(fd).st_size > end:
                    os.ftruncate(fd, end)
                try:
                    write_all(fd, line)
                    if fsync is not None:
                        fsync(fd)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, end)
                    raise
            except OSError:
                self.close()  # the next write starts from a fresh descriptor
                raise
        except OSError as exc:
            raise translate(exc, self.path, "append to") from exc

    def truncate(self, inode: tuple[int, int], mark: int, fsync: Fsync) -> None:
        """Durably cut the journal (device and inode ``inode``) back to ``mark`` bytes."""

        def cut(fd: int) -> None:
            os.ftruncate(fd, mark)
            fsync(fd)

        self._on_descriptor(inode, cut, "truncate")

    def sync(self, inode: tuple[int, int], fsync: Fsync) -> None:
        """Make every line of the journal (device and inode ``inode``) durable."""
        self._on_descriptor(inode, fsync, "write")

    def _on_descriptor(self, inode: tuple[int, int], action: Fsync, verb: str) -> None:
        # ``action`` on the journal's descriptor; a failed one is closed (the next write
        # opens a fresh one) and the package's error raised, naming ``verb``.
        try:
            fd = self._descriptor(inode)
            try:
                action(fd)
            except OSError:
                self.close()
                raise
        except OSError as exc:
            raise translate(exc, self.path, verb) from exc

    def duplicate(self, inode: tuple[int, int]) -> int:
        """A new descriptor of the journal (device and inode ``inode``), for an fsync
        made after the lock is released: the caller closes it."""
        try:
            return os.dup(self._descriptor(inode))
        except OSError as exc:
            raise translate(exc, self.path, "write") from exc

    def close(self) -> None:
        """Close the descriptor (the next write opens the journal again).

        In a forked child too: there it closes the child's copy of the parent's.
        """
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._inode = -1, None

    def _descriptor(self, inode: tuple[int, int]) -> int:
        if self._fd >= 0 and self._inode == inode and self._pid == os.getpid():
            return self._fd
        self.close()  # another file now (compacted), or inherited across a fork
        fd = os.open(self.path, _WRITE_FLAGS)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != inode:
            os.close(fd)
            raise RuntimeError("journal changed under the lock; refresh() was not called")
        self._fd, self._inode, self._pid = fd, inode, os.getpid()
        return fd
