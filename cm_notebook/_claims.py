"""Who may write a new turn on a branch: one writer per branch, across processes.

A turn holds a *claim* on its branch from the first write (the user's message, or the
rewind of a regenerate) until it has finished. A second send on that branch is refused
up front with :class:`~cm_notebook.errors.BusyError`, whether the other writer is in
this session, in another session of this process (another store over the same data
dir), or in another process.

Across processes the claim is a lock file in the context folder, one per branch,
locked with the OS (``flock``) and naming its owner (pid and host) so the refusal can
say who holds it. The OS drops the lock when its owner dies, so a killed writer's
claim is recovered by the next sender without any clean-up. Stores that are not file
based (anything without ``branch_claim_path``) get in-process claims only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Callable
from pathlib import Path

from .errors import BusyError

__all__ = ["BranchClaims", "Claim"]

try:  # POSIX: flock, and the owner written into the file.
    import fcntl
except ImportError:  # pragma: no cover - Windows: filelock, without the owner's name
    fcntl = None  # type: ignore[assignment]


class Claim:
    """One held claim on a branch; :meth:`release` gives it back (once)."""

    def __init__(self, branch: str, give_back: Callable[[], None]) -> None:
        self.branch = branch
        self._give_back = give_back
        self._lock = threading.Lock()
        self._released = False

    def release(self) -> None:
        """Give the branch back; safe from any thread, more than once."""
        with self._lock:
            if self._released:
                return
            self._released = True
        self._give_back()


class BranchClaims:
    """The claims of one session on its context's branches."""

    def __init__(self, path_of: Callable[[str], Path] | None) -> None:
        # path_of(branch): the branch's lock file; None: claims in this session only.
        self._path_of = path_of
        self._lock = threading.Lock()
        self._held: set[str] = set()

    def held(self) -> frozenset[str]:
        """The branches this session holds claims on."""
        with self._lock:
            return frozenset(self._held)

    def take(self, branch: str) -> Claim:
        """Claim ``branch`` or raise :class:`BusyError` naming who holds it."""
        with self._lock:
            if branch in self._held:
                raise BusyError(
                    f"a reply is still being generated on branch {branch!r}; "
                    "await it, or call turn.cancel()"
                )
            self._held.add(branch)
        try:
            handle = self._lock_file(branch)
        except BaseException:
            self._forget(branch)
            raise

        def give_back() -> None:
            # The file first: a send in this session waiting on the set must find the
            # OS lock free too.
            _unlock(handle)
            self._forget(branch)

        return Claim(branch, give_back)

    def _forget(self, branch: str) -> None:
        with self._lock:
            self._held.discard(branch)

    def _lock_file(self, branch: str) -> object:
        if self._path_of is None:
            return None
        return _lock(self._path_of(branch), branch)


def _owner() -> str:
    return f"pid {os.getpid()} on {socket.gethostname()}"


def _busy(branch: str, owner: str) -> BusyError:
    who = f" ({owner})" if owner else ""
    return BusyError(
        f"branch {branch!r} is in use by another writer{who}: a reply is being generated "
        "there. Wait for it to finish and send again, or send on another branch "
        "(session.branch(name))."
    )


def _lock(path: Path, branch: str) -> object:
    if fcntl is None:  # pragma: no cover - Windows
        import filelock

        lock = filelock.FileLock(path, thread_local=False)
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            raise _busy(branch, "") from None
        return lock
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError:
        # The context is gone (the store says so on the first write), or its folder
        # cannot take the file (read-only, full): the store's own write reports it.
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            owner = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        finally:
            os.close(fd)
        raise _busy(branch, owner) from None
    except OSError:
        # A file system without flock (some network mounts): claims stay in this
        # session; the compare-and-set on every head move still keeps writers apart.
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    # Best effort: the owner's name only improves the refusal message.
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, _owner().encode(), 0)
    return fd


def _unlock(handle: object) -> None:
    if handle is None:
        return
    if isinstance(handle, int):
        # Closing the descriptor drops the flock; the file stays (removing a lock file
        # while another process opens it would let two writers lock different files).
        with contextlib.suppress(OSError):
            os.close(handle)
        return
    release = getattr(handle, "release", None)  # pragma: no cover - Windows
    if release is not None:  # pragma: no cover
        release()
