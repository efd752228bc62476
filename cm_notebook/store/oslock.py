"""An exclusive OS lock on a file, cheap enough to take on every write.

The store takes its context lock for every write and a streaming lock for every
reply, so what a lock costs is paid several times per turn. ``filelock`` opens,
probes and closes the lock file on each acquire; :class:`OSLock` opens it once and
keeps the descriptor, so taking a free lock is one ``flock`` and one ``lstat`` call.

Keeping the descriptor needs two checks that re-opening made unnecessary:

* The path may stop naming the locked file (a context folder renamed away by
  ``delete_context``, a lock file removed and made anew): after ``flock`` succeeds,
  the file at the path must be the one locked, else the lock is dropped and taken on
  the file now there. Without that check two writers could hold "the" lock on two
  different files.
* ``flock`` locks belong to the open file, which a forked child shares: a child
  opens its own descriptor before its first acquire, so it never holds the parent's
  lock by inheritance.

Like ``filelock`` on POSIX these are ``flock`` locks, so :func:`lock_is_held` probes
and older writers see them. On Windows ``filelock`` is used as it is.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import StoreLockTimeoutError
from .paths import CREATING_LOCK_NAME, LOCK_NAME

__all__ = [
    "LockTimeout",
    "OSLock",
    "creation_lock",
    "lock_is_held",
    "move_by_link",
    "remove_lock_shell",
    "rename_no_replace",
]

if sys.platform != "win32":
    import fcntl

_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class LockTimeout(Exception):
    """The lock stayed held by someone else for the whole timeout."""


class OSLock:
    """An exclusive, non-reentrant lock on ``path`` (created if missing, never removed).

    Not thread-safe by itself: the store serialises its users with a thread lock.
    ``poll_interval`` is how often a waiting :meth:`acquire` tries again.
    """

    def __init__(self, path: Path, poll_interval: float = 0.002) -> None:
        # 2 ms: two busy writers of one context then never idle 50 ms per turn.
        self.path = path
        self.poll_interval = poll_interval
        self._fd = -1
        self._pid = -1
        self._identity: tuple[int, int] = (-1, -1)  # the open file's device and inode
        self._held = False
        self._fallback: object | None = None  # filelock.FileLock on Windows

    @property
    def is_locked(self) -> bool:
        """Whether this object holds the lock."""
        return self._held

    def acquire(self, timeout: float = -1) -> None:
        """Take the lock, waiting up to ``timeout`` seconds (< 0: forever; 0: no wait).

        Raises :class:`LockTimeout`, or the ``OSError`` of opening the file (e.g.
        ``FileNotFoundError`` when its folder is gone).
        """
        if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
            self._acquire_fallback(timeout)
            return
        deadline = None if timeout < 0 else time.monotonic() + timeout
        while True:
            fd = self._descriptor()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if deadline is not None and time.monotonic() >= deadline:
                    # Not taken: keep no descriptor either. Callers that probe a lock
                    # and drop the object (is this stream's writer alive?) would
                    # otherwise leak one per probe, until the process runs out.
                    self._close()
                    raise LockTimeout(str(self.path)) from None
                time.sleep(self.poll_interval)
                continue
            try:
                names_it = self._names_locked_file()
            except BaseException:
                self._close()  # locked, but not known to be ours: let go of it
                raise
            if names_it:
                self._held = True
                return
            # The path names another file now: let go of the old one and lock that.
            self._close()

    def release(self) -> None:
        """Let go of the lock (the descriptor stays open for the next acquire)."""
        if not self._held:
            return
        self._held = False
        if sys.platform == "win32":  # pragma: no cover
            self._fallback.release()  # type: ignore[attr-defined]
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        except OSError:
            self._close()  # closing drops the lock too

    def fileno(self) -> int | None:
        """The open lock file's descriptor, while held (None on Windows)."""
        if not self._held or sys.platform == "win32":
            return None
        return self._fd

    def move_to(self, path: Path) -> None:
        """Give the held lock's file the name ``path`` instead (it keeps the lock).

        ``FileExistsError`` if ``path`` exists: another writer's lock file is never
        replaced. Other ``OSError``s (say, a file system without hard links) leave the
        lock where it was. One ``renameat2(RENAME_NOREPLACE)`` call where Linux and the
        file system offer it (see :func:`rename_no_replace`), else a hard link and an
        unlink.
        """
        if not self._held or sys.platform == "win32":
            raise OSError(f"cannot move {self.path}: not held, or not supported here")
        if not rename_no_replace(self.path, path):
            move_by_link(self.path, path)
        self.path = path

    def close(self) -> None:
        """Release the lock and close the file."""
        self.release()
        self._close()

    def _descriptor(self) -> int:
        pid = os.getpid()
        if self._fd >= 0 and self._pid != pid:
            # Inherited across fork: the parent's open file, and maybe its lock.
            os.close(self._fd)
            self._fd = -1
        if self._fd < 0:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NO_FOLLOW | _CLOEXEC, 0o644)
            try:
                held = os.fstat(fd)
            except OSError:
                os.close(fd)
                raise
            # An open file's device and inode never change: taken once, not per acquire.
            self._fd, self._pid, self._identity = fd, pid, (held.st_dev, held.st_ino)
        return self._fd

    def _names_locked_file(self) -> bool:
        try:
            now = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (now.st_dev, now.st_ino) == self._identity

    def _close(self) -> None:
        self._held = False
        if self._fd >= 0 and self._pid == os.getpid():
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd = -1

    def _acquire_fallback(self, timeout: float) -> None:  # pragma: no cover - Windows
        import filelock

        if self._fallback is None:
            self._fallback = filelock.FileLock(
                self.path, thread_local=False, poll_interval=self.poll_interval
            )
        try:
            self._fallback.acquire(timeout=timeout)  # type: ignore[attr-defined]
        except filelock.Timeout:
            raise LockTimeout(str(self.path)) from None
        self._held = True


