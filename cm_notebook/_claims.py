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
from .store.oslock import LockTimeout, OSLock

__all__ = ["BranchClaims", "Claim", "running_remedy", "turn_running"]


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
        self._held: dict[str, bool] = {}  # branch -> whether held to delete it
        # The branches whose claim is taken: in _held from the moment one is asked for
        # (so that two takes in this session never race), here once it is granted.
        self._taken: set[str] = set()
        # One lock per branch used, its file kept open between turns: taking a claim
        # is then one flock, not an open, a truncate, a write and a close.
        self._files: dict[str, OSLock] = {}

    def held(self) -> frozenset[str]:
        """The branches this session holds claims on."""
        with self._lock:
            return frozenset(self._held)

    def taken(self) -> frozenset[str]:
        """The branches whose claim this session has been granted (a claim still being
        asked for, and maybe refused, is not among them)."""
        with self._lock:
            return frozenset(self._taken)

    def take(self, branch: str, *, deleting: bool = False) -> Claim:
        """Claim ``branch`` or raise :class:`BusyError` naming who holds it and why
        (a reply, or with ``deleting`` the branch's deletion)."""
        with self._lock:
            if branch in self._held:
                if self._held[branch]:
                    raise _being_deleted(branch, "")
                raise turn_running(branch)
            self._held[branch] = deleting
            lock = self._files.get(branch)
            if lock is None and self._path_of is not None:
                lock = self._files[branch] = OSLock(self._path_of(branch))
        try:
            locked = lock is not None and _lock(lock, branch, deleting)
        except BaseException:
            self._forget(branch)
            raise
        with self._lock:
            self._taken.add(branch)

        def give_back() -> None:
            # The file first: a send in this session waiting on the set must find the
            # OS lock free too.
            if locked and lock is not None:
                lock.release()
            self._forget(branch)

        return Claim(branch, give_back)

    def close(self) -> None:
        """Close the lock files of branches not claimed now (the session is closing)."""
        with self._lock:
            idle = [lock for branch, lock in self._files.items() if branch not in self._held]
            self._files = {b: lock for b, lock in self._files.items() if b in self._held}
        for lock in idle:
            lock.close()

    def _forget(self, branch: str) -> None:
        with self._lock:
            self._held.pop(branch, None)
            self._taken.discard(branch)


#: Seconds a claim waits for a lock that is taken before it refuses. Checking whether
#: a claim is held (``lock_is_held``: a log follower in any process, a settle of a dead
#: tool round) takes the lock for a moment; a turn holds it for its whole length.
PROBE_GRACE = 0.02


#: What a claim's lock file says after its owner when the claim is held to delete the
#: branch (a send refused then is told so, not to wait for a reply).
_DELETING = "; deleting the branch"


def _owner(deleting: bool = False) -> bytes:
    return (
        f"pid {os.getpid()} on {socket.gethostname()}" + (_DELETING if deleting else "")
    ).encode()


def running_remedy(branch: str, *, here: bool = True) -> str:
    """What to do about the reply being generated on ``branch``: wait for it or stop
    it, through the session (``here``: this session generates it, so it has its Turn;
    else another session or process does).

    Said through the session, never a ``turn`` variable: the cell whose
    ``r = await session.send(...)`` was interrupted has none, and a script that kept
    the Turn is given the same one by ``session.turn(branch)``.
    """
    wait = (
        f"wait for it (session.turn({branch!r}) is its Turn: await it)" if here else "wait for it"
    )
    return f"{wait}, or stop it with session.stop(branch={branch!r})"


def decide_calls(branch: str) -> str:
    """How to decide the tool calls a reply on ``branch`` waits for (only that branch's:
    ``approve()`` without it would decide every branch's). The magics and the REST API
    say it their ways (see magics._remedies and server.wording)."""
    return (
        f"session.approve(branch={branch!r}) or session.deny(branch={branch!r}) "
        "(session.pending_tool_calls lists them)"
    )


def turn_running(
    branch: str, *, stopping: bool = False, awaiting_approval: bool = False
) -> BusyError:
    """The refusal of a new turn on ``branch`` while this session's turn runs there
    (``stopping``: it was asked to stop, and still has to store its text;
    ``awaiting_approval``: it waits for a decision on its tool calls, which waiting
    alone would never bring)."""
    if stopping:
        return BusyError(
            f"the reply on branch {branch!r} is being stopped and is not over yet; "
            f"await session.turn({branch!r}) (it ends in a moment) before sending on the branch"
        )
    if awaiting_approval:
        return BusyError(
            f"the reply on branch {branch!r} waits for a decision on its tool calls; decide "
            f"them with {decide_calls(branch)}, or stop it with session.stop(branch={branch!r})"
        )
    return BusyError(
        f"a reply is still being generated on branch {branch!r}; {running_remedy(branch)}"
    )


def _being_deleted(branch: str, owner: str) -> BusyError:
    by = f" by another writer ({owner})" if owner else ""
    return BusyError(
        f"branch {branch!r} is being deleted{by}, so nothing can be sent on it; send on "
        "another branch (session.branch(name) makes one)"
    )


def _busy(branch: str, owner: str) -> BusyError:
    if owner.endswith(_DELETING):
        return _being_deleted(branch, owner.removesuffix(_DELETING))
    who = f" ({owner})" if owner else ""
    # Whatever was asked (a send, a deletion, an edit): the remedies fit them all.
    # Its reply may wait for a decision on its tool calls, which no waiting brings.
    return BusyError(
        f"branch {branch!r} is in use by another writer{who}: a reply is being generated "
        "there, or waits for a decision on its tool calls. Wait for it to finish and try "
        f"again, decide its calls with {decide_calls(branch)}, stop it "
        f"(session.stop(branch={branch!r})), or work on another branch "
        "(session.branch(name))."
    )


def _lock(lock: OSLock, branch: str, deleting: bool = False) -> bool:
    """Take ``lock`` without waiting (BusyError naming its owner); False if the file
    system cannot lock it (then claims stay in this session)."""
    try:
        lock.acquire(timeout=PROBE_GRACE)
    except LockTimeout:
        raise _busy(branch, _read_owner(lock.path)) from None
    except OSError:
        # The context is gone (the store says so on the first write), its folder cannot
        # take the file (read-only, full), or it has no flock (some network mounts):
        # the compare-and-set on every head move still keeps writers apart.
        return False
    fd = lock.fileno()
    if fd is not None:
        # Best effort, and only when another owner wrote it last: the owner's name only
        # improves the refusal message.
        with contextlib.suppress(OSError):
            owner = _owner(deleting)
            if os.pread(fd, 200, 0) != owner:
                os.ftruncate(fd, 0)
                os.pwrite(fd, owner, 0)
    return True


def _read_owner(path: Path) -> str:
    try:
        with open(path, "rb") as file:
            return file.read(200).decode("utf-8", "replace").strip()
    except OSError:
        return ""
