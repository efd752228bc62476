"""The approval desk: tool calls waiting for a person, resolved exactly once.

A turn that needs a decision registers each call here and awaits its future. The
person's ``approve()`` / ``deny()`` may come from any thread (a button's comm handler
can run on a subshell thread), so futures are resolved with ``call_soon_threadsafe``
on the loop that awaits them, and a call is taken out of the desk under a lock: a
double click finds it gone and gets a clear error instead of deciding twice.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable, Set
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from .errors import InvalidInputError, ToolCallAlreadyResolvedError, ToolCallNotFoundError
from .ids import new_id
from .model import ToolCall, ToolCallStatus, UTCDateTime, utcnow
from .tools._policy import Policy

__all__ = [
    "REMEMBER",
    "ApprovalDesk",
    "ApprovalRecord",
    "Decision",
    "PendingCall",
    "Remember",
    "already_resolved",
    "audit_record",
    "check_remember",
    "unique_call_ids",
    "without_asking",
]

_order = itertools.count()

#: How long an approval holds: ``"once"`` this call only; ``"session"`` every later call
#: of the same tool in this session (this process); ``"context"`` every later call of
#: the tool in the context, in every process that opens it (stored in its folder).
Remember = Literal["once", "session", "context"]
REMEMBER: tuple[Remember, ...] = get_args(Remember)


def check_remember(value: object) -> Remember:
    """Return ``value`` if it is ``"once"``, ``"session"`` or ``"context"``; else raise."""
    if value == "once" or value == "session" or value == "context":
        return value
    raise InvalidInputError(f"remember must be one of 'once', 'session', 'context'; got {value!r}")


@dataclass
class Decision:
    """An answer to one pending tool call, and where it came from (for the audit log).

    ``by`` says who decided: ``"user"`` (the default for ``approve()``/``deny()``), a
    name given as ``by=``, ``"http"`` (the REST API), ``"allow-list"`` or ``"policy"``.
    ``remote`` is true when another process decided and a decision record carried it
    here; ``pid`` is the deciding process.
    """

    approved: bool
    reason: str | None = None
    arguments: dict[str, Any] | None = None
    by: str = "user"
    remember: Remember = "once"
    remote: bool = False
    pid: int = field(default_factory=os.getpid)


class ApprovalRecord(BaseModel):
    """One entry of the approval audit log: a decision on one tool call.

    Attributes:
        at: when the decision was applied (UTC).
        branch: the branch whose turn asked for the call.
        message_id: the assistant reply that asked for it.
        tool_call_id: the call.
        tool: the tool's name.
        approved: approved (True) or denied (False).
        by: who decided (see :class:`Decision`).
        remote: decided in another process than the one running the turn.
        pid: the process that decided.
        remember: the scope the decision was given for (``"once"``, ``"session"``,
            ``"context"``); for ``by="allow-list"``, the scope of the rule that applied.
        reason: why (a denial's reason, told to the model), if any.
        arguments: the arguments the model asked for.
        edited_arguments: what ran instead, if a person edited them.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    at: UTCDateTime = Field(default_factory=utcnow)
    branch: str
    message_id: str
    tool_call_id: str
    tool: str
    approved: bool
    by: str = "user"
    remote: bool = False
    pid: int = 0
    remember: Remember = "once"
    reason: str | None = None
    arguments: dict[str, Any] = Field(default_factory=dict)
    edited_arguments: dict[str, Any] | None = None


def without_asking(policy: Policy, allowed: Remember | None) -> Decision | None:
    """The decision made without asking anyone: the approval policy's, else an
    allow-list's (``allowed``: the scope that allows the tool); None: ask a person."""
    if policy == "auto":
        return Decision(True, by="policy")
    if policy == "deny":
        return Decision(False, "denied by the approval policy", by="policy")
    if allowed is not None:
        return Decision(True, by="allow-list", remember=allowed)
    return None


def audit_record(
    branch: str, message_id: str, call: ToolCall, decision: Decision
) -> ApprovalRecord:
    """The audit log's entry for ``decision`` on ``call`` (as the model asked for it)."""
    return ApprovalRecord(
        branch=branch,
        message_id=message_id,
        tool_call_id=call.id,
        tool=call.name,
        approved=decision.approved,
        by=decision.by,
        remote=decision.remote,
        pid=decision.pid,
        remember=decision.remember,
        reason=decision.reason,
        arguments=call.arguments,
        edited_arguments=decision.arguments,
    )


def unique_call_ids(calls: list[ToolCall], taken: set[str]) -> list[ToolCall]:
    """``calls`` with any id that is in ``taken`` (or repeated) given a fresh suffix.

    The new id keeps the provider's as a prefix and stays within ``[A-Za-z0-9_-]``,
    which every provider accepts; the model only needs each call and its result to
    carry the same id, which they do because both are stored under the new one.
    """
    used = set(taken)
    out = []
    for call in calls:
        call_id = call.id
        while call_id in used:
            call_id = f"{call.id[:150]}_{new_id('')[-8:]}"
        used.add(call_id)
        out.append(call if call_id == call.id else call.model_copy(update={"id": call_id}))
    return out


class PendingCall:
    """One tool call waiting for a decision, and the future its turn awaits."""

    def __init__(self, branch: str, message_id: str, call: ToolCall) -> None:
        self.branch = branch
        self.message_id = message_id
        self.call = call
        self.order = next(_order)  # the desk lists calls oldest first
        self.loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Decision] = self.loop.create_future()

    def resolve(self, decision: Decision) -> None:
        """Hand ``decision`` to the waiting turn (safe from any thread)."""

        def set_result() -> None:
            if not self.future.done():
                self.future.set_result(decision)

        self.loop.call_soon_threadsafe(set_result)