_AT_FDCWD = -100  # Linux's "relative to the working folder" (the paths are absolute)
_RENAME_NOREPLACE = 1
# Not offered here: by the kernel, the file system, or a sandbox's filter (EPERM, which
# a real refusal would also give the link and unlink that are then tried).
_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM)


@functools.cache
def _renamer() -> tuple[Callable[..., int], Callable[[], int]] | None:
    # The C library's renameat2 and ctypes.get_errno, looked up at the first move
    # (None: not Linux, or a C library without it).
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        func = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    func.restype = ctypes.c_int
    return func, ctypes.get_errno


def rename_no_replace(source: Path, target: Path) -> bool:
    """Rename ``source`` to ``target`` unless ``target`` exists (``FileExistsError``),
    in one system call; False if this system or file system cannot (nothing was done:
    the caller links and unlinks instead). Other failures raise their ``OSError``."""
    found = _renamer()
    if found is None:
        return False
    func, get_errno = found
    if func(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), _RENAME_NOREPLACE):
        code = get_errno()
        if code in _UNSUPPORTED:
            return False
        raise OSError(code, os.strerror(code), str(source), None, str(target))
    return True


def move_by_link(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` unless ``target`` exists (``FileExistsError``),
    as a hard link and an unlink: where :func:`rename_no_replace` cannot. The file keeps
    its inode, so a lock held on it stays held."""
    os.link(source, target)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(source)


@contextlib.contextmanager
def creation_lock(data_dir: Path, timeout: float) -> Iterator[None]:
    """Hold the data directory's lock on creating contexts (raises StoreLockTimeoutError).

    A creator holds it from making its temporary folder until that folder is renamed
    into place, so whoever holds it knows every temporary folder in ``contexts/`` to be
    a dead creator's. It lives beside ``contexts/``, not in it, so that an empty data
    directory shows no context folder.
    """
    path = data_dir / CREATING_LOCK_NAME
    lock = OSLock(path)
    try:
        lock.acquire(timeout=timeout)
    except LockTimeout:
        raise StoreLockTimeoutError(
            f"could not lock {path} within {timeout:g} s: another process is creating a "
            "context. Try again."
        ) from None
    try:
        yield
    finally:
        lock.close()


def lock_is_held(path: Path) -> bool:
    """Whether a live process holds the OS lock on ``path`` (False if there is no file).

    Never creates the file: a probe that created it would re-create a lock file that its
    writer just removed, leaving a stale one behind.
    """
    if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        if not path.exists():
            return False
        probe = OSLock(path)
        try:
            probe.acquire(timeout=0)
        except LockTimeout:
            return True
        probe.close()
        return False
    try:
        # flock needs no write access. O_NONBLOCK: a FIFO planted under a lock file's
        # name must not make the probe wait for a writer.
        fd = os.open(path, os.O_RDONLY | _NO_FOLLOW | _NONBLOCK)
    except FileNotFoundError:
        return False
    try:
        # OSLock (and filelock, which older versions used) take flock locks: this sees them.
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
