"""One migration at a time into a data folder.

Two runs at once (two terminals, a script started twice) would each plan to write the
same contexts, and each report the ones the other wrote first as failed ("a context
... already exists"), both exiting 1. Holding ``<data dir>/.migrate.lock`` for the run
makes the second wait; it then finds those contexts migrated and skips them.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio

from .._migration_mark import MIGRATE_LOCK_NAME
from ..store.base import Store
from ..store.oslock import LockTimeout, OSLock

__all__ = ["MIGRATE_LOCK_NAME", "one_migration_at_a_time"]


def _on_stderr(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def one_migration_at_a_time(
    store: Store, say: Callable[[str], None] | None = None
) -> AsyncIterator[None]:
    """Hold the data folder's migration lock while the block runs, waiting for it
    (saying so with ``say``, by default on stderr) if another migration holds it.

    A store without a data folder, or one where the lock file cannot be made (a
    read-only folder: the writes will say what is wrong), is not locked.
    """
    say = say or _on_stderr
    data_dir = getattr(store, "data_dir", None)
    lock = None
    if isinstance(data_dir, Path):
        lock = OSLock(data_dir / MIGRATE_LOCK_NAME, poll_interval=0.05)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire(timeout=0)
            except LockTimeout:
                say(f"waiting for another migration into {data_dir} to finish ...")
                await anyio.to_thread.run_sync(lock.acquire)
        except OSError:
            lock.close()
            lock = None
    try:
        yield
    finally:
        if lock is not None:
            lock.close()
