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
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import _json
from .errors import InvalidInputError
from .store.atomic import Fsync, fsync_dir, mkdir_durable

__all__ = ["DECISIONS_FOLDER", "DecisionBox"]

#: The folder of a context that holds decision and stop records.
DECISIONS_FOLDER = "decisions"


# Edited arguments are bounded by the tools' own limit; a record beyond this is not ours.
_MAX_RECORD_CHARS = 8 * 1024 * 1024


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


class DecisionBox:
    """The decision records of one context folder."""

    def __init__(self, context_dir: Path, fsync: Fsync = os.fsync) -> None:
        self.folder = context_dir / DECISIONS_FOLDER
        self._fsync = fsync  # the store's: every fsync of a context folder goes through it

    def _path(self, tool_call_id: str, message_id: str) -> Path:
        digest = hashlib.sha256(f"{message_id}\0{tool_call_id}".encode()).hexdigest()[:32]
        return self.folder / f"{digest}.json"

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
        mkdir_durable(self.folder, self._fsync)
        temp = self.folder / f".{secrets.token_hex(8)}.tmp"
        with temp.open("w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            self._fsync(out.fileno())
        try:
            os.link(temp, self._path(tool_call_id, message_id))
        except FileExistsError:
            return False
        finally:
            temp.unlink()
        fsync_dir(self.folder, self._fsync)  # the record's name, through a power loss
        return True

    def claim(self, tool_call_id: str, message_id: str) -> bool:
        """Mark a call of ``message_id`` decided by the process it waits in; False if
        another process recorded a decision for it first (that one is then applied).

        So two clients deciding one call at once (a click in the kernel, a request to
        the server) are not both told they decided it. Not made durable: it matters
        only while the waiting process lives. A folder that cannot be written lets the
        local decision through (True), as before there were other processes.
        """
        record = {"tool_call_id": tool_call_id, "claimed": True, "pid": os.getpid()}
        try:
            # No fsync (the caller may be an event loop's thread): see above.
            self.folder.mkdir(exist_ok=True)
            fd = os.open(
                self._path(tool_call_id, message_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
            )
        except FileExistsError:
            return False
        except OSError:
            return True
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(record, out)
        return True

    def read(self, tool_call_id: str, message_id: str) -> RemoteDecision | None:
        """The whole decision recorded for a call of ``message_id``, or None."""
        path = self._path(tool_call_id, message_id)
        try:
            record = _json.loads(path.read_bytes(), max_chars=_MAX_RECORD_CHARS)
        except (FileNotFoundError, NotADirectoryError):
            return None
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
        self._path(tool_call_id, message_id).unlink(missing_ok=True)

    # -- stopping a turn ---------------------------------------------------------------

    def _stop_path(self, turn_id: str) -> Path:
        digest = hashlib.sha256(turn_id.encode()).hexdigest()[:32]
        return self.folder / f"{_STOP_PREFIX}{digest}.json"

    def post_stop(self, turn_id: str, branch: str) -> None:
        """Ask the process running turn ``turn_id`` (on ``branch``) to stop it."""
        self.folder.mkdir(exist_ok=True)
        record = json.dumps({"turn_id": turn_id, "branch": branch}).encode()
        try:
            fd = os.open(self._stop_path(turn_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return  # asked already
        try:
            os.write(fd, record)
        finally:
            os.close(fd)

    def stop_asked(self, turn_id: str) -> bool:
        """Whether another process asked to stop turn ``turn_id``."""
        # Existence is the request: a record torn by a crash still names its turn.
        try:
            return self._stop_path(turn_id).exists()
        except OSError:
            return False
