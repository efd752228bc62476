"""The tool rounds of a turn: approval, running the tools, storing their results.

:class:`ToolRounds` is a base of :class:`~cm_notebook.runner.TurnRunner`. When a
reply asks for tools, the state machine asks for approval (:meth:`_approval`: the
policy decides, or the call waits on the session's approval desk), then for the
approved calls to run and every call to be answered (:meth:`_execute`); a cancelled
turn answers what it asked for (:meth:`_resolve_cancelled`). The assistant message
that asked records what became of each call: decisions that arrive together in one
write, and each call as running before its tool starts (in a large round, the next few
calls in one write: :func:`marks_ahead`), so that a process killed meanwhile never
leaves a call that ran recorded as never run.

A call stopped by a cancel says what is known of it: *denied* only if its tool never
started (:func:`~cm_notebook.tools.denied_result`: "do not retry it unchanged"); one
cut off while running is *failed*, "interrupted while running", since it may have done
its work (a sync tool's thread cannot be stopped and runs on); one that had finished
keeps its own result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import anyio

from . import events as ev
from . import fsm
from ._host import TurnHost
from ._turn_writes import TurnWrites
from .approvals import Decision, without_asking
from .model import Message, ToolCall, ToolCallStatus
from .tools import ToolOutcome, UnknownToolError, denied_result, run_tool

__all__ = ["RUNNING_MARKS", "CallStarts", "ToolRounds", "interrupted_result", "marks_ahead"]

#: How many times at most the calls of one round are marked running by rewriting the
#: message that asked for them (see :func:`marks_ahead`): the message holds every call
#: of the round, so one rewrite per call would cost time quadratic in the calls.
RUNNING_MARKS = 16


class CallStarts:
    """Which of a round's calls had their tool entered; once closed, no other may start.

    A call counts as started only when its tool's function is entered (a sync tool's in
    its worker thread), not when it is handed over: a cancel landing in between leaves
    it never run. Closing (the round is being wound up) settles the question for good,
    so a worker thread that reaches a call late does not run it after it was said not
    to have run.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()
        self._closed = False

    def starter(self, call_id: str) -> Callable[[], bool]:
        """The ``on_start`` of :func:`~cm_notebook.tools.run_tool` for ``call_id``."""

        def start() -> bool:
            with self._lock:
                if self._closed:
                    return False
                self._ids.add(call_id)
                return True

        return start

    def close(self) -> None:
        """No call starts from now on."""
        with self._lock:
            self._closed = True

    def __contains__(self, call_id: object) -> bool:
        with self._lock:
            return call_id in self._ids


