"""The turn driver: feeds the pure state machine and carries out its effects.

One :class:`TurnRunner` drives one :class:`~cm_notebook.turn.Turn` on one branch, as a
task on the session's event loop. It is the only place where the FSM meets I/O:
provider streams, store writes, tool execution, timers and signals. Each effect that
:func:`cm_notebook.fsm.step` returns is handled by one method below, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import anyio

from . import events as ev
from . import fsm
from .approvals import Decision, unique_call_ids
from .errors import PermanentProviderError, ProviderError, TransientProviderError
from .model import Message, MessageMetadata, MessageStatus, TokenUsage, ToolCall, ToolCallStatus
from .prompts import effective_system, with_system
from .providers.base import (
    ChatRequest,
    Finish,
    Provider,
    TextDelta,
    ToolCallRequest,
    Usage,
)
from .stats import StreamMeter
from .tools import (
    ToolOutcome,
    UnknownToolError,
    denied_result,
    run_tool,
    tool_call_from_request,
)

if TYPE_CHECKING:
    from ._session_core import SessionCore as ContextSession
    from .turn import Turn

__all__ = ["CHECKPOINT_SECONDS", "TurnRunner"]

#: How often an in-progress reply is written to disk (status ``streaming``).
CHECKPOINT_SECONDS = 1.0


@dataclass
class _Reply:
    # The assistant message being generated, and what has arrived for it.
    message: Message
    text: str = ""
    tool_requests: list[ToolCallRequest] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None
    failed_attempts: list[dict[str, Any]] = field(default_factory=list)
    meter: StreamMeter = field(default_factory=StreamMeter)


class TurnRunner:
    """Runs one turn: request, stream, tools, retries, until the FSM says it is over."""

    def __init__(
        self,
        session: ContextSession,
        turn: Turn,
        *,
        start: fsm.Send | fsm.Retry,
        provider: Provider,
        params: Mapping[str, Any],
    ) -> None:
        self.session = session
        self.turn = turn
        self.branch = turn.branch
        self.provider = provider
        self.params = dict(params)
        self._start = start
        self._scope: anyio.CancelScope | None = None
        self._cancelled = False
        self._reply: _Reply | None = None
        self._last_reply: Message | None = None
        self._calls: dict[str, ToolCall] = {}  # this round's tool calls by id
        self._answered: set[str] = set()
        self._seen_call_ids: set[str] = (
            set()
        )  # tool call ids on the path the model saw  # ids of calls whose tool message is stored
        self._failure: Exception | None = None
        self._internal = False  # the failure is a bug (provider or engine), not the model's
        self._effects: deque[fsm.Effect] = deque()
        # The move to Idle or PermanentFailure, signalled only once the turn is wound up
        # and its branch is free: a view (or a callback) may send the next message then.
        self._final: list[fsm.StateChanged] = []

    # -- entry points ------------------------------------------------------------------

    def request_cancel(self) -> None:
        """Stop the turn (called on the runner's loop via call_soon_threadsafe)."""
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> Message:
        """Drive the turn to its end; returns the last assistant message."""
        outcome = "completed"
        crash: Exception | None = None
        try:
            self._feed(self._start)
            with anyio.CancelScope() as scope:
                self._scope = scope
                if self._cancelled:
                    scope.cancel()
                try:
                    outcome = await self._drain()
                except Exception as exc:  # a bug, or the store failed: never leave it stuck
                    crash = exc
            if crash is not None:
                outcome = await self._crashed(crash)
            elif scope.cancelled_caught:
                # Only a cancel that stopped the work counts: one that came while a
                # shielded final write ran finds the turn already finished (a failed
                # turn must still raise, not turn into a "cancelled" one).
                outcome = await self._cancel()
        finally:
            self.turn._finish_listeners()
            self.session._turn_finished(self)
            for change in self._final:
                self._publish_state(change)
        if outcome == "failed":
            assert self._failure is not None
            raise self._failure
        if self._last_reply is None:  # pragma: no cover - every turn makes a reply
            raise PermanentProviderError("the turn ended without a reply")
        return self._last_reply

    # -- the effect loop ---------------------------------------------------------------

    def _feed(self, event: fsm.FSMEvent) -> None:
        machine = self.session._machine(self.branch)
        nxt, effects = fsm.step(
            machine,
            event,
            self.session.retry_policy,
            max_tool_rounds=self.session.max_tool_rounds,
        )
        self.session._set_machine(self.branch, nxt)
        self._effects.extend(effects)

    async def _drain(self) -> str:
        while self._effects:
            effect = self._effects.popleft()
            match effect:
                case fsm.StateChanged() if effect.new not in fsm.ACTIVE_STATES:
                    self._final.append(effect)
                case fsm.StateChanged():
                    self._publish_state(effect)
                case fsm.StartRequest():
                    await self._request()
                case fsm.ScheduleRetry(delay=delay):
                    await anyio.sleep(delay)
                    self._feed(fsm.RetryTimerFired())
                case fsm.RequestApproval(tool_call_ids=ids):
                    await self._approval(ids)
                case fsm.ExecuteTools(approved=approved, denied=denied):
                    await self._execute(approved, denied)
                case fsm.ResolveCancelled(tool_call_ids=ids, reason=reason):
                    await self._resolve_cancelled(ids, reason)
                case fsm.Failed(message=message):
                    await self._fail(message)
                case fsm.AbortRequest():
                    pass  # leaving the cancel scope already stopped the work
                case fsm.TurnFinished(outcome=outcome):
                    return outcome
        return "completed"  # pragma: no cover - step always ends a turn with TurnFinished

    async def _cancel(self) -> str:
        # Outside the cancelled scope: record what was generated, then let the FSM
        # resolve pending tool calls and finish the turn.
        if self._reply is None and self._last_reply is None:
            # Cancelled before the request was made: the turn still ends with a reply
            # (empty, interrupted), so `await turn` has a message to return.
            with anyio.CancelScope(shield=True):
                head = (
                    (await self.session._store.get_metadata(self.session.id))
                    .branches[self.branch]
                    .head
                )
                await self._new_reply(head)
        reason = "cancelled by the user"
        await self._wind_down(MessageStatus.INTERRUPTED, reason, reason)
        return "cancelled"

    async def _crashed(self, exc: Exception) -> str:
        # Something that is not a provider failure broke the turn (a bug, a store that
        # cannot write). End it like a cancel, so the branch is free and the tree valid,
        # mark the reply as an error, tell the views, and let `await turn` raise ``exc``.
        self._failure = exc
        message = f"internal error: {type(exc).__name__}: {exc}"
        # The store may be what failed: the first error is the one to report.
        with contextlib.suppress(Exception):
            await self._wind_down(
                MessageStatus.ERROR, message, "not run: the turn stopped on an internal error"
            )
        self.session._publish(ev.Error(branch=self.branch, kind="internal", message=message))
        return "failed"

    async def _wind_down(self, status: MessageStatus, reason: str, tools_reason: str) -> None:
        # Finish the reply in progress and answer every unanswered tool call of the round
        # (the FSM's ResolveCancelled ids are among them). The machine is reset even if
        # a write fails; run() signals the move to Idle once all this is done.
        try:
            if self._reply is not None:
                await self._finish_reply(status, reason)
        finally:
            self._effects.clear()
            if self.session._machine(self.branch).state in fsm.ACTIVE_STATES:
                self._feed(fsm.Cancel())
            self._final += [e for e in self._effects if isinstance(e, fsm.StateChanged)]
            self._effects.clear()
        # Providers refuse a conversation where a tool call has no result.
        unanswered = tuple(c for c in self._calls if c not in self._answered)
        if unanswered:
            await self._resolve_cancelled(unanswered, tools_reason)

    # -- requests ----------------------------------------------------------------------

    async def _request(self) -> None:
        session = self.session
        if self._reply is None:
            history = await session._request_messages(self.branch)
            reply = await self._new_reply(history[-1].id if history else None)
        else:
            reply = self._reply
            history = await session._request_messages(self.branch, exclude=reply.message.id)
        self._seen_call_ids = {call.id for message in history for call in message.tool_calls}
        restarted = bool(reply.text)
        reply.text = ""
        reply.tool_requests.clear()
        reply.usage = None
        reply.finish_reason = None
        if restarted:
            # A retry restarts the text (its deltas start again at offset 0): the stored
            # text must restart too, or a view that re-pulls gets the failed attempt's
            # text (kept in ``failed_attempts``).
            await self._checkpoint(reply)
        self.turn._set_message(reply.message.id)
        reply.meter.attempt()
        request = ChatRequest(
            messages=with_system(reply.message.metadata.system_prompt, history),
            tools=session.tools.specs(),
            params=self.params,
        )
        try:
            await self._stream(request, reply)
        except TransientProviderError as exc:
            await self._transient(exc, reply)
            return
        except ProviderError as exc:
            self._failure = exc
            self._feed(fsm.PermanentError(str(exc)))
            return
        await self._complete(reply)

    async def _new_reply(self, head: str | None) -> _Reply:
        # The assistant message this turn writes, stored as ``streaming`` at once. It
        # records the system prompt it is generated under; _request sends exactly that.
        metadata = await self.session._store.get_metadata(self.session.id)
        message = Message(
            role="assistant",
            parent_id=head,
            status=MessageStatus.STREAMING,
            metadata=MessageMetadata(
                provider=self.provider.name,
                model=str(self.params.get("model") or self.provider.model),
                parameters={k: v for k, v in self.params.items() if k != "model"},
                system_prompt=effective_system(metadata, self.branch),
            ),
        )
        await self.session._store.append_message(self.session.id, message, branch=self.branch)
        self._reply = _Reply(message=message)
        self.session._publish(
            ev.MessageAdded(
                branch=self.branch, message_id=message.id, parent_id=head, role="assistant"
            )
        )
        return self._reply

    @contextlib.contextmanager
    def _provider_errors(self) -> Iterator[None]:
        # Anything but ProviderError is a bug in the provider: fail the turn for good
        # (escaping would leave the branch stuck), keeping the bug as __cause__.
        try:
            yield
        except ProviderError:
            raise
        except Exception as exc:
            self._internal = True
            name = self.provider.name
            raise PermanentProviderError(
                f"internal error in provider {name!r}: {type(exc).__name__}: {exc}",
                provider=name,
            ) from exc

    async def _stream(self, request: ChatRequest, reply: _Reply) -> None:
        last_checkpoint = time.monotonic()
        started = False
        with self._provider_errors():
            stream = self.provider.stream(request)
        try:
            while True:
                with self._provider_errors():
                    event = await anext(stream, None)
                if event is None:
                    break
                if isinstance(event, TextDelta):
                    if not event.text:
                        continue
                    reply.meter.chunk()
                    if not started:
                        started = True
                        self._feed(fsm.ResponseStarted())
                        await self._publish_pending_state()
                    offset = len(reply.text)
                    reply.text += event.text
                    self.turn._append_text(event.text)
                    self.session._publish(
                        ev.ContentDelta(
                            branch=self.branch,
                            message_id=reply.message.id,
                            text=event.text,
                            offset=offset,
                        )
                    )
                    if time.monotonic() - last_checkpoint >= CHECKPOINT_SECONDS:
                        last_checkpoint = time.monotonic()
                        await self._checkpoint(reply)
                elif isinstance(event, ToolCallRequest):
                    reply.tool_requests.append(event)
                elif isinstance(event, Usage):
                    reply.usage = event
                    reply.meter.usage(event.output_tokens)
                elif isinstance(event, Finish):
                    reply.finish_reason = event.reason
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True), self._provider_errors():
                    await aclose()

    def _publish_state(self, effect: fsm.StateChanged) -> None:
        self.session._publish(
            ev.StateChanged(
                branch=self.branch, old=effect.old, new=effect.new, turn_id=self.turn.id
            )
        )

    async def _publish_pending_state(self) -> None:
        # ResponseStarted's StateChanged must go out before the first delta.
        while self._effects and isinstance(self._effects[0], fsm.StateChanged):
            effect = self._effects.popleft()
            assert isinstance(effect, fsm.StateChanged)
            self._publish_state(effect)

    async def _checkpoint(self, reply: _Reply) -> None:
        message = reply.message.model_copy(update={"content": reply.text})
        await self.session._store.update_message(self.session.id, message)

    async def _transient(self, exc: TransientProviderError, reply: _Reply) -> None:
        # Keep the partial text of the failed attempt: nothing generated is ever lost.
        reply.failed_attempts.append(
            {"error": str(exc), "text": reply.text, "status_code": exc.status_code}
        )
        metadata = reply.message.metadata.model_copy(
            update={"failed_attempts": list(reply.failed_attempts)}
        )
        reply.message = reply.message.model_copy(update={"metadata": metadata})
        await self._checkpoint(reply)
        self._failure = exc
        self._feed(
            fsm.TransientError(str(exc), retry_after=exc.retry_after, jitter=random.random())
        )
        nxt = self._effects[-1] if self._effects else None
        if isinstance(nxt, fsm.ScheduleRetry):
            self.session._publish(
                ev.Error(
                    branch=self.branch,
                    kind="transient",
                    message=f"{exc} (retrying in {nxt.delay:.1f} s, attempt {nxt.attempt})",
                )
            )

    async def _complete(self, reply: _Reply) -> None:
        calls = [tool_call_from_request(r, self.session.tools)[0] for r in reply.tool_requests]
        # Providers only promise ids unique within one reply; the desk and the path need
        # them unique across branches and turns (e.g. two fan-out arms both say "call_1").
        calls = unique_call_ids(calls, self.session._approvals.ids() | self._seen_call_ids)
        self._calls = {call.id: call for call in calls}
        self._answered = set()
        await self._finish_reply(MessageStatus.COMPLETE, None, tool_calls=calls)
        self._feed(fsm.ResponseCompleted(tuple(self._calls)))

    async def _finish_reply(
        self,
        status: MessageStatus,
        error: str | None,
        *,
        tool_calls: list[ToolCall] | None = None,
    ) -> None:
        reply = self._reply
        assert reply is not None
        usage = reply.usage
        stats = reply.meter.stats()
        metadata = reply.message.metadata.model_copy(
            update={
                "usage": TokenUsage(
                    input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
                )
                if usage
                else None,
                "duration_ms": stats.duration_ms,
                "finish_reason": reply.finish_reason,
                "error": error,
                "stats": stats,
            }
        )
        final = reply.message.model_copy(
            update={
                "content": reply.text,
                "status": status,
                "metadata": metadata,
                "tool_calls": tool_calls if tool_calls is not None else [],
            }
        )
        with anyio.CancelScope(shield=True):
            await self.session._store.update_message(self.session.id, final)
        self._reply = None
        self._last_reply = final
        self.session._publish(
            ev.MessageCompleted(branch=self.branch, message_id=final.id, status=status)
        )

    async def _fail(self, message: str) -> None:
        if self._reply is not None:
            await self._finish_reply(MessageStatus.ERROR, message)
        if not isinstance(self._failure, PermanentProviderError):
            self._failure = PermanentProviderError(message)
        kind: Literal["internal", "permanent"] = "internal" if self._internal else "permanent"
        self.session._publish(ev.Error(branch=self.branch, kind=kind, message=message))

    # -- tools -------------------------------------------------------------------------

    async def _approval(self, ids: tuple[str, ...]) -> None:
        session = self.session
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
                tool = session.tools.get(call.name)
            except UnknownToolError as exc:  # removed since the model asked for it
                self._calls[call_id] = _failed(call, exc)
                immediate.append((call_id, Decision(False, str(exc))))
                continue
            policy = session.tool_policy.decide(tool)
            if policy == "auto":
                immediate.append((call_id, Decision(True)))
            elif policy == "deny":
                immediate.append((call_id, Decision(False, "denied by the approval policy")))
            else:
                asked[call_id] = session._approvals.register(self.branch, message_id, call)
        if asked:
            session._publish(
                ev.ToolApprovalRequested(
                    branch=self.branch, message_id=message_id, tool_call_ids=tuple(asked)
                )
            )
        for call_id, decision in immediate:
            self._decide(call_id, decision)
        try:
            while asked:
                done, _ = await asyncio.wait(
                    set(asked.values()), return_when=asyncio.FIRST_COMPLETED
                )
                for call_id, pending in list(asked.items()):
                    if pending in done:
                        del asked[call_id]
                        self._decide(call_id, pending.result())
        finally:
            for call_id in asked:
                session._approvals.drop(call_id)

    def _decide(self, call_id: str, decision: Decision) -> None:
        call = self._calls[call_id]
        if call.status is not ToolCallStatus.FAILED:
            update: dict[str, Any] = {
                "status": ToolCallStatus.APPROVED if decision.approved else ToolCallStatus.DENIED,
                "reason": decision.reason,
            }
            if decision.arguments is not None:
                update["arguments"] = decision.arguments
            call = call.model_copy(update=update)
            self._calls[call_id] = call
            self.session._publish(
                ev.ToolCallResolved(
                    branch=self.branch,
                    tool_call_id=call_id,
                    status=call.status,
                    reason=call.reason,
                )
            )
        self._feed(fsm.ToolDecided(call_id, decision.approved))

    async def _execute(self, approved: tuple[str, ...], denied: tuple[str, ...]) -> None:
        session = self.session
        order = [call_id for call_id in self._calls if call_id in approved or call_id in denied]
        for call_id in order:
            call = self._calls[call_id]
            if call_id in approved:
                call = call.model_copy(update={"status": ToolCallStatus.RUNNING})
                self._calls[call_id] = call
                await self._save_calls()
                try:
                    tool = session.tools.get(call.name)
                except UnknownToolError as exc:  # removed while the call awaited approval
                    outcome = ToolOutcome(ToolCallStatus.FAILED, f"error: {exc}", 0.0)
                else:
                    outcome = await run_tool(tool, call.arguments, timeout=session.tool_timeout)
                call = call.model_copy(update={"status": outcome.status, "result": outcome.result})
                text = outcome.result
                if not outcome.ok:
                    session._publish(
                        ev.Error(branch=self.branch, kind="tool", message=outcome.result)
                    )
            elif call.status is ToolCallStatus.FAILED:
                text = call.result or f"error: {call.reason}"
            else:
                text = denied_result(call.name, call.reason)
                call = call.model_copy(update={"result": text})
            self._calls[call_id] = call
            await self._answer_call(call, text)
        await self._save_calls()
        self._feed(fsm.ToolsFinished())

    async def _answer_call(self, call: ToolCall, text: str) -> None:
        session = self.session
        head = (await session._store.get_metadata(session.id)).branches[self.branch].head
        message = Message(role="tool", parent_id=head, content=text, tool_call_id=call.id)
        await session._store.append_message(session.id, message, branch=self.branch)
        # Only once it is stored (a store write, once started, is not cancelled): a
        # failed write leaves the call to be answered by the wind-down.
        self._answered.add(call.id)
        session._publish(
            ev.MessageAdded(branch=self.branch, message_id=message.id, parent_id=head, role="tool")
        )
        if call.status in (ToolCallStatus.DONE, ToolCallStatus.FAILED):
            session._publish(
                ev.ToolCallResolved(
                    branch=self.branch, tool_call_id=call.id, status=call.status, reason=call.reason
                )
            )

    async def _resolve_cancelled(self, ids: tuple[str, ...], reason: str) -> None:
        for call_id in ids:
            self.session._approvals.drop(call_id)
            call = self._calls.get(call_id)
            if call is None or call_id in self._answered:
                continue
            text = denied_result(call.name, reason)
            call = call.model_copy(
                update={"status": ToolCallStatus.DENIED, "reason": reason, "result": text}
            )
            self._calls[call_id] = call
            with anyio.CancelScope(shield=True):
                await self._answer_call(call, text)
            self.session._publish(
                ev.ToolCallResolved(
                    branch=self.branch,
                    tool_call_id=call_id,
                    status=ToolCallStatus.DENIED,
                    reason=reason,
                )
            )
        with anyio.CancelScope(shield=True):
            await self._save_calls()

    async def _save_calls(self) -> None:
        # The assistant message that asked for the calls records what became of them.
        if self._last_reply is None or not self._calls:
            return
        updated = self._last_reply.model_copy(update={"tool_calls": list(self._calls.values())})
        await self.session._store.update_message(self.session.id, updated)
        self._last_reply = updated


def _failed(call: ToolCall, exc: Exception) -> ToolCall:
    # A call that cannot run, as tool_call_from_request marks one (fail closed).
    error = f"error: {exc}"
    return call.model_copy(
        update={"status": ToolCallStatus.FAILED, "reason": str(exc), "result": error}
    )
