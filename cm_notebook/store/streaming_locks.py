"""The locks that say "this message is being streamed by a live process".

A writer holds an OS lock on ``.streaming-<message id>.lock`` from before a reply's
placeholder is committed until its final state is; readers probe it to tell a crashed
stream (lock free: mark it ``interrupted``) from a live one (see
:mod:`cm_notebook.store.context`).

Making a file is the dearest step of a turn on some file systems (an inode to
allocate and journal: ~0.2-0.5 ms where a rename costs 0.03 ms), and a plain turn
would make one lock file per reply. So the lock file of a finished stream is kept
as a *spare*, still locked, under ``.streaming-spare-<token>.lock``, and the next
stream moves it to its own name (one rename that may not replace, on Linux; else a
hard link and an unlink: the inode, and the lock on it, stay the same). A spare is
held by its live writer, so sweeping leaves it alone; when that writer dies, the next
sweep removes it like any unused lock file.
A name taken by another writer's lock is never overwritten: the move fails and the
stream falls back to locking that file, which refuses.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from ..errors import StoreError
from .atomic import unique_part
from .oslock import LockTimeout, OSLock
from .paths import STREAMING_PREFIX, STREAMING_SUFFIX, streaming_lock_path

__all__ = ["StreamingLocks"]


class StreamingLocks:
    """The streaming locks one FileStore holds in one context (callers hold its lock)."""

    def __init__(self, context_id: str, ctx_dir: Path) -> None:
        self.context_id = context_id
        self.dir = ctx_dir
        self._held: dict[str, OSLock] = {}
        self._spare: OSLock | None = None

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._held

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._held))

    def __len__(self) -> int:
        return len(self._held)

    def take(self, message_id: str) -> None:
        """Hold the lock of ``message_id`` (StoreError if another writer holds it)."""
        if message_id in self._held:
            return
        path = streaming_lock_path(self.dir, message_id)
        lock = self._reuse_spare(path)
        if lock is None:
            lock = OSLock(path)
            try:
                lock.acquire(timeout=0)
            except LockTimeout:
                raise StoreError(
                    f"message {message_id!r} of context {self.context_id!r} is being streamed "
                    "by another process or FileStore; only that writer may update it."
                ) from None
        self._held[message_id] = lock

    def drop(self, message_id: str, *, remove_file: bool) -> None:
        """Let go of ``message_id``'s lock (after it left ``streaming``).

        With ``remove_file`` its name goes too (the file is kept as the spare when
        there is none yet). Safe under the context lock: a reader only probes streaming
        locks while holding it, so nobody is between opening and locking this file.
        """
        lock = self._held.pop(message_id, None)
        if lock is None:
            return
        if remove_file and self._spare is None and self._keep_as_spare(lock):
            return
        lock.close()
        if remove_file:
            lock.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Release every lock without removing held messages' files; remove the spare."""
        for message_id in list(self._held):
            self.drop(message_id, remove_file=False)
        spare, self._spare = self._spare, None
        if spare is not None:
            spare.close()
            with contextlib.suppress(OSError):
                spare.path.unlink(missing_ok=True)

    def _keep_as_spare(self, lock: OSLock) -> bool:
        # A name of this process's own (a taken one fails the move: no spare then).
        name = f"{STREAMING_PREFIX}spare-{unique_part()}{STREAMING_SUFFIX}"
        try:
            lock.move_to(self.dir / name)
        except OSError:
            return False
        self._spare = lock
        return True

    def _reuse_spare(self, path: Path) -> OSLock | None:
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        try:
            spare.move_to(path)
        except OSError:  # the name is taken (or links are not supported): no reuse
            spare.close()
            with contextlib.suppress(OSError):
                spare.path.unlink(missing_ok=True)
            return None
        return spare
