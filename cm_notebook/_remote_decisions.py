"""Approve or deny a tool call that waits in another process.

The process running the turn holds the call on its approval desk. Another process
(a second kernel, the Jupyter server) that is asked to decide it writes a decision
record, ``<context>/decisions/<digest of message id and call id>.json`` (a provider
may reuse a call id in a later reply); the first record for a
call wins (it is linked into place, which fails if one exists). The waiting process's
log follower looks for records of the calls on its desk each time it polls, applies
the decision as if it were made locally. The record stays (a few bytes per decision),
so a second decision for the same call is refused however late it comes. The waiting
turn's ``ToolCallResolved`` signal then tells every process the outcome.

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
from pathlib import Path

__all__ = ["DecisionBox"]

_STOP_PREFIX = "stop-"

_FOLDER = "decisions"


class DecisionBox:
    """The decision records of one context folder."""

    def __init__(self, context_dir: Path) -> None:
        self.folder = context_dir / _FOLDER

    def _path(self, tool_call_id: str, message_id: str) -> Path:
        digest = hashlib.sha256(f"{message_id}\0{tool_call_id}".encode()).hexdigest()[:32]
        return self.folder / f"{digest}.json"

    def post(
        self, tool_call_id: str, message_id: str, *, approved: bool, reason: str | None
    ) -> bool:
        """Record a decision for a call of ``message_id``; False if one was recorded already."""
        self.folder.mkdir(exist_ok=True)
        record = {"tool_call_id": tool_call_id, "approved": approved, "reason": reason}
        temp = self.folder / f".{secrets.token_hex(8)}.tmp"
        with temp.open("w", encoding="utf-8") as out:
            json.dump(record, out)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temp, self._path(tool_call_id, message_id))
        except FileExistsError:
            return False
        finally:
            temp.unlink()
        return True

    def take(self, tool_call_id: str, message_id: str) -> tuple[bool, str | None] | None:
        """The decision recorded for a call of ``message_id``, or None."""
        path = self._path(tool_call_id, message_id)
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except (OSError, ValueError):
            return None  # damaged: the call stays pending, to be decided here
        if not isinstance(record, dict) or record.get("tool_call_id") != tool_call_id:
            return None
        reason = record.get("reason")
        return bool(record.get("approved")), reason if isinstance(reason, str) else None

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