class ToolRounds:
    """Approving, running and answering a reply's tool calls (see the module docstring)."""

    host: TurnHost
    branch: str
    _writes: TurnWrites
    _last_reply: Message | None
    _calls: dict[str, ToolCall]  # this round's tool calls by id
    _answered: set[str]  # ids of calls whose tool message is stored
    _started: CallStarts  # this round's calls whose tool was started
    _claimed_ids: list[str]  # call ids claimed on the desk, not yet asked

    def _feed(self, given: fsm.Input) -> None:
        raise NotImplementedError  # TurnRunner's: the state machine's next step

    async def _approval(self, ids: tuple[str, ...]) -> None:
        host = self.host
        assert self._last_reply is not None
        message_id = self._last_reply.id
        asked: dict[str, asyncio.Future[Decision]] = {}
        immediate: list[tuple[str, Decision]] = []
        for call_id in ids:
            call = self._calls[call_id]
            if call.status is ToolCallStatus.FAILED:  # unknown tool / invalid arguments
                immediate.append((call_id, Decision(False, call.reason)))
                continue
            try:
                tool = host.tools().get(call.name)
            except UnknownToolError as exc:  # removed since the model asked for it
                self._calls[call_id] = _failed(call, exc)
                immediate.append((call_id, Decision(False, str(exc))))
                continue
            policy = host.tool_policy().decide(tool)
            decided = without_asking(policy, host.allowed(call.name) if policy == "ask" else None)
            if decided is not None:
                immediate.append((call_id, decided))
            else:
                asked[call_id] = host.approvals.register(self.branch, message_id, call)
        self._release_ids()  # on the desk now, or decided
        if asked:
            host.publish(
                ev.ToolApprovalRequested(
                    branch=self._writes.target, message_id=message_id, tool_call_ids=tuple(asked)
                )
            )
        try:
            await self._decide(immediate)
            while asked:
                done, _ = await asyncio.wait(
                    set(asked.values()), return_when=asyncio.FIRST_COMPLETED
                )
                # Decisions that arrived together (approve() of every call) are stored
                # together: none waits for a later one.
                arrived = [(c, pending) for c, pending in asked.items() if pending in done]
                for call_id, _pending in arrived:
                    del asked[call_id]
                await self._decide([(call_id, pending.result()) for call_id, pending in arrived])
        finally:
            for call_id in asked:
                host.approvals.drop(call_id)

    def _release_ids(self) -> None:
        if self._claimed_ids:
            self.host.approvals.release_ids(self._claimed_ids)
            self._claimed_ids = []

    async def _decide(self, decisions: list[tuple[str, Decision]]) -> None:
        # Applies ``decisions`` (call id, decision), in order. The stored reply is
        # rewritten once for them all: it holds every call of the round, and a write
        # per decision would cost time quadratic in the calls of a large round.
        # Each call's signal (None: a call that had failed already has none), sent once
        # its decision is stored.
        resolved: list[tuple[str, Decision, ToolCall | None]] = []
        save = False
        for call_id, decision in decisions:
            self.host.approvals.applied(call_id)
            call = self._calls[call_id]
            if call.status is ToolCallStatus.FAILED:
                resolved.append((call_id, decision, None))
                continue
            update: dict[str, Any] = {
                "status": ToolCallStatus.APPROVED if decision.approved else ToolCallStatus.DENIED,
                "reason": decision.reason,
            }
            if decision.arguments is not None:
                update["arguments"] = decision.arguments
            self._calls[call_id] = call.model_copy(update=update)
            # The policy's own decisions follow from settings: neither stored here nor
            # logged (see Host.record).
            save = save or decision.by != "policy"
            resolved.append((call_id, decision, call))  # as the model asked for it
        if save:
            # A person's decision is stored at once: if this process dies before the
            # call runs, the call says it was approved (cm_notebook._dead_rounds). Before
            # the audit log's records (a record of decisions applied, one fsync'd line
            # each): a process killed while it writes them has stored every decision,
            # so none that the log holds is settled as never made.
            await self._save_calls()
        signals: list[ev.ToolCallResolved | None] = []
        for call_id, decision, asked in resolved:
            if asked is None:
                signals.append(None)
                continue
            # The audit log's record (None for the policy's own decisions), before the signal.
            record = await self.host.record(self._writes.target, self._last_reply, asked, decision)
            call = self._calls[call_id]
            signals.append(
                ev.ToolCallResolved(
                    branch=self._writes.target,
                    tool_call_id=call_id,
                    status=call.status,
                    reason=call.reason,
                    decision=record,
                )
            )
        for (call_id, decision, _asked), signal in zip(resolved, signals, strict=True):
            if signal is not None:
                self.host.publish(signal)
            self._feed(fsm.ToolDecided(call_id, decision.approved))

    async def _execute(self, approved: tuple[str, ...], denied: tuple[str, ...]) -> None:
        host = self.host
        runs, not_run = set(approved), set(denied)
        order = [call_id for call_id in self._calls if call_id in runs or call_id in not_run]
        to_run = [call_id for call_id in order if call_id in runs]
        ahead = marks_ahead(len(to_run))
        started = 0  # how many of to_run have been reached
        marked = 0  # how many of to_run are marked running on disk
        for call_id in order:
            if call_id in runs:
                if started == marked:
                    # Stored as running before its tool is entered, so that a process
                    # killed meanwhile leaves it "interrupted", not "never run" (which
                    # invites running it again); the next ``ahead`` calls in one write.
                    marked = min(len(to_run), marked + ahead)
                    for later in to_run[started:marked]:
                        self._calls[later] = self._calls[later].model_copy(
                            update={"status": ToolCallStatus.RUNNING}
                        )
                    await self._save_calls()
                started += 1
                call = self._calls[call_id]
                try:
                    tool = host.tools().get(call.name)
                except UnknownToolError as exc:  # removed while the call awaited approval
                    outcome = ToolOutcome(ToolCallStatus.FAILED, f"error: {exc}", 0.0)
                else:
                    # Started (it may have had effects) only once the tool is entered.
                    outcome = await run_tool(
                        tool,
                        call.arguments,
                        timeout=host.tool_timeout,
                        on_start=self._started.starter(call_id),
                    )
                call = call.model_copy(update={"status": outcome.status, "result": outcome.result})
                text = outcome.result
                if not outcome.ok:
                    host.publish(
                        ev.ErrorReported(branch=self.branch, kind="tool", message=outcome.result)
                    )
            elif (call := self._calls[call_id]).status is ToolCallStatus.FAILED:
                text = call.result or f"error: {call.reason}"
            else:
                text = denied_result(call.name, call.reason)
                call = call.model_copy(update={"result": text})
            self._calls[call_id] = call
            await self._answer_call(call, text)
        await self._save_calls()
        self._feed(fsm.ToolsFinished())

    async def _answer_call(self, call: ToolCall, text: str, *, tell: bool = True) -> None:
        # ``tell``: announce a call that ended (done or failed) once its answer is stored.
        await self._writes.answer_call(call, text)
        # Only once it is stored (a store write, once started, is not cancelled): a
        # failed write leaves the call to be answered by the wind-down.
        self._answered.add(call.id)
        if tell:
            self._tell_ended(call)

    def _tell_ended(self, call: ToolCall) -> None:
        # Announce ``call`` if it ended (done or failed).
        if call.status in (ToolCallStatus.DONE, ToolCallStatus.FAILED):
            self.host.publish(
                ev.ToolCallResolved(
                    branch=self._writes.target,
                    tool_call_id=call.id,
                    status=call.status,
                    reason=call.reason,
                )
            )

    async def _resolve_cancelled(
        self, ids: tuple[str, ...], reason: str, cause: str | None = None
    ) -> None:
        # ``reason``: why calls that never ran did not (e.g. "cancelled by the user");
        # ``cause``: why the turn stopped, for calls it cut off (default ``reason``).
        self._started.close()  # what started is settled: nothing else of the round will
        # Decisions that crossed the stop: logged and told once the calls recording
        # them are stored (the audit log holds decisions applied; see _decide).
        crossed: list[tuple[ToolCall, Decision, ToolCall]] = []
        for call_id in ids:
            self.host.approvals.drop(call_id)
            # A decision made but not applied yet (it crossed the stop): the call
            # records it, so that what approve() or deny() returned is what happened.
            late = self.host.approvals.settle(call_id)
            call = self._calls.get(call_id)
            if call is None or call_id in self._answered:
                continue
            if late is not None and call_id not in self._started:
                asked, call = call, _decided_late(call, late, reason)
                crossed.append((asked, late, call))
            else:
                call = self._cut_off(call, reason, cause or reason)
            self._calls[call_id] = call
            with anyio.CancelScope(shield=True):
                await self._answer_call(call, call.result or "", tell=late is None)
            if (
                late is None and call.status is ToolCallStatus.DENIED
            ):  # _answer_call told of the others
                self.host.publish(
                    ev.ToolCallResolved(
                        branch=self._writes.target,
                        tool_call_id=call_id,
                        status=ToolCallStatus.DENIED,
                        reason=reason,
                    )
                )
        with anyio.CancelScope(shield=True):
            await self._save_calls()
            for asked, decision, settled in crossed:
                await self._tell_late(asked, decision, settled)

    async def _tell_late(self, asked: ToolCall, decision: Decision, settled: ToolCall) -> None:
        # A decision that crossed the stop, its call (``settled``) stored: logged, then
        # announced, and an approval's end after it (approved, but not run).
        record = await self.host.record(self._writes.target, self._last_reply, asked, decision)
        self.host.publish(
            ev.ToolCallResolved(
                branch=self._writes.target,
                tool_call_id=asked.id,
                status=ToolCallStatus.APPROVED if decision.approved else ToolCallStatus.DENIED,
                reason=decision.reason,
                decision=record,
            )
        )
        self._tell_ended(settled)

    def _cut_off(self, call: ToolCall, reason: str, cause: str) -> ToolCall:
        # ``call`` as a stopped turn leaves it, its ``result`` the text for the model.
        if call.id not in self._started and call.status in _APPROVED:
            # Approved (by a person, an allow-list or the policy; the decision already
            # applied, in the audit log) but stopped before its tool started: as a
            # decision that crossed the stop, not denied by anyone.
            return call.model_copy(update=_approved_not_run(call, reason))
        if call.id not in self._started:  # never ran, never approved: denied
            text = denied_result(call.name, reason)
            update = {"status": ToolCallStatus.DENIED, "reason": reason, "result": text}
            return call.model_copy(update=update)
        if call.status is not ToolCallStatus.RUNNING and call.result is not None:
            return call  # it ran to the end; only its answer was not stored
        why = f"interrupted while running ({cause})"
        text = interrupted_result(call.name, cause)
        return call.model_copy(
            update={"status": ToolCallStatus.FAILED, "reason": why, "result": text}
        )

    async def _save_calls(self) -> None:
        # The assistant message that asked for the calls records what became of them.
        if self._last_reply is None or not self._calls:
            return
        updated = self._last_reply.model_copy(update={"tool_calls": list(self._calls.values())})
        await self._writes.update(updated)
        self._last_reply = updated


