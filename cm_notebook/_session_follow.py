"""What a session does about other processes writing the same context.

:class:`FollowOthers` is a base of :class:`~cm_notebook._session_core.SessionCore`. A
session on a store that shares its folder with other processes follows the context's
signal log (:class:`~cm_notebook._follower.LogFollower`): it relays their signals to its
own subscribers with their numbers unchanged, notices a process that died mid-turn
(:mod:`cm_notebook._dead_rounds`), and applies the decisions and stops other processes
recorded for the tool calls and turns waiting here (:mod:`cm_notebook._remote_decisions`).
It also keeps the audit log of decisions made here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from typing import TYPE_CHECKING, cast

from . import events as ev
from ._approval_apply import apply_remote_decision, approve_allowed
from ._approval_log import ApprovalLog
from ._dead_rounds import DeadRounds
from ._dropped import weak_callback
from ._follower import LogFollower
from ._host import BranchMachines
from ._remote_decisions import DecisionBox
from .approvals import ApprovalDesk, ApprovalRecord, Decision, audit_record
from .errors import BranchNotFoundError, CMError
from .model import Message, ToolCall
from .redact import get_logger
from .runner import TurnRunner
from .signal_log import LogReader, SignalLog
from .store import Store
from .store.atomic import Fsync
from .store.folders import context_folder_of
from .store.workers import run_blocking

if TYPE_CHECKING:
    from ._session_core import SessionCore

__all__ = ["FollowOthers"]

_log = get_logger(__name__)


class FollowOthers:
    """Follows other processes' signals and decisions (see the module docstring)."""

    _loop: asyncio.AbstractEventLoop
    _bus: ev.EventBus
    _lock: threading.RLock
    _fsync: Fsync
    _signal_log: SignalLog | None
    _follower: LogFollower | None
    _decisions: DecisionBox | None
    _approvals: ApprovalDesk
    _approval_log: ApprovalLog
    _dead_rounds: DeadRounds
    _runners: dict[str, TurnRunner]
    _machines: BranchMachines

    def _follow(self, store: Store) -> None:
        claim_path = getattr(store, "branch_claim_path", None)
        if self._signal_log is None or claim_path is None:
            return
        self._decisions = DecisionBox(context_folder_of(self._signal_log.path), self._fsync)
        # A call its turn stopped waiting for (cancelled, stopped) is decided: a client
        # of another process approving it then is refused, not told it approved it.
        self._approvals.on_dropped = self._decisions.claim_dropped
        # Weakly: the follower's thread must not keep a dropped session alive
        # (cm_notebook._dropped releases what it held once it is collected).
        self._follower = LogFollower(
            LogReader(self._signal_log.path),
            self._signal_log.writer,
            relay=weak_callback(self._relay, None),
            claim_held=weak_callback(self._dead_rounds.claim_locked, False),
            held_here=weak_callback(self._dead_rounds.held_here, False),
            on_dead=weak_callback(self._dead_rounds.owner_gone, None),
            each_poll=weak_callback(self._apply_remote_decisions, None),
            own_tail=weak_callback(self._signal_log.own_tail, None),
        )
        # The ends of dead turns are announced on the loop, in order with this
        # session's own signals (cm_notebook._dead_rounds.DeadRounds.owner_gone).
        self._dead_rounds.follow(self._follower, self._loop.call_soon_threadsafe)

    def _apply_remote_decisions(self) -> None:
        # From the follower's thread: decisions other processes recorded for the tool
        # calls waiting here are made as if made here, and stops asked for turns
        # running here (cm_notebook._session_stop).
        if self._decisions is None:
            return
        with self._lock:
            turns = [runner.turn for runner in self._runners.values()]
        for turn in turns:
            if self._decisions.stop_asked(turn.id):
                turn.cancel()
        session = cast("SessionCore", self)  # the one class this is a base of
        for call_id, message_id in self._approvals.waiting():
            apply_remote_decision(session, self._decisions, call_id, message_id)
        approve_allowed(session)  # a context allowance given meanwhile, by any process

    async def _record_decision(
        self, branch: str, reply: Message | None, call: ToolCall, decision: Decision
    ) -> ApprovalRecord | None:
        # The policy's own decisions follow from configuration: not logged. The log is a
        # record of decisions already applied: failing to write it must not fail the
        # turn (the ToolCallResolved signal still carries the record). Written on a
        # worker thread: its fsync must not hold up the loop (a kernel's, a server's).
        if decision.by == "policy":
            return None
        record = audit_record(branch, reply.id if reply is not None else "", call, decision)
        try:
            await run_blocking(functools.partial(self._approval_log.append, record))
        except CMError as exc:
            _log.warning("%s", exc)
        return record

    def _stop_following(self) -> None:
        if self._follower is not None:
            self._follower.close()

    def _relay(self, event: ev.Event) -> None:
        # From the follower's thread: deliver on the loop's thread, number unchanged.
        moved = _moved_branch(event)
        if moved is not None:
            self._failure_overtaken(moved)  # before the views hear of it

        def deliver() -> None:
            if not self._bus.closed:
                self._bus.relay(event)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody to tell
            self._loop.call_soon_threadsafe(deliver)

    def _failure_overtaken(self, branch: str) -> None:
        # Another process moved ``branch``'s head: a permanent failure this process
        # still holds for it is over (its views already heard the other's turn end
        # Idle), so state_of() stops reporting it and retry() refuses plainly. Only if
        # the head really left the failed turn's: a late signal of a write made before
        # the failure must not end it. Nothing is announced: another process may be
        # running a turn there, and its state is the branch's.
        failed = self._machines.failed_head(branch)
        if failed is None:
            return  # the usual case: no failure here, nothing read
        session = cast("SessionCore", self)  # the one class this is a base of
        try:
            head = session._head(branch)
        except BranchNotFoundError:
            head = None  # deleted since: the failure is over
        except (OSError, CMError, RuntimeError):
            # Unreadable now (or the session closing under it): left as it is; retry()
            # checks the head again anyway. The signal must still be relayed.
            return
        if head != failed:
            self._machines.overtaken(branch, failed)


def _moved_branch(event: ev.Event) -> str | None:
    # The branch whose head another process's ``event`` says it moved, if any.
    if isinstance(event, (ev.MessageAdded, ev.BranchCreated, ev.BranchDeleted)):
        return event.branch
    if isinstance(event, ev.BranchUpdated) and "head" in event.changed:
        return event.branch
    return None
