"""What became of decisions posted for tool calls that wait in another process.

A decision record (:mod:`cm_notebook._remote_decisions`) is applied by the waiting
process's log follower the next time it looks (milliseconds, with file-change
notification). Until then the call's turn may end without it, stopped from anywhere
for instance; the record, posted first, is then never applied, and a poster that
reported "approved" would be wrong. So the poster reads the context's signal log, from
just before it posted, until the waiting process says what became of each call
(:class:`~cm_notebook.signals.ToolCallResolved`): decided with this record (the
signal carries its audit record), or ended without it (no audit record, on the call's
branch or on the branch its turn went on to when another writer moved that branch's
head: the one created at the asking reply, announced with ``BranchCreated``); or that it
refused the record's edited arguments (an ``Error`` signal of kind ``tool``, made by
:func:`still_waits`; the call waits on, to be decided again). It reads on
its own thread, never through the session's event loop, so a notebook cell (whose
loop the session may share) can wait too. A process that does not answer within the
time allowed (busy, or hung) is left to apply the record when it next looks.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .signal_log import LogReader
from .signals import BranchCreated, ErrorReported, ToolCallResolved

__all__ = ["DECISION_WAIT_SECONDS", "DecisionOutcomes", "Outcome", "PostedCall", "still_waits"]

#: How long a poster waits for the waiting process to act on its decision.
DECISION_WAIT_SECONDS = 3.0

# How often the log is read meanwhile (a read that finds nothing new costs an fstat).
_POLL_SECONDS = 0.005


def still_waits(call_id: str, why: object) -> str:
    """The ``Error`` signal's message when a waiting process refuses a posted decision
    (its edited arguments do not fit the tool): the call waits on."""
    return f"{_still_waits_prefix(call_id)}{why}. Approve it again."


def _still_waits_prefix(call_id: str) -> str:
    return f"tool call {call_id!r} still waits: "


@dataclass(frozen=True)
class Outcome:
    """What the waiting process did with a posted decision.

    ``applied``: it decided the call. Otherwise ``refused`` holds why it refused the
    record (the call still waits), or is None: the call ended without it.
    """

    applied: bool
    refused: str | None = None


@dataclass(frozen=True)
class PostedCall:
    """A call a decision is posted for: its id, the reply that asked, and the branch."""

    call_id: str
    message_id: str
    branch: str


class DecisionOutcomes:
    """The outcome of each posted decision, as the waiting process announces it.

    Made before the records are posted (it reads the log from its end as it is then);
    :meth:`forget` a call whose record could not be posted; :meth:`wait` for the rest.
    Used from one thread.
    """

    def __init__(self, log_path: Path, calls: Iterable[PostedCall]) -> None:
        self._reader = LogReader(log_path)
        self._waiting = {(call.call_id, call.message_id): call for call in calls}
        # Per call, the branches its turn may end it on: its own, and the one the turn
        # was diverted to (forked at the asking reply) if another writer moved its head.
        self._branches = {key: {call.branch} for key, call in self._waiting.items()}
        self._outcomes: dict[tuple[str, str], Outcome] = {}

    def forget(self, call_id: str, message_id: str) -> None:
        """Stop waiting for a call (its decision was not posted)."""
        self._waiting.pop((call_id, message_id), None)

    def wait(self, timeout: float = DECISION_WAIT_SECONDS) -> dict[tuple[str, str], Outcome]:
        """Wait until every call has an outcome or ``timeout`` passes, then stop reading.

        Returns the outcome per ``(call id, message id)``; calls without one in time
        are missing.
        """
        deadline = time.monotonic() + timeout
        try:
            while self._waiting:
                for _writer, event in self._reader.poll():
                    if isinstance(event, ToolCallResolved):
                        self._note(event)
                    elif isinstance(event, BranchCreated):
                        self._note_diversion(event)
                    elif isinstance(event, ErrorReported) and event.kind == "tool":
                        self._note_refusal(event)
                if not self._waiting or time.monotonic() >= deadline:
                    break
                time.sleep(_POLL_SECONDS)
        finally:
            self.close()
        return dict(self._outcomes)

    def close(self) -> None:
        """Stop reading the log (:meth:`wait` does it too)."""
        with contextlib.suppress(OSError):
            self._reader.close()

    def _note(self, event: ToolCallResolved) -> None:
        # The first resolution of a call is its outcome: with an audit record naming the
        # reply (the record applied), or without one on the branch it waited on (its
        # turn ended). Ids alone are not enough: each process numbers its own call_1.
        for key, call in list(self._waiting.items()):
            if event.tool_call_id != call.call_id:
                continue
            decision = event.decision
            if decision is not None and decision.message_id == call.message_id:
                self._resolved(key, Outcome(applied=True))
            elif decision is None and event.branch in self._branches[key]:
                self._resolved(key, Outcome(applied=False))

    def _note_diversion(self, event: BranchCreated) -> None:
        # A turn whose head another writer moved goes on, on a new branch forked at its
        # own head: for a call still waiting, the reply that asked for it.
        if event.branch is None:
            return
        for key, call in self._waiting.items():
            if event.head == call.message_id:
                self._branches[key].add(event.branch)

    def _note_refusal(self, event: ErrorReported) -> None:
        for key, call in list(self._waiting.items()):
            if event.branch == call.branch and event.message.startswith(
                _still_waits_prefix(call.call_id)
            ):
                self._resolved(key, Outcome(applied=False, refused=event.message))

    def _resolved(self, key: tuple[str, str], outcome: Outcome) -> None:
        del self._waiting[key]
        self._outcomes[key] = outcome
