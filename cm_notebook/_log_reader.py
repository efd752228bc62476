"""Reading a context's signal log (:mod:`cm_notebook.signal_log`) in order, from any
process, without ever taking the writers' lock.

A reader keeps the log open and reads only what was appended since its last poll;
it follows the file across compactions (a new file under the same name), telling a
caller that asked for numbers compacted away with one
:class:`~cm_notebook.events.Resync`, and it consumes whole lines only, so a record
being written (or torn by a crash) is never half read.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ._signal_records import (
    decode_record,
    is_carried,
    last_record_seq,
    record_start,
    skipped_seq,
)
from .errors import InvalidInputError
from .signals import Event, Resync, parse_event
from .store.oserrors import linked

__all__ = ["TAIL_BYTES", "LogReader"]

#: Enough of a log's end to find its last record when opening it.
TAIL_BYTES = 64 * 1024
# The log is never opened through a symbolic link (a planted one would send every
# process's signals into any file the user can write).
NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


class LogReader:
    """Reads a context's signal log in order, from a number on; poll for new ones.

    Args:
        path: the log file.
        since: replay the signals after this number; None starts at the log's end.

    :meth:`poll` returns the signals appended since the last call (each with the
    writer token of the :class:`SignalLog` that wrote it), or one
    :class:`~cm_notebook.events.Resync` when the numbers asked for were compacted
    away. Not thread-safe; never blocks on writers (it takes no lock).
    """

    def __init__(self, path: str | Path, since: int | None = None) -> None:
        if since is not None and since < 0:
            raise InvalidInputError(f"since must be >= 0, got {since!r}")
        self.path = Path(path)
        self._fd = -1
        self._ino = -1
        self._offset = 0
        #: ``(st_dev, st_ino, offset)``: the file read and how far (None: not open).
        #: One tuple, so another thread may read it (see SignalLog.own_tail).
        self.position: tuple[int, int, int] | None = None
        self._dev = -1
        self._partial = b""
        self._start = since
        self._start_asked = since or 0
        self._seen = 0  # the highest number read from the file, wanted or not
        self._context_id = ""  # the context of the records read (for a Resync of ours)
        #: The number of the last signal returned (or skipped as already seen).
        self.last_seq = since if since is not None else 0
        self._skip_writer = ""
        self._skip = b""  # how a skipped writer's records begin (see skipped_seq)
        if since is None:
            self._open_at_end()

    def skip_writer(self, writer: str) -> None:
        """Leave out the records of ``writer`` from now on: not parsed, not returned.

        What a follower does with its own process's records: they come many per
        second while a reply streams, and the process knows them already.
        """
        self._skip_writer = writer
        self._skip = record_start(writer) if writer else b""

    def _open_at_end(self) -> None:
        if not self._reopen():
            return
        size = os.fstat(self._fd).st_size
        start = max(0, size - TAIL_BYTES)
        data = os.pread(self._fd, size - start, start)
        cut = data.rfind(b"\n") + 1
        self._offset = start + cut
        self.position = (self._dev, self._ino, self._offset)
        self.last_seq = last_record_seq(data[:cut]) or 0
        if start > 0 and self.last_seq == 0:
            self.last_seq = last_record_seq(os.pread(self._fd, self._offset, 0)) or 0

    def _reopen(self) -> bool:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.position = None
        if os.path.islink(self.path.parent):
            # Planted since the context was opened (opening refuses it: see
            # store.folders.checked_signal_log): records written outside the data
            # directory are never taken for the context's signals.
            raise linked(self.path.parent)
        try:
            self._fd = os.open(self.path, os.O_RDONLY | NO_FOLLOW)
        except FileNotFoundError:
            return False
        status = os.fstat(self._fd)
        self._dev, self._ino = status.st_dev, status.st_ino
        self._offset = 0
        self._partial = b""
        self.position = (self._dev, self._ino, 0)
        return True

    def poll(self) -> list[tuple[str, Event]]:
        """The ``(writer, signal)`` pairs appended since the last poll, oldest first."""
        out = self._poll()
        if self._start is not None and self._start > self._seen:
            # Asked for numbers after ones this log never gave (e.g. a client from
            # before the log was deleted): carry on from the log's last number.
            self._start = None
            self.last_seq = self._seen
            out.append(("", self._ahead(self._start_asked)))
        return out

    def _poll(self) -> list[tuple[str, Event]]:
        if self._fd < 0 and not self._reopen():
            return []
        out = self._read_new()
        try:
            replaced = os.stat(self.path).st_ino != self._ino
        except FileNotFoundError:
            replaced = False
        if replaced:
            # Compacted: the old file is complete (writers moved on); read the new one
            # from its start, skipping what was already seen.
            out.extend(self._read_new())
            if self._reopen():
                out.extend(self._read_new(after_compaction=True))
        return out

    def _read_new(self, *, after_compaction: bool = False) -> list[tuple[str, Event]]:
        size = os.fstat(self._fd).st_size
        if size <= self._offset:
            return []
        data = self._partial + os.pread(self._fd, size - self._offset, self._offset)
        self._offset = size
        self.position = (self._dev, self._ino, size)
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        out: list[tuple[str, Event]] = []
        skip = self._skip
        after_carried = False
        for line in data[:cut].split(b"\n"):
            if is_carried(line):
                after_carried = True
            elif after_carried and line:
                # The first record after those a compaction carried forward: the numbers
                # between them are gone, as before a file's first record.
                after_compaction, after_carried = True, False
            if skip and self._start is None and not after_compaction:
                seq = skipped_seq(line, skip)
                if seq is not None:
                    self._seen = max(self._seen, seq)
                    self.last_seq = max(self.last_seq, seq)
                    continue
            decoded = decode_record(line)
            if decoded is None:
                continue
            writer, raw = decoded
            seq = int(raw["seq"])
            self._seen = max(self._seen, seq)
            self._context_id = str(raw.get("context_id", self._context_id))
            if seq <= self.last_seq:
                continue
            if self._start is not None or after_compaction:
                # The first record read from a file start: are the numbers before it gone?
                self._start, after_compaction = None, False
                if seq > self.last_seq + 1:
                    out.append(("", self._resync(raw, self.last_seq + 1)))
            if skip and writer == self._skip_writer:
                self.last_seq = seq
                continue
            try:
                event = parse_event(raw)
            except ValueError:
                continue  # a signal this version does not know
            self.last_seq = seq
            out.append((writer, event))
        return out

    def _ahead(self, asked: int) -> Resync:
        return Resync(
            seq=self._seen,
            context_id=self._context_id,
            reason=f"asked for signals after #{asked} but this log is at #{self._seen}",
        )

    def _resync(self, raw: dict[str, Any], first_wanted: int) -> Resync:
        seq = int(raw["seq"]) - 1
        return Resync(
            seq=seq,
            context_id=str(raw.get("context_id", "")),
            reason=(
                f"signals from #{first_wanted} to #{seq} are no longer in the log "
                "(it was compacted); re-pull the state"
            ),
        )

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self.position = None
