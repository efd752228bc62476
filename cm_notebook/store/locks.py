"""The locks of the store's folders, and removing folders.

Every lock is a ``filelock.FileLock``, an OS lock (``flock`` on POSIX) that the OS
drops when its process dies, so a lock file left behind says nothing by itself:
:func:`lock_is_held` asks the OS whether a live process holds it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import filelock

if sys.platform != "win32":
    import fcntl

from ..errors import StoreLockTimeoutError
from .paths import CREATING_LOCK_NAME, LOCK_NAME

__all__ = ["creation_lock", "lock_is_held", "new_lock", "remove_lock_shell", "remove_tree"]

_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
# filelock polls; a short interval keeps two busy writers from idling 50 ms per turn.
_POLL_INTERVAL = 0.002


def new_lock(path: Path) -> filelock.FileLock:
    """A lock on ``path`` that any thread may release."""
    # thread_local=False: the lock is taken and released from anyio worker threads,
    # which need not be the same thread.
    return filelock.FileLock(path, thread_local=False, poll_interval=_POLL_INTERVAL)


@contextlib.contextmanager
def creation_lock(data_dir: Path, timeout: float) -> Iterator[None]:
    """Hold the data directory's lock on creating contexts (raises StoreLockTimeoutError).

    A creator holds it from making its temporary folder until that folder is renamed
    into place, so whoever holds it knows every temporary folder in ``contexts/`` to be
    a dead creator's. It lives beside ``contexts/``, not in it, so that an empty data
    directory shows no context folder.
    """
    path = data_dir / CREATING_LOCK_NAME
    lock = new_lock(path)
    try:
        lock.acquire(timeout=timeout)
    except filelock.Timeout:
        raise StoreLockTimeoutError(
            f"could not lock {path} within {timeout:g} s: another process is creating a "
            "context. Try again."
        ) from None
    try:
        yield
    finally:
        lock.release()


def lock_is_held(path: Path) -> bool:
    """Whether a live process holds the OS lock on ``path`` (False if there is no file).

    Never creates the file: probing with filelock would re-create a lock file that its
    writer just removed, leaving a stale one behind.
    """
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        if not path.exists():
            return False
        probe = new_lock(path)
        try:
            probe.acquire(blocking=False)
        except filelock.Timeout:
            return True
        probe.release()
        return False
    try:
        fd = os.open(path, os.O_RDONLY | _NO_FOLLOW)  # flock needs no write access
    except FileNotFoundError:
        return False
    try:
        # filelock's Unix locks are flock locks, so this sees theirs.
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the probe's own lock
    return False


def remove_lock_shell(folder: Path) -> bool:
    """Remove ``folder`` if it holds nothing but a lock file; return whether it is gone."""
    try:
        if os.listdir(folder) in ([], [LOCK_NAME]):
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return not folder.exists()


def remove_tree(path: Path) -> None:
    """Delete a folder that has already been renamed out of the way (best effort)."""
    shutil.rmtree(path, ignore_errors=True)