class ApprovalDesk:
    """The pending tool calls of one session, by id, oldest first."""

    def __init__(self) -> None:
        #: Called with ``(call id, message id)`` of a call dropped undecided: a session
        #: claims its decision record, so another process cannot decide it later.
        self.on_dropped: Callable[[str, str], object] | None = None
        self._lock = threading.Lock()
        self._pending: dict[str, PendingCall] = {}
        # Decisions handed to a turn that has not applied them yet, and the calls a
        # stopped turn has settled itself: a decision and a stop that cross are sorted
        # out here (see settle), so that what approve() or deny() returned is what the
        # call records.
        self._unapplied: dict[str, Decision] = {}
        self._settled: set[str] = set()
        # Ids given to a reply's calls, from then until its turn has asked for them:
        # two turns finishing at once (fan-out arms) must not both pick "call_1".
        self._reserved: set[str] = set()

    def register(self, branch: str, message_id: str, call: ToolCall) -> asyncio.Future[Decision]:
        """Put ``call`` on the desk (from the turn's loop); returns the future to await."""
        pending = PendingCall(branch, message_id, call)
        with self._lock:
            self._pending[call.id] = pending
            # An id may come again in a later turn (another branch's path).
            self._settled.discard(call.id)
            self._unapplied.pop(call.id, None)
        return pending.future

    def claim_ids(self, calls: list[ToolCall], taken: Set[str]) -> list[ToolCall]:
        """``calls`` with ids unique among ``taken``, the calls on the desk and those
        claimed by other turns (see :func:`unique_call_ids`); the ids stay claimed
        until :meth:`release_ids`."""
        with self._lock:
            unique = unique_call_ids(calls, set(taken).union(self._pending, self._reserved))
            self._reserved.update(call.id for call in unique)
        return unique

    def release_ids(self, call_ids: Iterable[str]) -> None:
        """Give back ids from :meth:`claim_ids` (their calls are on the desk or done)."""
        with self._lock:
            self._reserved.difference_update(call_ids)

    def drop(self, call_id: str) -> None:
        """Remove a call that no longer needs a decision (e.g. its turn was cancelled);
        :attr:`on_dropped` is told of a call that was still pending."""
        with self._lock:
            dropped = self._pending.pop(call_id, None)
        if dropped is not None and self.on_dropped is not None:
            self.on_dropped(call_id, dropped.message_id)

    def ids(self) -> set[str]:
        """Ids of the pending calls."""
        with self._lock:
            return set(self._pending)

    def waiting(self) -> list[tuple[str, str]]:
        """``(tool call id, message id)`` of the pending calls, oldest first."""
        with self._lock:
            return [(call_id, p.message_id) for call_id, p in self._pending.items()]

    def branches(self) -> dict[str, str]:
        """The branch of each pending call, by call id."""
        with self._lock:
            return {call_id: pending.branch for call_id, pending in self._pending.items()}

    def calls_with_branches(self) -> list[tuple[ToolCall, str]]:
        """The pending calls with the branch each was asked on, oldest first."""
        with self._lock:
            return [(_copy(pending.call), pending.branch) for pending in self._pending.values()]

    def calls_on(self, branch: str) -> list[ToolCall]:
        """The pending calls asked on ``branch``, oldest first."""
        with self._lock:
            return [_copy(p.call) for p in self._pending.values() if p.branch == branch]

    def calls(self) -> list[ToolCall]:
        """The pending calls, oldest first."""
        with self._lock:
            return [_copy(pending.call) for pending in self._pending.values()]

    async def wait(self, idle: Callable[[], bool], timeout: float | None) -> list[ToolCall]:
        """Wait until calls are pending (returns them) or ``idle()`` says no turn runs (``[]``).

        Polls every 50 ms rather than awaiting a future, so the kernel's Interrupt button
        stops a cell waiting here.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            calls = self.calls()
            if calls:
                return calls
            if idle():
                return []
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"no tool call needed a decision within {timeout} s")
            await asyncio.sleep(0.05)

    def take(
        self,
        call_id: str | None,
        was_resolved: Callable[[str], ToolCall | bool | None],
        branch: str | None = None,
    ) -> list[PendingCall]:
        """Take one call (or all with ``None``), only ``branch``'s if given, to decide it.

        ``was_resolved(call_id)`` is the stored call of that id if there is one (True if
        only known to be settled), for the error to say what became of it.

        Raises:
            ToolCallAlreadyResolvedError: ``call_id`` was settled before (per
                ``was_resolved``): decided (e.g. a second click on the same button), or
                failed without ever waiting (its arguments were invalid).
            ToolCallNotFoundError: nothing is pending under that id (or at all).
        """
        with self._lock:
            if call_id is None:
                taken = [p for p in self._pending.values() if branch in (None, p.branch)]
                for each in taken:
                    del self._pending[each.call.id]
                if not taken:
                    where = f" on branch {branch!r}" if branch is not None else ""
                    raise ToolCallNotFoundError(
                        f"there are no tool calls waiting for approval{where}"
                    )
                return taken
            pending = self._pending.get(call_id)
            if pending is not None and branch in (None, pending.branch):
                del self._pending[call_id]
                return [pending]
            waiting = list(self._pending)
        if pending is not None:
            # Another branch's call of that id waits here: never decide it instead.
            raise ToolCallNotFoundError(
                f"no pending tool call {call_id!r} on branch {branch!r}; the one waiting "
                f"here is on branch {pending.branch!r}"
            )
        settled = was_resolved(call_id)
        if settled:
            raise already_resolved(call_id, settled if isinstance(settled, ToolCall) else None)
        raise ToolCallNotFoundError(
            f"no pending tool call {call_id!r}; pending: {waiting or 'none'}"
        )

    def decide(
        self,
        call_id: str | None,
        was_resolved: Callable[[str], ToolCall | bool | None],
        branch: str | None,
        decision_for: Callable[[PendingCall], Decision],
        claim: Callable[[PendingCall, Decision], bool] | None = None,
    ) -> list[ToolCall]:
        """Decide one call (or all, as in :meth:`take`) with ``decision_for``; returns them.

        All or nothing: if ``decision_for`` raises for any call (refused edited
        arguments, or anything unexpected), no call is decided and every taken call goes
        back on the desk, still pending and answerable, before the error propagates.

        ``claim`` (if given) is asked before each call is decided, and False means
        another process decided it first: the call goes back on the desk, for that
        decision to be applied, and is not among those returned (for one call,
        :class:`ToolCallAlreadyResolvedError` is raised; for all, it is raised only if
        every call was lost so).
        """
        taken = self.take(call_id, was_resolved, branch)
        try:
            decisions = [decision_for(pending) for pending in taken]
            won = [claim is None or claim(p, d) for p, d in zip(taken, decisions, strict=True)]
        except BaseException:  # even an interrupt must not lose a call from the desk
            for pending in taken:
                self.put_back(pending)
            raise
        decided = []
        stopped = False
        for pending, decision, first in zip(taken, decisions, won, strict=True):
            if not first:
                self.put_back(pending)
                continue
            with self._lock:
                # Its turn was stopped and settled the call before this decision
                # could reach it: the decision is not made (the call says so).
                stopped = stopped or pending.call.id in self._settled
                if pending.call.id in self._settled:
                    continue
                self._unapplied[pending.call.id] = decision
            pending.resolve(decision)
            decided.append(pending.call)
        if taken and not decided:
            if stopped:
                which = f"tool call {call_id!r}" if call_id else "the tool calls waiting"
                raise ToolCallAlreadyResolvedError(
                    f"the turn of {which} was stopped before the decision reached it"
                )
            which = f"tool call {call_id!r} was" if call_id else "the tool calls waiting were"
            raise ToolCallAlreadyResolvedError(f"{which} decided by another client first")
        return decided

    def applied(self, call_id: str) -> None:
        """The turn has applied the decision made for ``call_id``."""
        with self._lock:
            self._unapplied.pop(call_id, None)

    def settle(self, call_id: str) -> Decision | None:
        """A stopped turn settles ``call_id`` itself: the decision made for it that the
        turn has not applied yet (it records that one), else None; a decision that
        comes later is refused (:meth:`decide`)."""
        with self._lock:
            self._settled.add(call_id)
            return self._unapplied.pop(call_id, None)

    def put_back(self, pending: PendingCall) -> None:
        """Return a taken call to the desk (its decision could not be made), in its place."""
        with self._lock:
            self._pending[pending.call.id] = pending
            self._pending = dict(sorted(self._pending.items(), key=lambda item: item[1].order))


def _copy(call: ToolCall) -> ToolCall:
    # What callers are handed: a copy. The desk's own call is what runs once approved,
    # and only approve(arguments=...) may change its arguments (validated, logged).
    return call.model_copy(deep=True)


def already_resolved(call_id: str, call: ToolCall | None) -> ToolCallAlreadyResolvedError:
    """The error for deciding a call that is not waiting: what became of it, as the
    stored ``call`` has it (None: not known here)."""
    status = call.status if call is not None else None
    if call is not None and status is ToolCallStatus.FAILED:
        # Invalid arguments (never asked), or a run that failed: either way, settled.
        why = " ".join((call.reason or call.result or "no reason recorded").split())
        why = why if len(why) <= 300 else why[:297] + "..."
        return ToolCallAlreadyResolvedError(
            f"tool call {call_id!r} is not waiting for approval: it failed ({why}), so "
            "there is nothing to approve or deny. The model is sent its error and may ask "
            "again; decide the calls that are waiting (pending_tool_calls)"
        )
    if call is not None and status is ToolCallStatus.DENIED:
        # Perhaps by nobody: its process ended while it waited, or its turn was stopped.
        why = " ".join((call.reason or "").split())
        why = why if len(why) <= 300 else why[:297] + "..."
        return ToolCallAlreadyResolvedError(
            f"tool call {call_id!r} was already denied" + (f" ({why})" if why else "")
        )
    if status in (ToolCallStatus.APPROVED, ToolCallStatus.RUNNING, ToolCallStatus.DONE):
        return ToolCallAlreadyResolvedError(f"tool call {call_id!r} was already approved")
    if status is ToolCallStatus.PENDING:
        # Stored as waiting, but no live turn waits for it: decided a moment ago (not
        # stored yet), or its turn ended first (stopped, its process killed) and the
        # call is about to be settled, decided by nobody. Which, the file cannot say.
        return ToolCallAlreadyResolvedError(
            f"tool call {call_id!r} is no longer waiting for a decision: it was already "
            "decided, or its turn ended before a decision was made (stopped, or the "
            "process running it ended); what became of it is not stored yet, so read it "
            "again in a moment"
        )
    return ToolCallAlreadyResolvedError(f"tool call {call_id!r} was already approved or denied")
