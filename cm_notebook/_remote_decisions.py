"""Approve or deny a tool call that waits in another process.

The process running the turn holds the call on its approval desk. Another process
(a second kernel, the Jupyter server) that is asked to decide it writes a decision
record, ``<context>/decisions/<digest of message id and call id>.json`` (a provider
may reuse a call id in a later reply); the first record for a
call wins (it is linked into place, which fails if one exists). The waiting process's
log follower looks for records of the calls on its desk each time it polls, applies
the decision as if it were made locally. The record stays (a few bytes per decision),
so a second decision for the same call is refused however late it comes. The waiting
turn's ``ToolCallResolved`` signal then tells every process the outcome. A decision
made in the waiting process itself first claims the record's place
(:meth:`DecisionBox.claim`), so a remote decision that comes at the same moment is
refused rather than reported made.

Stopping a reply that another process generates works the same way: a stop record,
``<context>/decisions/stop-<digest of the turn id>.json``, names the turn (not the
branch, so a late record cannot stop the next turn there); the running process's
follower finds it for one of its turns and cancels that turn as a local stop would.
Asking twice is harmless; the records stay, a few bytes each.

Nothing here is followed out of the context folder through a symbolic link, as
elsewhere in the store: the folder or a record planted as a link could otherwise put
records outside the data directory, or have a file there obeyed as a decision. A
decider is refused (:class:`~cm_notebook.errors.CorruptDataError`); the waiting
process applies no decision or stop from a linked folder or record and warns
(:class:`~cm_notebook.store.diagnostics.StoreWarning`): its calls stay waiting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _json
from .errors import CorruptDataError, InvalidInputError, StorageFullError
from .store.atomic import Fsync, fsync_dir, mkdir_durable
from .store.codec import read_regular
from .store.diagnostics import warn
from .store.leftovers import write_temp
from .store.oserrors import DISK_FULL, linked, translate
from .store.oslock import LockTimeout, OSLock
from .store.paths import DECISIONS_DIR

__all__ = ["DECISIONS_FOLDER", "DecisionBox"]

#: The folder of a context that holds decision and stop records.
DECISIONS_FOLDER = DECISIONS_DIR


# A record file that does not parse and is older than this is no decision: no writer of
# this version leaves one (each is linked into place whole), but a claim made by an
# older version (created empty, then written) could be torn by a kill or a full disk.
# The wait covers such a claim still being written.
TORN_AFTER_SECONDS = 2.0

# The lock file (in the decisions folder) that removers of torn records take in turn,
# and how long one waits for it before saying a decision is there already.
_TORN_LOCK_NAME = ".torn-records.lock"
_TORN_LOCK_SECONDS = 5.0

# Edited arguments are bounded by the tools' own limit; a record beyond this is not ours.
_MAX_RECORD_CHARS = 8 * 1024 * 1024

# Not the store's usual "replace it with what it points to": that would adopt records
# someone else wrote, outside the data directory, as decisions.
_LINK_REMEDY = (
    "Remove the link (the folder is made again when needed), then decide the tool call "
    "or stop the turn again: no decision is read from, or written to, a file outside "
    "the data directory."
)


def _linked(path: Path) -> CorruptDataError:
    return linked(path, _LINK_REMEDY)


@dataclass(frozen=True)
class RemoteDecision:
    """A decision recorded by another process for a call waiting in this one.

    Besides the verdict, a record may carry edited arguments (validated by the deciding
    process when it knows the tool, and again by the waiting one, whose tool runs them),
    who decided and the scope the decision was given for (for the audit log). Arguments
    the waiting process refuses are not applied: it discards the record, so the call can
    be decided again.
    """

    approved: bool
    reason: str | None = None
    arguments: dict[str, Any] | None = None
    by: str = "user"
    remember: str = "once"
    pid: int = 0


_STOP_PREFIX = "stop-"
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)


class DecisionBox:
    """The decision records of one context folder."""

    def __init__(self, context_dir: Path, fsync: Fsync = os.fsync) -> None:
        self.folder = context_dir / DECISIONS_FOLDER
        self._fsync = fsync  # the store's: every fsync of a context folder goes through it

    def _path(self, tool_call_id: str, message_id: str) -> Path:
        digest = hashlib.sha256(f"{message_id}\0{tool_call_id}".encode()).hexdigest()[:32]
        return self.folder / f"{digest}.json"

    def _refuse_linked_folder(self) -> None:
        # Before a decider writes anything (temporary file, record, the removers' lock):
        # through a linked folder it would all land outside the data directory.
        if os.path.islink(self.folder):
            raise _linked(self.folder)

    def _ignored(self, error: CorruptDataError, what: str) -> None:
        # For the waiting process's reads, on its follower's thread, where an error
        # would reach nobody: the person waiting learns from the warning why the
        # decision made elsewhere does not come (the decider was refused too).
        warn(f"{error} Not applied: {what}.", self.folder)

    def post(
        self,
        tool_call_id: str,
        message_id: str,
        *,
        approved: bool,
        reason: str | None,
        arguments: dict[str, Any] | None = None,
        by: str = "user",
        remember: str = "once",
    ) -> bool:
        """Record a decision for a call of ``message_id``; False if one was recorded already.

        ``arguments``, ``by`` and ``remember``: see :class:`RemoteDecision`.
        """
        record = {"tool_call_id": tool_call_id, "approved": approved, "reason": reason}
        record.update(arguments=arguments, by=by, remember=remember, pid=os.getpid())
        text = json.dumps(record)
        if len(text) > _MAX_RECORD_CHARS:
            # The waiting process would take it for damage and leave the call pending,
            # while its file refused every later decision.
            raise InvalidInputError(
                f"the decision is {len(text):,} characters, more than the "
                f"{_MAX_RECORD_CHARS:,} that can pass to the process running the call: "
                "shorten its reason or edited arguments"
            )
        self._refuse_linked_folder()
        temp = self.folder / f".{secrets.token_hex(8)}.tmp"
        try:
            mkdir_durable(self.folder, self._fsync)
            try:
                write_temp(temp, text.encode(), self._fsync)
                if not link_record(temp, self._path(tool_call_id, message_id)):
                    return False
            finally:
                with contextlib.suppress(OSError):
                    temp.unlink(missing_ok=True)  # (a kill here: see store/leftovers.py)
            fsync_dir(self.folder, self._fsync)  # the record's name, through a power loss
        except OSError as exc:  # a read-only folder, a full disk: said the store's way
            raise translate(exc, self.folder, "write") from exc
        return True

    def claim(self, tool_call_id: str, message_id: str) -> bool:
        """Mark a call of ``message_id`` decided by the process it waits in; False if
        another process recorded a decision for it first (that one is then applied).

        So two clients deciding one call at once (a click in the kernel, a request to
        the server) are not both told they decided it. Not made durable: it matters
        only while the waiting process lives. A folder that cannot be written lets the
        local decision through (True), as before there were other processes; a full
        disk does not (:class:`~cm_notebook.errors.StorageFullError`, nothing claimed):
        the decision could not be recorded, and its turn could not store its outcome
        either, so the call stays waiting, to be decided again once there is space.

        The claim is written whole to a temporary file, then linked into place: a
        claim file created first and written after would, left empty by a full disk
        or a kill in between, refuse every later decision of the call.

        A symbolic link as the folder or the call's record raises
        :class:`~cm_notebook.errors.CorruptDataError` (nothing decided: the call stays
        waiting). Not let through like a folder that cannot be written: the link may
        have been planted to decide the call (:meth:`read` never applies it), and the
        person deciding here learns of it, and removes it, before anything runs.
        """
        record = {"tool_call_id": tool_call_id, "claimed": True, "pid": os.getpid()}
        self._refuse_linked_folder()
        temp = self.folder / f".{secrets.token_hex(8)}.tmp"
        try:
            # No fsync (the caller may be an event loop's thread): see above.
            self.folder.mkdir(exist_ok=True)
            write_temp(temp, json.dumps(record).encode(), None)
            return link_record(temp, self._path(tool_call_id, message_id))
        except OSError as exc:
            if exc.errno in DISK_FULL:
                raise StorageFullError(
                    f"could not record the decision on tool call {tool_call_id!r}: no space "
                    f"left on the device holding {self.folder} ({exc.strerror or exc}). "
                    "Nothing was decided: the call is still waiting. Free some space (or "
                    "raise the disk quota), then approve or deny it again.",
                    self.folder,
                    exc.errno,
                ) from exc
            return True
        finally:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)  # (a kill here: see store/leftovers.py)

    def claim_dropped(self, tool_call_id: str, message_id: str) -> None:
        """:meth:`claim` a call its turn stopped waiting for, so that a decision another
        process makes later is refused rather than reported made.

        A symbolic link in the way is left as it is, without an error: the turn is
        ending either way, and no decision is ever applied through a link (:meth:`read`).
        """
        with contextlib.suppress(CorruptDataError):
            self.claim(tool_call_id, message_id)

    def read(self, tool_call_id: str, message_id: str) -> RemoteDecision | None:
        """The whole decision recorded for a call of ``message_id``, or None.

        None, with a :class:`~cm_notebook.store.diagnostics.StoreWarning`, for a record
        or folder that is a symbolic link: it is never applied.
        """
        path = self._path(tool_call_id, message_id)
        try:
            # Neither the folder nor the record is followed if it is a link (checked
            # with the record's opening). Refusing is the safe side: the call stays
            # waiting and runs only once decided, here or by a record in the folder.
            # No real decision is lost so: a decider never writes through a link.
            record = _json.loads(read_regular(path), max_chars=_MAX_RECORD_CHARS)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except CorruptDataError:
            link = next((p for p in (self.folder, path) if os.path.islink(p)), None)
            if link is not None:
                self._ignored(_linked(link), f"a decision on tool call {tool_call_id!r} (it waits)")
            return None  # anything else than a file there: damaged, as below
        except (OSError, ValueError):
            return None  # damaged: the call stays pending, to be decided here
        if not isinstance(record, dict) or record.get("tool_call_id") != tool_call_id:
            return None
        if record.get("claimed"):
            return None  # the waiting process's own decision (claim): nothing to apply
        reason, arguments = record.get("reason"), record.get("arguments")
        by, remember, pid = record.get("by"), record.get("remember"), record.get("pid")
        return RemoteDecision(
            approved=bool(record.get("approved")),
            reason=reason if isinstance(reason, str) else None,
            arguments=arguments if isinstance(arguments, dict) else None,
            by=by if isinstance(by, str) else "user",
            remember=remember if isinstance(remember, str) else "once",
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else 0,
        )

    def discard(self, tool_call_id: str, message_id: str) -> None:
        """Remove a record that could not be applied, so the call can be decided again."""
        if os.path.islink(self.folder):
            return  # never a file outside the data directory (read applies none there)
        self._path(tool_call_id, message_id).unlink(missing_ok=True)

    # -- stopping a turn ---------------------------------------------------------------

    def _stop_path(self, turn_id: str) -> Path:
        digest = hashlib.sha256(turn_id.encode()).hexdigest()[:32]
        return self.folder / f"{_STOP_PREFIX}{digest}.json"

    def post_stop(self, turn_id: str, branch: str) -> None:
        """Ask the process running turn ``turn_id`` (on ``branch``) to stop it.

        A symbolic link as the folder or the stop record raises
        :class:`~cm_notebook.errors.CorruptDataError`: the stop could not be asked.
        """
        self._refuse_linked_folder()
        record = json.dumps({"turn_id": turn_id, "branch": branch}).encode()
        path = self._stop_path(turn_id)
        try:
            self.folder.mkdir(exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW, 0o600)
        except FileExistsError:
            if os.path.islink(path):
                # The running process ignores it (stop_asked): not "asked already".
                raise _linked(path) from None
            return  # asked already
        except OSError as exc:  # a read-only folder: said the store's way
            raise translate(exc, self.folder, "write") from exc
        try:
            os.write(fd, record)
        except OSError as exc:
            raise translate(exc, path, "write") from exc
        finally:
            os.close(fd)

    def stop_asked(self, turn_id: str) -> bool:
        """Whether another process asked to stop turn ``turn_id``.

        A stop record or folder that is a symbolic link is no request (a warning says
        so): the turn goes on, as it would if nobody had asked.
        """
        # Existence is the request: a record torn by a crash still names its turn.
        path = self._stop_path(turn_id)
        try:
            mode = os.lstat(path).st_mode
        except OSError:
            return False
        linked_from = path if stat.S_ISLNK(mode) else self.folder
        if not os.path.islink(linked_from):
            return True
        # Not obeyed: post_stop never writes through a link, so no real request is
        # lost, and a record someone planted outside the data directory stops nothing.
        self._ignored(_linked(linked_from), f"a stop of turn {turn_id!r} (it goes on)")
        return False


def link_record(temp: Path, path: Path) -> bool:
    """Link the complete record ``temp`` into place at ``path``; False if a decision or
    claim is there already.

    A torn record in the way (empty or not JSON, see :data:`TORN_AFTER_SECONDS`) is
    no decision: it is taken away, so it cannot refuse every decision of its call.
    """
    try:
        os.link(temp, path)
    except FileExistsError:
        if os.path.islink(path):
            # Not taken for a decision (read never applies it) nor removed as a torn
            # record: the decider is told, and the call stays waiting.
            raise _linked(path) from None
        # One remover at a time: two that judged the same torn record could otherwise
        # take away the decision the first of them linked in its place (the move
        # aside, check and link back are three steps). A decider that links into an
        # empty place needs no turn: only a torn record is ever taken away.
        lock = OSLock(path.parent / _TORN_LOCK_NAME)
        try:
            lock.acquire(timeout=_TORN_LOCK_SECONDS)
        except (LockTimeout, OSError):
            return False
        try:
            if not _take_away_torn(path):
                return False
            try:
                os.link(temp, path)
            except FileExistsError:  # another decider linked into the empty place first
                return False
        finally:
            lock.release()
    return True


def _take_away_torn(path: Path) -> bool:
    # Whether ``path`` held a torn record, now removed. Called with the removers' lock
    # held, and only a remover ever replaces a record that is there (deciders link into
    # an empty place only): the file judged torn is the one removed.
    try:
        if time.time() - os.lstat(path).st_mtime < TORN_AFTER_SECONDS or not _torn(path):
            return False
        path.unlink()
    except OSError:
        return False
    return True


def _torn(path: Path) -> bool:
    try:
        record = _json.loads(read_regular(path), max_chars=_MAX_RECORD_CHARS)
    except ValueError:
        return True
    except (OSError, CorruptDataError):  # a link or a folder: not a record to remove
        return False
    return not isinstance(record, dict)