def marks_ahead(calls: int) -> int:
    """How many of a round's ``calls`` to run are marked running in one write.

    One each for a round of up to :data:`RUNNING_MARKS` calls (the stored status is
    exact: every call marked running was started); in a larger round, enough that the
    asking message is rewritten at most :data:`RUNNING_MARKS` times for them. Marked
    early, a call is only said to be running sooner: if the process dies, the model is
    told it was interrupted and may have run (check before running it again), never
    that it did not run when it did.
    """
    return max(1, -(-calls // RUNNING_MARKS))


def interrupted_result(tool_name: str, cause: str) -> str:
    """The text the model gets for a call cut off while its tool was running.

    Not a denial (that says it never ran): it may have done its work.
    """
    return (
        f"error: the call to tool {tool_name!r} was interrupted while running ({cause}): it "
        "may have completed, and its side effects may have happened; check before running "
        "it again."
    )


def _failed(call: ToolCall, exc: Exception) -> ToolCall:
    # A call that cannot run, as tool_call_from_request marks one (fail closed).
    error = f"error: {exc}"
    return call.model_copy(
        update={"status": ToolCallStatus.FAILED, "reason": str(exc), "result": error}
    )


# A call's statuses once approved and before its tool's end.
_APPROVED = (ToolCallStatus.APPROVED, ToolCallStatus.RUNNING)


def _decided_late(call: ToolCall, decision: Decision, reason: str) -> ToolCall:
    # ``call`` as a decision that reached the turn only as it stopped leaves it: a
    # denial with its reason; an approval as approved but never run (no effect).
    update: dict[str, Any]
    if decision.approved:
        update = _approved_not_run(call, reason)
        if decision.arguments is not None:
            update["arguments"] = decision.arguments
    else:
        text = denied_result(call.name, decision.reason)
        update = {"status": ToolCallStatus.DENIED, "reason": decision.reason, "result": text}
    return call.model_copy(update=update)


def _approved_not_run(call: ToolCall, reason: str) -> dict[str, Any]:
    # The update of an approved call whose turn stopped (``reason``) before it ran.
    return {
        "status": ToolCallStatus.FAILED,
        "reason": approved_not_run_reason(reason),
        "result": approved_not_run_result(call.name, reason),
    }


def approved_not_run_reason(reason: str) -> str:
    """The stored reason of an approved call whose turn stopped (``reason``) before it ran."""
    return f"approved, but not run: the turn was stopped first ({reason})"


def approved_not_run_result(tool_name: str, reason: str) -> str:
    """The text the model gets for an approved call whose turn stopped before it ran."""
    return (
        f"error: the call to tool {tool_name!r} was approved, but its turn was "
        f"stopped ({reason}) before it ran; it had no effect, and may be asked "
        "for again."
    )
