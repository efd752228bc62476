"""The turn runner: feeds the pure state machine and carries out its effects.

The send path, top to bottom:

1. :meth:`ContextSession.send <cm_notebook.session.ContextSession.send>` claims the
   branch (:mod:`cm_notebook._claims`), stores the user's message with a
   compare-and-set on the branch head (in the background when called on an event
   loop; the runner starts once it is durable), and starts a :class:`TurnRunner` on
   the session's event loop with a :class:`~cm_notebook._host.TurnHost` (all the
   runner may use of the session). It returns a :class:`~cm_notebook.turn.Turn` at once.
2. The runner feeds the branch's state machine (:mod:`cm_notebook.fsm`, pure: inputs
   in, effects out) and carries out each effect with one method below, in order.
3. ``StartRequest``: the runner builds a :class:`~cm_notebook.providers.base.ChatRequest`
   and reads the provider's stream of chunks (text, tool calls, usage, finish). The
   request's messages come from the session's memory of the branch, reading only the
   ones it has not seen (:mod:`cm_notebook._session_messages`), so its cost does not
   grow with the conversation.
4. Every write goes through :class:`~cm_notebook._turn_writes.TurnWrites`: the reply
   stored at once as ``streaming``, checkpoints, the final state, tool messages; each
   head move a compare-and-set on the head the turn started from.
5. Each step is announced on the session's bus as a signal (:mod:`cm_notebook.events`).
6. When the turn is over the runner frees the branch (``host.finished``), then
   signals the final state, so a view hearing ``Idle`` may send at once.

This module is the only place where the state machine meets I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import anyio
import anyio.lowlevel

from . import events as ev
from . import fsm
from ._claims import turn_running
from ._conversation import call_ids
from ._host import TurnHost
from ._runner_tools import CallStarts, ToolRounds
from ._turn_writes import Reply, TurnWrites, store_trouble
from ._unicode import without_surrogates
from .errors import (
    BusyError,
    CMError,
    PermanentProviderError,
    ProviderError,
    StoreError,
    TransientProviderError,
)
from .model import Message, MessageMetadata, MessageStatus, TokenUsage, ToolCall, ToolCallStatus
from .prompts import system_of
from .provenance import endpoint_of, with_provenance
from .providers._errors import provider_bug_error
from .providers.base import (
    ChatRequest,
    Finish,
    Provider,
    ReasoningBlock,
    ReasoningDelta,
    RefusalDelta,
    TextDelta,
    ToolCallRequest,
    Usage,
    complete_params,
)
from .redact import redact_text
from .tools import arguments_text_not_kept, tool_call_from_request
from .turn import Turn

__all__ = ["CHECKPOINT_SECONDS", "TurnRunner"]

#: How often an in-progress reply is written to disk (status ``streaming``).
CHECKPOINT_SECONDS = 1.0

_TEXTS = (TextDelta, RefusalDelta, ReasoningDelta)


class TurnRunner(ToolRounds):
    """Runs one turn: request, stream, tools, retries, until the FSM says it is over."""

    def __init__(
        self,
        host: TurnHost,
        turn: Turn,
        *,
        start: fsm.Send | fsm.Retry,
        head: str | None,
        provider: Provider,
        params: Mapping[str, Any],
    ) -> None:
        self.host = host
        self.turn = turn
        self.branch = turn.branch
        self.provider = provider
        # What is sent, the provider's defaults included: recorded in the reply and
        # hashed, so its provenance says how it was sampled (providers/base.py).
        self.params = complete_params(provider, params)
        self._start = start
        self._writes = TurnWrites(host, turn.branch, head)
        self._scope: anyio.CancelScope | None = None
        self._cancelled = False
        #: Why the turn stops if it is cancelled: stored on the reply, told to the model.
        self.cancel_reason = "cancelled by the user"
        self._reply: Reply | None = None
        self._last_reply: Message | None = None
        self._calls: dict[str, ToolCall] = {}  # this round's tool calls by id
        self._answered: set[str] = set()  # ids of calls whose tool message is stored
        self._started = CallStarts()  # this round's calls whose tool started
        self._history: list[Message] = []  # the path the model saw (for its call ids)
        self._claimed_ids: list[str] = []  # call ids claimed on the desk, not yet asked
        self._failure: Exception | None = None
        self._internal = False  # the failure is a bug (provider or engine), not the model's
        self._effects: deque[fsm.Effect] = deque()
        # The move to Idle or PermanentFailure, signalled only once the turn is wound up
        # and its branch is free: a view (or a callback) may send the next message then.
        self._final: list[fsm.Transition] = []

    # -- entry points ------------------------------------------------------------------

    def request_cancel(self) -> None:
        """Stop the turn (called on the runner's loop via call_soon_threadsafe)."""
        self._cancelled = True
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> Message:
        """Drive the turn to its end; returns the last assistant message.

        Whatever happens, the branch is left free for the next turn: its claim given
        back and its state machine out of the turn's states, even when something
        escapes (the turn's task itself cancelled, a ``KeyboardInterrupt``).
        """
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
                outcome = await self._cancel(self.cancel_reason)
        except BaseException as exc:
            # A task cancelled from outside (its loop shutting down) still ends like a
            # stopped turn, its reply stored; the cancellation goes on to the awaiter.
            if not (isinstance(exc, asyncio.CancelledError) and await self._cancelled_outside()):
                self._abandon(exc)
            raise
        finally:
            self._release_ids()
            self.turn.progress.finish()
            self.host.finished(self.turn)
            for change in self._final:
                self._publish_state(change)
        if outcome == "failed":
            assert self._failure is not None
            raise self._failure
        if self._last_reply is None:  # pragma: no cover - every turn makes a reply
            raise PermanentProviderError("the turn ended without a reply")
        # A copy: the session's message cache holds this object, and what the next
        # request shows the model must not change when the caller edits the result.
        return self._last_reply.model_copy(deep=True)

    # -- the effect loop ---------------------------------------------------------------

    def _feed(self, given: fsm.Input) -> None:
        host = self.host
        self._effects.extend(
            host.machines.step(self.branch, given, host.retry_policy, host.max_tool_rounds)
        )

    async def _drain(self) -> str:
        while self._effects:
            effect = self._effects.popleft()
            match effect:
                case fsm.Transition() if effect.new not in fsm.ACTIVE_STATES:
                    self._final.append(effect)
                case fsm.Transition():
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

    async def _cancel(self, reason: str) -> str:
        # Outside the cancelled scope: record what was generated, then let the FSM
        # resolve pending tool calls and finish the turn.
        state = self.host.machines.get(self.branch).state
        if state is fsm.State.TRANSIENT_FAILURE and self._failure is not None:
            reason = f"{reason} while waiting to retry after: {redact_text(str(self._failure))}"
        if self._reply is None and self._last_reply is None:
            # Cancelled before the request was made: the turn still ends with a reply
            # (empty, interrupted), so `await turn` has a message to return.
            with anyio.CancelScope(shield=True):
                await self._new_reply()
        await self._wind_down(MessageStatus.INTERRUPTED, reason, reason)
        return "cancelled"

    async def _cancelled_outside(self) -> bool:
        # The turn's task itself was cancelled, not through request_cancel (its loop is
        # shutting down: an asyncio.run() that returned while the reply streamed, or
        # code holding the task). It winds down as a stopped turn does, shielded: the
        # reply stored interrupted with its text and its calls answered, rather than a
        # reply left "streaming". False if that fails, or the turn had already wound
        # down: run() abandons it as before.
        if self.host.machines.get(self.branch).state not in fsm.ACTIVE_STATES:
            return False
        try:
            with anyio.CancelScope(shield=True):
                await self._cancel("the task running the turn was cancelled")
        except Exception:
            return False
        return True

    async def _crashed(self, exc: Exception) -> str:
        # Something that is not a provider failure broke the turn: the store could not
        # write (a full disk), or a bug. End it like a cancel, so the branch is free and
        # the tree valid, keep what was streamed, tell the views, and let `await turn`
        # raise a clear error.
        status = MessageStatus.ERROR
        cause = "the turn stopped on an internal error"
        message = f"internal error: {type(exc).__name__}: {exc}"
        self._failure = exc
        if isinstance(exc, (OSError, StoreError)):
            status = MessageStatus.INTERRUPTED
            cause, message = store_trouble(exc)
            if not isinstance(exc, CMError):
                self._failure = StoreError(message)
                self._failure.__cause__ = exc
        # The store may be what failed: the first error is the one to report.
        with contextlib.suppress(Exception):
            await self._wind_down(status, message, f"not run: {cause}", cause)
        self.host.publish(ev.ErrorReported(branch=self.branch, kind="internal", message=message))
        return "failed"

    async def _wind_down(
        self, status: MessageStatus, reason: str, tools_reason: str, cause: str | None = None
    ) -> None:
        # Finish the reply in progress and answer every unanswered tool call of the round
        # (the FSM's ResolveCancelled ids are among them): ``tools_reason`` for calls that
        # never ran, ``cause`` (default ``tools_reason``) for ones cut off while running.
        # The machine is reset even if a write fails; run() signals the move to Idle
        # once all this is done.
        try:
            if self._reply is not None:
                await self._finish_reply(status, reason)
        finally:
            self._reset_machine()
        # Providers refuse a conversation where a tool call has no result.
        unanswered = tuple(c for c in self._calls if c not in self._answered)
        if unanswered:
            await self._resolve_cancelled(unanswered, tools_reason, cause)

    def refusal(self) -> BusyError:
        """The BusyError for a new turn on this branch while this one runs there."""
        waits = self.host.machines.get(self.branch).state is fsm.State.AWAITING_TOOL_APPROVAL
        return turn_running(self.branch, stopping=self.turn.stopping(), awaiting_approval=waits)

    def _reset_machine(self) -> None:
        # End the turn in the branch's machine (Cancel leaves every active state), keeping
        # its moves for run() to signal once the branch is free.
        self._effects.clear()
        if self.host.machines.get(self.branch).state in fsm.ACTIVE_STATES:
            self._feed(fsm.Cancel())
        self._final += [e for e in self._effects if isinstance(e, fsm.Transition)]
        self._effects.clear()

    def _abandon(self, exc: BaseException) -> None:
        # Something escaped run(): the branch must not stay busy (every later send
        # refused). Nothing can be awaited now (the task may be being cancelled), so the
        # final states of the reply in progress and of the round's unanswered calls go to
        # the session, which stores them before the next turn (TurnHost.unsettled).
        self._reset_machine()
        if isinstance(exc, Exception):
            return  # from the wind-down (its writes left their own states), or the first step
        cause = f"the turn was stopped ({type(exc).__name__})"
        if self._reply is not None:
            reply = self._reply
            metadata = reply.message.metadata.model_copy(update={"error": cause})
            self.host.unsettled(
                reply.message.model_copy(
                    update={
                        "content": without_surrogates(reply.text),
                        "status": MessageStatus.INTERRUPTED,
                        "metadata": metadata,
                    }
                )
            )
        asking = self._last_reply
        unanswered = [c for c in self._calls if c not in self._answered]
        if asking is not None and unanswered:
            for call_id in unanswered:
                self._calls[call_id] = self._cut_off(
                    self._calls[call_id], f"not run: {cause}", cause
                )
            calls = list(self._calls.values())
            self.host.unsettled(asking.model_copy(update={"tool_calls": calls}))

    # -- requests ----------------------------------------------------------------------

    async def _request(self) -> None:
        # A stop that came while nothing here waited (a tool that stopped its own turn,
        # then store writes made without suspending) takes effect before the request
        # goes out, not once some later await happens to suspend: one turn of the loop
        # runs the stop's callback, and the cancellation is delivered here.
        await anyio.lowlevel.checkpoint()
        host = self.host
        # The conversation is read before the reply is stored: once a view hears of
        # the reply (MessageAdded), the request goes out with no store read between.
        if self._reply is None:
            history = await host.conversation(self._writes.target, None, self._writes.head)
            reply = await self._new_reply()
        else:
            reply = self._reply
            # Built on the reply's parent: the reply itself (being retried) is left out.
            history = await host.conversation(
                self._writes.target, reply.message.id, reply.message.parent_id
            )
        # The reply records the system prompt it is generated under (the branch's).
        reply.message = reply.message.model_copy(
            update={"metadata": reply.message.metadata.model_copy(update=system_of(history))}
        )
        self._history = history
        self.turn.progress.start_message(reply.message.id)
        reply.meter.attempt()
        request = ChatRequest(messages=history, tools=host.tools().specs(), params=self.params)
        # Provenance: the seed and a hash of exactly what is asked (see provenance.py).
        reply.message = with_provenance(reply.message, request, self.provider.name)
        try:
            await self._stream(request, reply)
        except TransientProviderError as exc:
            await self._transient(exc, reply)
            return
        except ProviderError as exc:
            self._failure = exc
            self._feed(fsm.PermanentFault(str(exc)))
            return
        await self._complete(reply)

    async def _new_reply(self) -> Reply:
        # The assistant message this turn writes, stored as ``streaming`` at once.
        message = Message(
            role="assistant",
            parent_id=self._writes.head,
            status=MessageStatus.STREAMING,
            metadata=MessageMetadata(
                provider=self.provider.name,
                model=str(self.params.get("model") or self.provider.model),
                parameters={k: v for k, v in self.params.items() if k != "model"},
                # Which server answers: another model of the session's provider is sent
                # to the session's base_url, so the model name alone does not say.
                endpoint=endpoint_of(self.provider),
            ),
        )
        self._reply = await self._writes.start_reply(message)
        return self._reply

    @contextlib.contextmanager
    def _provider_errors(self) -> Iterator[None]:
        try:
            yield
        except ProviderError:
            raise
        except (Exception, SystemExit, KeyboardInterrupt) as exc:
            raise self._provider_bug(exc) from exc

    def _provider_bug(self, exc: BaseException) -> PermanentProviderError:
        # Anything but ProviderError is a bug in the provider: fail the turn for good
        # (escaping would leave the branch stuck), keeping the bug as __cause__.
        self._internal = True
        return provider_bug_error(self.provider.name, exc)

    async def _stream(self, request: ChatRequest, reply: Reply) -> None:
        # Once per chunk: plain statements, no context manager (a chunk costs microseconds).
        progress, publish, meter = self.turn.progress, self.host.publish_delta, reply.meter
        checkpoint_at, started = time.monotonic() + CHECKPOINT_SECONDS, False
        with self._provider_errors():
            stream = self.provider.stream(request)
        try:
            while True:
                try:
                    chunk = await anext(stream, None)
                except ProviderError:
                    raise
                except (Exception, SystemExit) as exc:  # _provider_errors, spelled out
                    raise self._provider_bug(exc) from exc
                except KeyboardInterrupt:
                    # The user interrupted the kernel while the provider's code ran: stop
                    # the turn as Stop does (the reply kept, interrupted) rather than let
                    # the interrupt end the event loop under every session.
                    await self._interrupted()
                if chunk is None:
                    break
                if isinstance(chunk, _TEXTS):  # the answer, a refusal, or reasoning
                    if not chunk.text:
                        continue
                    meter.chunk()  # the first token of either kind starts the reply
                    if not started:
                        started = True
                        self._feed(fsm.ResponseStarted())
                        await self._publish_pending_state()
                    if type(chunk) is ReasoningDelta:  # apart from the answer, signalled live
                        at = reply.reason(chunk.text, chunk.field_name)
                        progress.add_reasoning(chunk.text)
                        self.host.publish(
                            ev.ReasoningDelta(
                                branch=self._writes.target,
                                message_id=reply.message.id,
                                text=chunk.text,
                                offset=at,
                            )
                        )
                    else:
                        reply.refused |= type(chunk) is RefusalDelta
                        offset = reply.add_text(chunk.text)
                        progress.add_text(chunk.text)
                        publish(self._writes.target, reply.message.id, chunk.text, offset)
                    if time.monotonic() >= checkpoint_at:
                        await self._writes.checkpoint(reply)
                        checkpoint_at = time.monotonic() + CHECKPOINT_SECONDS
                elif isinstance(chunk, ToolCallRequest):
                    reply.tool_requests.append(chunk)
                elif isinstance(chunk, ReasoningBlock):
                    reply.reasoning_blocks.append(chunk.as_json())
                elif isinstance(chunk, Usage):
                    reply.usage = chunk
                    meter.usage(chunk.output_tokens)
                elif isinstance(chunk, Finish):
                    reply.finish_reason = chunk.reason
                    reply.message = with_provenance(reply.message, request_id=chunk.request_id)
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                with anyio.CancelScope(shield=True), self._provider_errors():
                    await aclose()

    async def _interrupted(self) -> None:
        # Cancel the turn's scope and take the cancellation at once: the scope catches
        # it and the turn ends as a cancelled one (see run()).
        self.request_cancel()
        await anyio.lowlevel.checkpoint()
        raise PermanentProviderError(  # pragma: no cover - the checkpoint raised
            "the reply was interrupted", provider=self.provider.name
        )

    def _publish_state(self, effect: fsm.Transition) -> None:
        self.host.publish(
            ev.StateChanged(
                branch=self.branch, old=effect.old, new=effect.new, turn_id=self.turn.id
            )
        )

    async def _publish_pending_state(self) -> None:
        # ResponseStarted's StateChanged must go out before the first delta.
        while self._effects and isinstance(self._effects[0], fsm.Transition):
            effect = self._effects.popleft()
            assert isinstance(effect, fsm.Transition)
            self._publish_state(effect)

    async def _transient(self, exc: TransientProviderError, reply: Reply) -> None:
        # A wait that is no number of seconds (negative, NaN: a provider's bug) is
        # ignored, and the retry policy's own backoff used.
        wait = exc.retry_after
        if not isinstance(wait, (int, float)) or isinstance(wait, bool) or not wait >= 0:
            wait = None
        fault = fsm.TransientFault(str(exc), retry_after=wait, jitter=random.random())
        host = self.host
        # Asked before the machine moves: the write that readies a retry comes first.
        retrying = fsm.retries(host.machines.get(self.branch), fault, host.retry_policy)
        # Its partial text is kept (nothing generated is lost); if retried, its tokens.
        reply.failed_attempts.append(reply.failed_attempt(str(exc), exc.status_code, retrying))
        metadata = reply.message.metadata.model_copy(
            update={"failed_attempts": list(reply.failed_attempts)}
        )
        reply.message = reply.message.model_copy(update={"metadata": metadata})
        if retrying:
            # The reply holds only what the next attempt writes (nothing yet), in the
            # store and in the turn: a retry's deltas start again at offset 0, and a
            # cancel while waiting to retry must not keep the failed text as the reply.
            # (If this write fails, the turn ends there, keeping the text.) A failure
            # that ends the turn keeps its text as the reply.
            await self._writes.update(reply.message.model_copy(update={"content": ""}))
            reply.restart()
            self.turn.progress.start_message(reply.message.id)
        self._failure = exc
        self._feed(fault)
        nxt = self._effects[-1] if self._effects else None
        if isinstance(nxt, fsm.ScheduleRetry):
            await self._publish_pending_state()  # the error is told in its own state
            self.host.publish(
                ev.ErrorReported(
                    branch=self.branch,
                    kind="transient",
                    message=f"{exc} (retrying in {nxt.delay:.1f} s, attempt {nxt.attempt})",
                )
            )

    async def _complete(self, reply: Reply) -> None:
        requests = reply.tool_requests
        calls = [tool_call_from_request(r, self.host.tools())[0] for r in requests]
        # Providers only promise ids unique within one reply; the desk and the path need
        # them unique across branches and turns (e.g. two fan-out arms both say "call_1").
        if calls:  # the path's call ids, continued from a recent path's
            calls = self.host.approvals.claim_ids(calls, call_ids(self._history))
            self._claimed_ids.extend(call.id for call in calls)
            reply.unkept_arguments = {  # by the ids the calls are stored under
                call.id: text
                for call, request in zip(calls, requests, strict=True)
                if call.status is ToolCallStatus.FAILED
                and (text := arguments_text_not_kept(request)) is not None
            }
        self._calls = {call.id: call for call in calls}
        self._answered = set()
        self._started = CallStarts()
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
                **reply.said(),
            }
        )
        final = reply.message.model_copy(
            update={
                # A stream may end inside a character (half of a surrogate pair): the
                # reply keeps what the store keeps (see cm_notebook._unicode).
                "content": without_surrogates(reply.text),
                "status": status,
                "metadata": metadata,
                "tool_calls": tool_calls if tool_calls is not None else [],
            }
        )
        # If this write fails (a full disk), the reply stays in hand and the wind-down
        # tries once more to store it, as interrupted.
        await self._writes.finish_reply(final)
        self._reply = None
        self._last_reply = final

    async def _fail(self, message: str) -> None:
        if self._reply is not None:
            await self._finish_reply(MessageStatus.ERROR, message)
        # What retry() checks the branch against: has another process moved it on?
        self.host.machines.failed_at(self.branch, self._writes.head)
        if not isinstance(self._failure, PermanentProviderError):
            self._failure = PermanentProviderError(message)
        kind: Literal["internal", "permanent"] = "internal" if self._internal else "permanent"
        self.host.publish(ev.ErrorReported(branch=self.branch, kind=kind, message=message))
