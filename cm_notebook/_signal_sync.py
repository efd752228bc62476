"""Group commit for the signal log: one thread fsyncs, for many records at once.

:class:`~cm_notebook.signal_log.SignalLog` writes every record at once, under its
``flock``, so other processes read it straight away (from the page cache) and a killed
process loses nothing it wrote. Making a record survive a power loss is the fsync, and
that is what this module takes off the writer's thread: the log calls
:meth:`GroupSync.written` after each durable record; one thread per log waits
``delay`` seconds for more records to gather, then fsyncs the file once for all that
were written before the fsync began. :meth:`GroupSync.stop` (the log's ``close``) syncs
whatever is left on the caller's thread before returning.

The thread ends after a while without work and is started again by the next durable
record, so a log that is never closed does not keep a thread forever.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from .redact import get_logger
from .store.atomic import Fsync

__all__ = ["GroupSync"]

logger = get_logger(__name__)

# How long the thread waits for work before it ends (the next record starts another).
_IDLE_SECONDS = 5.0


class GroupSync:
    """Fsyncs a file from one background thread, coalescing the records written meanwhile.

    Args:
        grab: returns a new descriptor of the file as it is now (the caller closes it),
            or -1 when nothing needs syncing (the file was closed, or replaced by a
            file that was synced when it was made).
        fsync: the function every fsync goes through.
        delay: seconds between the first unsynced record and the fsync that covers it
            and every record written during that time.
        name: the thread's name, for debugging.
    """

    def __init__(self, grab: Callable[[], int], fsync: Fsync, delay: float, name: str) -> None:
        self._grab = grab
        self._fsync = fsync
        self._delay = delay
        self._name = name
        self._cond = threading.Condition()
        self._sync_lock = threading.Lock()  # one fsync at a time (thread or stop())
        self._written = 0  # durable records written so far
        self._synced = 0  # how many of them an fsync has covered
        self._stopping = False
        self._thread: threading.Thread | None = None

    @property
    def unsynced(self) -> int:
        """How many durable records were written and are not yet covered by an fsync."""
        with self._cond:
            return self._written - self._synced

    def written(self) -> None:
        """A durable record was just written: have it fsynced within ``delay`` seconds."""
        with self._cond:
            self._written += 1
            if self._thread is None:
                self._stopping = False
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._written - self._synced == 1:
                self._cond.notify()  # the thread is idle: this record starts a group

    def sync(self) -> None:
        """Fsync now, on this thread, every record written so far (if any is unsynced)."""
        self._sync()

    def stop(self) -> None:
        """Sync what is left (on this thread) and end the background thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._sync()

    # -- the thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._cond.wait_for(self._has_work, timeout=_IDLE_SECONDS):
                    self._thread = None  # idle: the next record starts a new thread
                    return
                if self._stopping:
                    self._thread = None
                    return  # stop() syncs the rest itself
                # Let the group gather; stop() cuts the wait short.
                self._cond.wait_for(lambda: self._stopping, timeout=self._delay)
                if self._stopping:
                    self._thread = None
                    return
            self._sync()

    def _has_work(self) -> bool:
        return self._stopping or self._written > self._synced

    def _sync(self) -> None:
        with self._sync_lock:
            with self._cond:
                target = self._written
                if target == self._synced:
                    return
            # Every record counted in ``target`` is in the file grabbed now (or in an
            # older file that was synced when it was replaced): one fsync covers them.
            try:
                fd = self._grab()
                if fd >= 0:
                    try:
                        self._fsync(fd)
                    finally:
                        os.close(fd)
            except (FileNotFoundError, NotADirectoryError):
                # The context was deleted (or its folder removed on disk) meanwhile:
                # nothing is left to make durable, and nothing went wrong here.
                logger.debug("the signal log is gone, nothing to fsync (%s)", self._name)
            except OSError:
                # Nothing to retry with: the records are written (a crash of this process
                # keeps them) and the store, not this log, is the truth after a power loss.
                logger.exception("could not fsync the signal log (%s)", self._name)
            with self._cond:
                self._synced = max(self._synced, target)
                self._cond.notify_all()
