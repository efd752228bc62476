"""A context's signals on disk: one append-only, numbered log that every process shares.

The in-process :class:`~cm_notebook.events.EventBus` numbers signals for one process
only. With a :class:`SignalLog` as its recorder, the number of every signal is taken
from the log instead: under an exclusive ``flock`` on the log
(``<context>/signals/signals.log``) the writer reads the last number in the file,
appends its signals with the next ones, and releases. So numbers survive restarts,
two processes writing one context never reuse a number, and any process (a second
kernel, the Jupyter server) reads the same numbered signals back, in order, with
:class:`LogReader`.

Format: JSON lines, ``{"w": <writer token>, "e": <signal as JSON>}``. The writer token
tells a process's own signals from those of others (a follower republishes only the
others').

Writing and syncing. :meth:`SignalLog.record` and :meth:`SignalLog.record_all` write
their records before they return (one ``write`` per call, under the ``flock``): from
then on every process reads them, and killing the writing process (``kill -9``) loses
none of them. The fsync that makes them survive a power loss is not on the caller's
thread: one thread per log (:mod:`cm_notebook._signal_sync`) fsyncs the file
``sync_delay`` seconds (default 50 ms) after the first durable signal that is not yet
synced, covering every record written until then (group commit: a plain turn's six
durable signals cost about one fsync, not six), and :meth:`SignalLog.close` syncs what
is left before it returns. A log (or its ``signals`` folder) this process made has its
name fsync'd in its folder by that thread before the first sync, so a power loss
cannot take away the whole file with its fsync'd records. Text deltas
(:class:`~cm_notebook.events.ContentDelta`, and :class:`~cm_notebook.events.ReasoningDelta`
of the reasoning) never ask for an fsync: they come many per second and the stored
message is their truth anyway.

What a power loss (or an operating-system crash) can cost: the tail of the log
written since its last fsync, that is at most the durable signals of the last
``sync_delay`` seconds plus the time of one fsync, and the text deltas since the last
fsync. What holds: every record fsynced is kept, in order; of the tail, what survives
is whole records in order, and anything else (a torn line, bytes the file system
zeroed) is skipped by readers; numbering goes on after the last record that survived, so
the numbers of lost signals are given to new ones, and a client that saw a lost
signal can tell only by what it says (a delta's ``offset``, the message it names)
and re-pulls. Nothing depends on the log for correctness: the store is the truth
about messages and branches, signals only say what to re-pull.

Compaction: when the file grows past ``max_bytes``, the sync thread of the writer that
noticed rewrites it (temp file, fsync, rename) keeping the newest records, about half
of the limit, and before them the older records that are still true (a branch's state
while its turn runs, a tool call's request while it waits: a process opening later
learns of them from the log), marked so that readers say the gap after them with a
Resync. Never on the writer's own thread (which may be an event loop): it
holds the locks only to add the records written meanwhile and rename the new file
in place. A reader asking for numbers that are gone gets one
:class:`~cm_notebook.events.Resync`. The lock is on the file itself, not on the
store's ``.lock``: the store holds that one across message writes, and a signal must
never wait behind them.

A crash can leave half a line at the end; readers consume whole lines only, and the
next writer ends the torn line before appending, so it is skipped as unreadable.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from ._log_reader import NO_FOLLOW, TAIL_BYTES, LogReader
from ._signal_records import (
    decode_record,
    encode_records,
    last_record_seq,
    mark_carried,
    still_true,
)
from ._signal_sync import GroupSync
from .errors import InvalidInputError
from .redact import get_logger
from .signals import ContentDelta, Event, ReasoningDelta
from .store.atomic import Fsync, fsync_dir, write_all
from .store.leftovers import hold
from .store.paths import LOG_NAME

# Deltas of a reply's text or reasoning: many per second, written without an fsync.
_DELTAS = (ContentDelta, ReasoningDelta)

if sys.platform != "win32":
    import fcntl

__all__ = ["LOG_NAME", "LogReader", "SignalLog"]

logger = get_logger(__name__)

_DEFAULT_MAX_BYTES = 4 * 1024 * 1024
_SYNC_DELAY = 0.05
# Never opened through a symbolic link (see _log_reader).
_WRITE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_APPEND | NO_FOLLOW
# What opening the log for writing raises where it may only be read.
_CANNOT_WRITE = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


def _last_seq_read_only(path: Path) -> int:
    # The last whole record's number, read from the end of the file, writing nothing.
    fd = os.open(path, os.O_RDONLY | NO_FOLLOW)
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - TAIL_BYTES)
        found = last_record_seq(os.pread(fd, size - start, start))
        if found is None and start > 0:
            found = last_record_seq(os.pread(fd, size, 0))
        return found or 0
    finally:
        os.close(fd)


class SignalLog:
    """The writing side of one context's signal log (see the module docstring).

    Args:
        path: the log file (see :func:`~cm_notebook.store.folders.signal_log_in`);
            created if missing, and so is its folder, not the folders above it (a
            deleted context stays deleted).
        max_bytes: compact once the file is larger than this.
        fsync: the function every fsync of the log goes through (default
            :func:`os.fsync`), like :class:`~cm_notebook.store.FileStore`'s; pass a
            wrapper to count or time them.
        sync_delay: seconds from the first durable signal not yet on disk to the fsync
            that puts it there with every signal written meanwhile.

    Safe to use from several threads; :meth:`record` is what an
    :class:`~cm_notebook.events.EventBus` calls to number and store a signal, and
    :meth:`record_all` to store a batch of them.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_bytes: int = _DEFAULT_MAX_BYTES,
        fsync: Fsync = os.fsync,
        sync_delay: float = _SYNC_DELAY,
    ) -> None:
        if max_bytes < 1024:
            raise InvalidInputError(f"max_bytes must be at least 1024, got {max_bytes!r}")
        if not sync_delay >= 0:
            raise InvalidInputError(f"sync_delay must be >= 0 seconds, got {sync_delay!r}")
        self.path = Path(path)
        self._name = os.fspath(self.path)  # stat'ed for every record: made once
        self.max_bytes = max_bytes
        #: Written with every record: tells this log object's signals from others'.
        self.writer = secrets.token_hex(8)
        self._fsync = fsync
        self._lock = threading.Lock()
        self._fd = -1
        self._file = (-1, -1)  # (st_dev, st_ino) of the file self._fd is open on
        # Folders whose new entries (the log, its folder) no fsync has made durable yet:
        # the sync thread fsyncs them before the log (see _dup).
        self._folders_owed: list[Path] = []
        # What this object knows of the file: where its last record ended, and that
        # record's number; valid while nobody else appended.
        self._end = 0
        self._seq = 0
        # Where the records this object wrote with nobody else's in between begin (see
        # own_tail), and what own_tail says: (st_dev, st_ino, that start, self._end).
        self._run_start = 0
        self._own: tuple[int, int, int, int] | None = None
        self._compaction_due = False  # the file passed max_bytes: see _compact
        self._sync = GroupSync(self._dup, fsync, sync_delay, f"signal log sync {self.path}")

    def __repr__(self) -> str:
        return f"<SignalLog {str(self.path)!r}>"

    @property
    def last_seq(self) -> int:
        """The number of the last signal in the log (0 for an empty or missing log)."""
        if not self.path.exists():
            return 0  # not written yet (or the context folder is still being made)
        try:
            with self._lock, self._locked_file() as (fd, size):
                return self._current_seq(fd, size)
        except OSError as exc:
            if exc.errno not in _CANNOT_WRITE:
                raise
        # A folder this process may only read (a colleague's data on a read-only mount):
        # nothing will be appended from here, so the last number is read without the
        # lock a writer takes, which opening for writing needs.
        return _last_seq_read_only(self.path)

    @property
    def unsynced(self) -> int:
        """How many durable signals are written but not yet fsynced."""
        return self._sync.unsynced

    def own_tail(self) -> tuple[int, int, int, int] | None:
        """``(st_dev, st_ino, start, end)``: the bytes from ``start`` to ``end`` of that
        file are this object's records alone, and ``end`` is where its last write
        ended; None before its first write, and from when it lets the file go (a
        compaction replaced it, :meth:`close`) until its next write: an unlinked file's
        inode number may be given to the next file made.

        Safe from any thread (one tuple, replaced whole). A file of that identity
        whose size is still ``end`` has had nothing appended since: what a follower of
        the log (:mod:`cm_notebook._follower`) checks to leave this process's own
        writes unread.
        """
        return self._own

    def record(self, stamp: Callable[[int], Event]) -> Event:
        """Append ``stamp(n)`` with the log's next number ``n`` and return it.

        ``stamp`` builds the signal for a given number; it runs under the log's lock,
        so it must be quick and must not publish. The signal is in the file when this
        returns (every process reads it; a killed process loses nothing); a durable
        one is fsynced soon after by the log's sync thread (see the module docstring).

        Raises:
            OSError: the log could not be written (the caller decides what that costs).
        """
        return self.record_all([stamp])[0]

    def record_all(
        self, stamps: Sequence[Callable[[int], Event]], *, after: int = 0
    ) -> list[Event]:
        """Append ``stamp(n)`` for each stamp, with consecutive numbers, in one write.

        Like :meth:`record` for many signals at the cost of one: one ``flock``, one
        read of the last number (when another writer appended), one ``write``. The
        numbers come after the log's last one and after ``after`` (the caller's last:
        numbers it gave signals the log could not take are never given again).

        Raises:
            OSError: the log could not be written; none of the records is in it (a
                part that reached the file before the error is cut off again).
        """
        events: list[Event] = []
        # What _locked_file does, spelled out: this is every signal's path (often the
        # event loop's), and the context manager cost as much as a system call.
        with self._lock:
            size = self._lock_file()
            try:
                fd = self._fd
                alone = size == self._end  # nobody appended since our last record
                seq = max(self._current_seq(fd, size), after)
                if not alone:
                    self._run_start = self._end  # where ours begin (after theirs)
                durable = False
                for stamp in stamps:
                    seq += 1
                    event = stamp(seq)
                    events.append(event)
                    durable = durable or not isinstance(event, _DELTAS)
                data = encode_records(self.writer, events)
                try:
                    write_all(fd, data)
                except OSError:
                    # A full disk may take part of the batch: cut it, so no record of a
                    # batch the caller numbered itself is in the log under those numbers.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, self._end)
                    raise
                self._end += len(data)
                self._seq = seq
                self._own = (*self._file, self._run_start, self._end)
            finally:
                self._unlock_file()
            if self._end > self.max_bytes and not self._compaction_due:
                # Not here: this may be the event loop's thread, and a compaction
                # writes and fsyncs a new file. The sync thread does it (see _compact).
                self._compaction_due = durable = True
            if durable:
                self._sync.written()
        return events

    def sync(self) -> None:
        """Fsync, on this thread, what is written and not yet synced.

        What :meth:`close` would do first: called off the event loop before closing,
        it leaves ``close`` no fsync to wait for.
        """
        self._sync.sync()

    def close(self) -> None:
        """Fsync what is not yet synced, then close the file.

        A later :meth:`record` opens it again.
        """
        self._sync.stop()  # before taking the lock: the sync thread takes it too
        with self._lock:
            self._close_fd()

    # -- private ---------------------------------------------------------------------

    def _dup(self) -> int:
        # For the sync thread: its own descriptor of the file the records went to, or
        # -1 if there is none (closed by close(), which syncs itself, or replaced by a
        # compaction, which synced the new file). A compaction that is due is made
        # first, here, off the writers' threads.
        while self._compaction_due:
            self._compact()
        with self._lock:
            fd = os.dup(self._fd) if self._fd >= 0 else -1
            owed, self._folders_owed = self._folders_owed, []
        # This process made the file (or its folder): the new name needs its folder's
        # fsync too, or a power loss could drop the whole log, fsync'd records and all.
        for number, folder in enumerate(owed):
            try:
                fsync_dir(folder, self._fsync)
            except OSError:
                with self._lock:
                    self._folders_owed[:0] = owed[number:]  # the next sync tries again
                if fd >= 0:
                    os.close(fd)
                raise
        return fd

    def _close_fd(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1
        # The file let go may be unlinked (a compaction replaced it) and its inode
        # number given to the next file made, another process's log included: own_tail
        # must not vouch for that one.
        self._own = None

    @contextlib.contextmanager
    def _locked_file(self) -> Iterator[tuple[int, int]]:
        # The descriptor and size of the log, flock'ed for the block (see _lock_file).
        size = self._lock_file()
        try:
            yield self._fd, size
        finally:
            self._unlock_file()

    def _lock_file(self) -> int:
        # Open (or re-open after a compaction replaced the file) and flock it; returns
        # the file's size. Under self._lock; _unlock_file undoes it. A writer that
        # waited while another compacted holds the lock of the replaced file, so it
        # checks the path still names the file it locked and tries again if not.
        while True:
            if self._fd < 0:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(self.path.parent)
                    self._folders_owed.append(self.path.parent.parent)
                if os.path.islink(self.path.parent):
                    # Not followed out of the folder it belongs in (a planted link).
                    raise OSError(errno.ELOOP, "a symbolic link", str(self.path.parent))
                made = not os.path.lexists(self.path)
                self._fd = os.open(self.path, _WRITE_FLAGS, 0o600)
                if made:
                    self._folders_owed.append(self.path.parent)
                opened = os.fstat(self._fd)
                self._file = (opened.st_dev, opened.st_ino)
                self._end, self._seq = -1, 0  # unknown: read from the file
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            # The path must still name the file locked. A link count cannot tell: the
            # replaced file may still be linked elsewhere (a hard-link backup, or the
            # folder renamed away by delete_context while the id was made again), and
            # writing there loses the records and repeats numbers. The file's identity
            # was taken when it was opened (an open file's inode is never reused), so
            # one stat of the path tells both that and the size: no fstat per record.
            try:
                named = os.stat(self._name)
            except FileNotFoundError:
                named = None
            except OSError:
                fcntl.flock(self._fd, fcntl.LOCK_UN)  # not held by a writer that failed
                raise
            if named is not None and (named.st_dev, named.st_ino) == self._file:
                return named.st_size
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            self._close_fd()

    def _unlock_file(self) -> None:
        if self._fd >= 0:  # a compaction closed it, which dropped the lock already
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def _current_seq(self, fd: int, size: int) -> int:
        if size == self._end:
            return self._seq
        # Someone else appended (or the file is new to us): find the last record.
        start = max(0, size - TAIL_BYTES)
        data = os.pread(fd, size - start, start)
        found = last_record_seq(data)
        if found is None and start > 0:
            data = os.pread(fd, size, 0)
            found = last_record_seq(data)
        if data and not data.endswith(b"\n"):
            # A torn record from a crashed writer: end it, so ours starts on a new line.
            os.write(fd, b"\n")
            size += 1
        self._end = size
        self._seq = max(self._seq, found or 0)
        return self._seq

    def _compact(self) -> None:
        # Keep the newest whole records within half the limit (always the last one, so
        # the numbering goes on) in a new file renamed over the log. On the sync thread
        # (or in sync()/close()), and the slow part - reading the log, writing and
        # fsyncing the new file - without the locks, so writers (an event loop among
        # them) never wait for it; under them only the records written meanwhile are
        # added, fsynced, and the new file put in place. Its name is fsynced in the
        # folder before the next sync of the log (_folders_owed).
        with self._lock:
            self._compaction_due = False
            if self._fd < 0 or self._end <= self.max_bytes:
                return  # closed (a later record finds it too long again), or done
            if os.path.islink(self.path.parent):
                # Planted since the log was opened: the copy would be written outside
                # the data directory. Records go on into the file open here, until
                # _lock_file finds the path names another file and refuses the folder.
                return
            source, end = os.dup(self._fd), self._end
        temp = self.path.with_name(f".{self.path.name}.{self.writer}.tmp")
        try:
            out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NO_FOLLOW, 0o600)
            # Held until closed (after the rename): a sweep then never removes the
            # file while it is written (see store/leftovers.py).
            hold(out)
            try:
                body = self._kept(os.pread(source, end, 0))
                write_all(out, body)
                self._fsync(out)
                with self._lock, self._locked_file() as (fd, size):
                    now, then = os.fstat(fd), os.fstat(source)
                    if (now.st_dev, now.st_ino) != (then.st_dev, then.st_ino):
                        return  # another writer compacted it meanwhile
                    if size > end:
                        write_all(out, os.pread(fd, size - end, end))
                        self._fsync(out)
                    os.replace(temp, self.path)
                    # Our fd still names the old file: close it (which drops its flock)
                    # so the next record opens the new one.
                    self._close_fd()
                    self._folders_owed.append(self.path.parent)
                    # Records written while the new file was made may pass the limit.
                    self._compaction_due = len(body) + size - end > self.max_bytes
            finally:
                os.close(out)
        finally:
            os.close(source)
            with contextlib.suppress(OSError):
                os.unlink(temp)  # left only if the log was not replaced

    def _kept(self, data: bytes) -> bytes:
        # The newest whole records of ``data`` within half the limit (at least one), and
        # before them the older records still true (see _signal_records.still_true).
        lines = data.split(b"\n")[:-1]
        kept: list[bytes] = []
        size = 0
        cut = 0
        for at in range(len(lines) - 1, -1, -1):
            line = lines[at]
            if kept and size + len(line) + 1 > self.max_bytes // 2:
                cut = at + 1
                break
            # Whole records are kept without decoding them (compacting a 4 MiB log
            # decoded 13,000 records while every writer waited); anything else only if it
            # decodes. A damaged line that looks whole is kept: readers skip it.
            if (line.startswith(b'{"w":"') and line.endswith(b"}}")) or decode_record(line):
                kept.append(line)
                size += len(line) + 1
        kept.reverse()
        # Marked, so that a reader checks for the gap between them and the newest ones.
        carried = [mark_carried(line) for line in still_true(lines[:cut], kept)]
        return b"".join(line + b"\n" for line in [*carried, *kept])
