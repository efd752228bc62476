"""What a turn runner is given by its session: an explicit, small interface.

The send path is session -> turn runner -> state machine -> provider -> store ->
signals. The session (:mod:`cm_notebook.session`) builds one :class:`TurnHost` per turn
and hands it to the :class:`~cm_notebook.runner.TurnRunner`; the runner uses nothing
else of the session, so each side owns its state: the session its branches, claims
and registry of running turns, the runner the turn in progress.

:class:`BranchMachines` holds the state machine of every branch (per branch: two
branches run two turns at once); the runner steps its branch's machine through it.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from . import events as ev
from . import fsm
from .approvals import ApprovalDesk, ApprovalRecord, Decision, Remember
from .model import Message, ToolCall
from .retry import RetryPolicy
from .store import Store
from .tools import ToolPolicy, ToolRegistry
from .turn import Turn

__all__ = ["BranchMachines", "TurnHost"]


class BranchMachines:
    """The state machine of each branch of one context (``Idle`` until a turn starts).

    For a branch whose last turn failed for good it also keeps the head that turn left
    (its failed reply): only this process knows of the failure, and once another
    process has moved the branch on, a retry would replace that process's reply.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._machines: dict[str, fsm.Machine] = {}
        self._failed_heads: dict[str, str] = {}  # branch -> head its failed turn left

    def get(self, branch: str) -> fsm.Machine:
        """The machine of ``branch``."""
        with self._lock:
            return self._machines.get(branch) or fsm.Machine.initial()

    def step(
        self, branch: str, given: fsm.Input, policy: RetryPolicy, max_tool_rounds: int
    ) -> tuple[fsm.Effect, ...]:
        """Feed ``given`` to the machine of ``branch``; returns the effects to carry out."""
        with self._lock:
            machine = self._machines.get(branch) or fsm.Machine.initial()
            nxt, effects = fsm.step(machine, given, policy, max_tool_rounds=max_tool_rounds)
            self._machines[branch] = nxt
            if nxt.state is not fsm.State.PERMANENT_FAILURE:
                self._failed_heads.pop(branch, None)
        return effects

    def failed_at(self, branch: str, head: str | None) -> None:
        """Record ``head`` as where the failed turn of ``branch`` left it (called by the
        turn once its machine is in ``PermanentFailure``)."""
        with self._lock:
            state = (self._machines.get(branch) or fsm.Machine.initial()).state
            if state is fsm.State.PERMANENT_FAILURE and head is not None:
                self._failed_heads[branch] = head

    def adopt_failure(self, branch: str, head: str) -> None:
        """Take the failed reply ``head`` of an ``Idle`` branch (found on disk: the turn
        failed before the context was reopened, or in another process) as this
        process's permanent failure, so that it can be retried."""
        with self._lock:
            machine = self._machines.get(branch) or fsm.Machine.initial()
            if machine.state is fsm.State.IDLE:
                self._machines[branch] = replace(machine, state=fsm.State.PERMANENT_FAILURE)
                self._failed_heads[branch] = head

    def failed_head(self, branch: str) -> str | None:
        """The head the permanent failure of ``branch`` left, if it is in one (None:
        no failure, or none recorded)."""
        with self._lock:
            return self._failed_heads.get(branch)

    def overtaken(self, branch: str, failed_head: str) -> bool:
        """Another writer moved ``branch`` on from ``failed_head``: its failure here is
        over (``Idle`` again, as a send or regenerate would be). Only if the failure is
        still the one that left ``failed_head``; True if the machine was reset."""
        with self._lock:
            machine = self._machines.get(branch)
            if machine is None or self._failed_heads.get(branch) != failed_head:
                return False
            # Cancel takes PermanentFailure to Idle with no effect to carry out.
            self._machines[branch], _ = fsm.step(machine, fsm.Cancel())
            del self._failed_heads[branch]
            return True

    def forget(self, branch: str) -> None:
        """Drop the machine of a deleted branch."""
        with self._lock:
            self._machines.pop(branch, None)
            self._failed_heads.pop(branch, None)


@dataclass(frozen=True)
class TurnHost:
    """Everything one turn needs from its session.

    Attributes:
        context_id: the context the turn writes to.
        store: where messages and heads are written.
        publish: puts a signal on the session's bus (from any thread).
        publish_delta: ``publish_delta(branch, message_id, text, offset)`` puts a text
            delta on the bus (from the session's loop only), cheaper than ``publish``.
        machines: the per-branch state machines.
        approvals: where tool calls wait for a person.
        tools: the tools on offer now (a notebook may replace them mid-turn).
        tool_policy: which tools run without asking, now.
        retry_policy: how transient provider failures are retried.
        max_tool_rounds: consecutive tool rounds before the turn stops.
        tool_timeout: seconds a tool may run (None: no limit).
        conversation: ``conversation(branch, exclude, head)``, the messages a request
            sends for ``branch`` (system prompt first) on the path ending at ``head``
            (the turn's own head), leaving out message ``exclude``.
        remember: given each message the turn has stored, as stored, so the next
            request need not read it back.
        finished: called once the turn is over, before its final state is signalled,
            so the branch is free for the next send when views hear of it.
        unsettled: given a message whose final state could not be stored (a full
            disk); the session stores it as soon as it can, so it is not left
            ``streaming``.
        settled: given the id of a message whose final state was stored after all
            (the wind-down's interrupted state, say): a state refused earlier must no
            longer be stored over it.
        allowed: the allow-list scope (``"session"``/``"context"``) under which a tool
            runs without asking, or None (see :mod:`cm_notebook._approval_log`).
        record: ``await record(branch, reply, call, decision)`` adds a decision on
            ``call`` (as the model asked for it) to the approval audit log, off the
            event loop (the record is fsynced), and returns the record (None for the
            approval policy's own decisions, which are not logged).
    """

    context_id: str
    store: Store
    publish: Callable[[ev.BaseEvent], None]
    publish_delta: Callable[[str | None, str, str, int], None]
    machines: BranchMachines
    approvals: ApprovalDesk
    tools: Callable[[], ToolRegistry]
    tool_policy: Callable[[], ToolPolicy]
    retry_policy: RetryPolicy
    max_tool_rounds: int
    tool_timeout: float | None
    conversation: Callable[[str, str | None, str | None], Awaitable[list[Message]]]
    remember: Callable[[Message], None]
    finished: Callable[[Turn], None]
    unsettled: Callable[[Message], None]
    settled: Callable[[str], None]
    allowed: Callable[[str], Remember | None] = lambda _tool: None
    record: Callable[
        [str, Message | None, ToolCall, Decision], Awaitable[ApprovalRecord | None]
    ] = lambda *_args: _nothing_recorded()


async def _nothing_recorded() -> ApprovalRecord | None:
    return None
