"""The state machine of one branch, as pure data: ``step(machine, input) -> (machine, effects)``.

Step three of the send path (session -> turn runner -> **state machine** -> provider
-> store -> signals). Each branch of a context has its own :class:`Machine`; the turn
runner (:mod:`cm_notebook.runner`) feeds it :data:`Input` values (what happened: the
user sent, the provider started or failed, a tool was decided...) and carries out the
:data:`Effect` values that come out (start a request, arm a timer, ask for approval,
run tools, announce a :class:`Transition`). Nothing here does I/O, reads a clock or
draws random numbers, so :func:`step` is tested exhaustively and with hypothesis in
``tests/test_fsm.py``.

Words: an *input* goes into the machine, an *effect* comes out; the bus's *signals*
(:mod:`cm_notebook.events`) and a provider's stream *chunks* are other things.

Transitions (any input not listed for a state raises
:class:`~cm_notebook.errors.IllegalTransitionError`, e.g. "cannot ToolDecided while
Streaming"; a :class:`Transition` effect comes first on every change of state and is
left out of the table)::

    from                 input                  to                    effects
    -------------------  ---------------------  --------------------  ------------------------
    Idle                 Send                   AwaitingResponse      StartRequest
    PermanentFailure     Send | Retry           AwaitingResponse      StartRequest
    AwaitingResponse     ResponseStarted        Streaming             -
    Awaiting.. | Stream  ResponseCompleted(())  Idle                  TurnFinished(completed)
    Awaiting.. | Stream  ResponseCompleted(ids) AwaitingToolApproval  RequestApproval(ids)
      ... more than max_tool_rounds in a row    PermanentFailure      ResolveCancelled(ids),
                                                                      Failed, TurnFinished
    AwaitingToolApproval ToolDecided (not last) AwaitingToolApproval  -
    AwaitingToolApproval ToolDecided (last)     ExecutingTools        ExecuteTools(yes, no)
    ExecutingTools       ToolsFinished          AwaitingResponse      StartRequest
    Awaiting.. | Stream  TransientFault         TransientFailure      ScheduleRetry
      ... no tries left, or a long Retry-After  PermanentFailure      Failed, TurnFinished
    TransientFailure     RetryTimerFired        AwaitingResponse      StartRequest
    Awaiting.. | Stream  PermanentFault         PermanentFailure      Failed, TurnFinished
      | TransientFailure
    any active state     Cancel                 Idle                  AbortRequest,
                                                                      [ResolveCancelled],
                                                                      TurnFinished(cancelled)
    PermanentFailure     Cancel                 Idle                  - (turn already finished)
    Idle                 Cancel                 Idle                  - (harmless no-op)

("Awaiting.. | Stream" is AwaitingResponse or Streaming; ``TurnFinished`` on entering
PermanentFailure has outcome ``"failed"``; Cancel emits ``ResolveCancelled`` only from
AwaitingToolApproval, for every tool call of the round.)

"Active" states are the ones with a turn in progress: AwaitingResponse, Streaming,
AwaitingToolApproval, ExecutingTools and TransientFailure.

Design decisions:

* **Every turn finishes exactly once.** A turn starts with ``Send`` or ``Retry`` and
  ends with exactly one :class:`TurnFinished`: on reaching ``Idle`` or on entering
  ``PermanentFailure``. That is why ``Cancel`` from ``PermanentFailure`` (dismissing
  the failure) emits no second ``TurnFinished``, and why ``Cancel`` while ``Idle`` is
  a no-op: the session's ``cancel()`` on a finished turn must be harmless.
* **Every tool call is resolved exactly once**, by appearing in one
  :class:`ExecuteTools` (approved or denied) or one :class:`ResolveCancelled`
  (cancelled while awaiting approval, or refused because ``max_tool_rounds`` was
  exceeded). Decisions made before a cancel are discarded: nothing ran, so all calls
  of the round are reported as cancelled.
* ``Machine.attempt`` counts the tries of the current request, the first included
  (0 before any request). It never exceeds ``policy.max_attempts``. A response with
  tool calls starts a new request, so the count restarts with the next ``StartRequest``.
* ``tool_round`` counts consecutive tool rounds; a user message (``Send``) resets it,
  ``Retry`` does not (the conversation has not moved on), so after hitting the limit
  the user sends a message or raises ``max_tool_rounds`` and retries.
* ``ResponseCompleted`` is accepted from ``AwaitingResponse`` too: a reply made only of
  tool calls may never stream a text delta.
* Cancel emits :class:`AbortRequest` from every active state; it means "stop the
  turn's background work", whether that is a request, a retry timer or running tools.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import Enum
from types import MappingProxyType
from typing import Literal

from .errors import IllegalTransitionError, InvalidInputError
from .retry import DEFAULT_POLICY, RetryPolicy

__all__ = [
    "ACTIVE_STATES",
    "RESTING_STATES",
    "TOOL_ROUND_LIMIT",
    "AbortRequest",
    "Cancel",
    "Effect",
    "ExecuteTools",
    "Failed",
    "Input",
    "Machine",
    "PermanentFault",
    "RequestApproval",
    "ResolveCancelled",
    "ResponseCompleted",
    "ResponseStarted",
    "Retry",
    "RetryTimerFired",
    "ScheduleRetry",
    "Send",
    "StartRequest",
    "State",
    "ToolDecided",
    "ToolsFinished",
    "TransientFault",
    "Transition",
    "TurnFinished",
    "retries",
    "step",
]

#: The reason recorded for the calls of a round past the turn's tool round limit (never run).
TOOL_ROUND_LIMIT = "tool round limit reached"


class State(str, Enum):
    """The state of one branch's conversation (each branch has its own machine)."""

    IDLE = "Idle"
    AWAITING_RESPONSE = "AwaitingResponse"
    STREAMING = "Streaming"
    AWAITING_TOOL_APPROVAL = "AwaitingToolApproval"
    EXECUTING_TOOLS = "ExecutingTools"
    TRANSIENT_FAILURE = "TransientFailure"
    PERMANENT_FAILURE = "PermanentFailure"


#: States in which a turn is in progress (a new ``Send`` would be refused as busy).
ACTIVE_STATES: frozenset[State] = frozenset(
    {
        State.AWAITING_RESPONSE,
        State.STREAMING,
        State.AWAITING_TOOL_APPROVAL,
        State.EXECUTING_TOOLS,
        State.TRANSIENT_FAILURE,
    }
)

#: States a branch rests in once its turn is over (it ended, or failed for good): a
#: ``StateChanged`` into one of them is the end of a turn.
RESTING_STATES: frozenset[State] = frozenset(State) - ACTIVE_STATES

_REQUESTING = (State.AWAITING_RESPONSE, State.STREAMING)


@dataclass(frozen=True)
class Machine:
    """A branch's state plus the data its transitions need. Immutable; see :func:`step`.

    Attributes:
        state: the current :class:`State`.
        attempt: tries of the current request so far, the first included (0 = none yet).
        tool_round: consecutive tool rounds since the last user message.
        tool_calls: ids of the current round's tool calls, in the model's order; set on
            entering ``AwaitingToolApproval``, cleared when the round is over.
        decisions: ``(tool_call_id, approved)`` pairs in the order they were made.
        partial_text_kept: the last request was cut off after text had started to
            stream (cancel or error in ``Streaming``), so a partial reply exists.
        last_error: the message of the last transient or permanent error of this turn.
    """

    state: State = State.IDLE
    attempt: int = 0
    tool_round: int = 0
    tool_calls: tuple[str, ...] = ()
    decisions: tuple[tuple[str, bool], ...] = ()
    partial_text_kept: bool = False
    last_error: str | None = None

    @classmethod
    def initial(cls) -> Machine:
        """A fresh machine: ``Idle`` with no history."""
        return cls()

    @property
    def decision_map(self) -> Mapping[str, bool]:
        """The decisions made so far, as a read-only ``{tool_call_id: approved}`` map."""
        return MappingProxyType(dict(self.decisions))

    @property
    def undecided(self) -> tuple[str, ...]:
        """The current round's tool call ids that still await a decision, in order."""
        decided = {call_id for call_id, _ in self.decisions}
        return tuple(call_id for call_id in self.tool_calls if call_id not in decided)

    @property
    def busy(self) -> bool:
        """Whether a turn is in progress."""
        return self.state in ACTIVE_STATES


# --- inputs: what happened (fed into step) ---------------------------------------------


@dataclass(frozen=True)
class Send:
    """The user sent a message."""


@dataclass(frozen=True)
class Retry:
    """The user asked to retry after a permanent failure."""


@dataclass(frozen=True)
class ResponseStarted:
    """The provider produced the first delta of its reply."""


@dataclass(frozen=True)
class ResponseCompleted:
    """The provider finished its reply; ``tool_call_ids`` are the tools it asks to call.

    Raises:
        InvalidInputError: if an id is empty or repeated.
    """

    tool_call_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        ids = tuple(self.tool_call_ids)
        if any(not isinstance(i, str) or not i for i in ids) or len(set(ids)) != len(ids):
            raise InvalidInputError(f"tool call ids must be unique non-empty strings: {ids!r}")
        object.__setattr__(self, "tool_call_ids", ids)


@dataclass(frozen=True)
class ToolDecided:
    """The user (or an approval policy) approved or denied one pending tool call."""

    tool_call_id: str
    approved: bool


@dataclass(frozen=True)
class ToolsFinished:
    """Every approved tool of the round has run and its result is stored."""


@dataclass(frozen=True)
class TransientFault:
    """The request failed in a way worth retrying.

    Attributes:
        message: what went wrong, for the user.
        retry_after: seconds the server asked us to wait, if it said.
        jitter: a random draw in ``[0, 1)`` made by the caller, so that :func:`step`
            stays deterministic.
    """

    message: str
    retry_after: float | None = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.jitter < 1.0:
            raise InvalidInputError(f"jitter must be in [0, 1), got {self.jitter!r}")
        if self.retry_after is not None and not self.retry_after >= 0:  # also refuses NaN
            raise InvalidInputError(f"retry_after must be >= 0 seconds, got {self.retry_after!r}")


@dataclass(frozen=True)
class RetryTimerFired:
    """The delay of a :class:`ScheduleRetry` has passed."""


@dataclass(frozen=True)
class PermanentFault:
    """The request failed in a way retrying will not fix."""

    message: str


@dataclass(frozen=True)
class Cancel:
    """The user cancelled the turn."""


Input = (
    Send
    | Retry
    | ResponseStarted
    | ResponseCompleted
    | ToolDecided
    | ToolsFinished
    | TransientFault
    | RetryTimerFired
    | PermanentFault
    | Cancel
)
"""Everything :func:`step` accepts."""


# --- effects: what the session must do (returned by step) -------------------------------


@dataclass(frozen=True)
class StartRequest:
    """Send the active path to the provider (the first try, a retry, or after tools)."""


@dataclass(frozen=True)
class ScheduleRetry:
    """Arm a timer: after ``delay`` seconds feed :class:`RetryTimerFired`.

    ``attempt`` is the number of the try that the timer will start (2 = first retry).
    """

    delay: float
    attempt: int


@dataclass(frozen=True)
class RequestApproval:
    """Ask the user (or the approval policy) to decide on these tool calls."""

    tool_call_ids: tuple[str, ...]


@dataclass(frozen=True)
class ExecuteTools:
    """Run the approved tool calls and report the denied ones, then feed ToolsFinished."""

    approved: tuple[str, ...]
    denied: tuple[str, ...]


@dataclass(frozen=True)
class ResolveCancelled:
    """Mark these tool calls as denied without running them; ``reason`` says why."""

    tool_call_ids: tuple[str, ...]
    reason: str


@dataclass(frozen=True)
class AbortRequest:
    """Stop the turn's background work: the request, a retry timer or running tools."""


@dataclass(frozen=True)
class Transition:
    """The machine's state changed from ``old`` to ``new``; always the first effect."""

    old: State
    new: State


@dataclass(frozen=True)
class TurnFinished:
    """The turn is over; always the last effect. Emitted exactly once per turn."""

    outcome: Literal["completed", "cancelled", "failed"]


@dataclass(frozen=True)
class Failed:
    """The turn failed permanently; ``message`` says why and what to do."""

    message: str


Effect = (
    StartRequest
    | ScheduleRetry
    | RequestApproval
    | ExecuteTools
    | ResolveCancelled
    | AbortRequest
    | Transition
    | TurnFinished
    | Failed
)
"""Everything :func:`step` may ask the session to do."""

Result = tuple[Machine, tuple[Effect, ...]]


@dataclass(frozen=True)
class _Step:
    # Bundles the parameters every handler needs, so handlers keep short signatures.
    policy: RetryPolicy
    max_tool_rounds: int
    effects: list[Effect] = field(default_factory=list)


def retries(machine: Machine, fault: TransientFault, policy: RetryPolicy = DEFAULT_POLICY) -> bool:
    """Whether ``fault`` in ``machine`` leads to a retry (rather than a failure)."""
    return any(isinstance(effect, ScheduleRetry) for effect in step(machine, fault, policy)[1])


def step(
    machine: Machine,
    given: Input,
    policy: RetryPolicy = DEFAULT_POLICY,
    *,
    max_tool_rounds: int = 10,
) -> Result:
    """Apply ``given`` to ``machine``; return the next machine and the effects to carry out.

    Args:
        machine: the current machine (never modified).
        given: what happened.
        policy: the retry policy for :class:`TransientFault`.
        max_tool_rounds: consecutive tool rounds allowed before the turn stops.

    Returns:
        ``(next_machine, effects)``. A :class:`Transition` effect, if any, comes first
        and a :class:`TurnFinished`, if any, comes last.

    Raises:
        IllegalTransitionError: the current state cannot take ``given``, or a
            :class:`ToolDecided` names a tool call that is unknown or already decided.
            The machine is unchanged (it is immutable).
        InvalidInputError: ``max_tool_rounds`` is negative.
    """
    if max_tool_rounds < 0:
        raise InvalidInputError(f"max_tool_rounds must be >= 0, got {max_tool_rounds!r}")
    ctx = _Step(policy, max_tool_rounds)
    state = machine.state
    nxt: Machine | None = None
    match given:
        case Send() | Retry():
            if state is State.PERMANENT_FAILURE or (
                state is State.IDLE and isinstance(given, Send)
            ):
                nxt = _start_turn(machine, ctx, user_message=isinstance(given, Send))
        case ResponseStarted():
            if state is State.AWAITING_RESPONSE:
                nxt = replace(machine, state=State.STREAMING)
        case ResponseCompleted(tool_call_ids=ids):
            if state in _REQUESTING:
                nxt = _completed(machine, ctx, ids)
        case ToolDecided():
            if state is State.AWAITING_TOOL_APPROVAL:
                nxt = _decided(machine, ctx, given)
        case ToolsFinished():
            if state is State.EXECUTING_TOOLS:
                done = replace(machine, attempt=1, tool_calls=(), decisions=())
                nxt = _start_request(done, ctx)
        case TransientFault():
            if state in _REQUESTING:
                nxt = _transient(machine, ctx, given)
        case RetryTimerFired():
            if state is State.TRANSIENT_FAILURE:
                nxt = _start_request(replace(machine, attempt=machine.attempt + 1), ctx)
        case PermanentFault(message=message):
            if state in (*_REQUESTING, State.TRANSIENT_FAILURE):
                nxt = _fail(machine, ctx, message, last_error=message)
        case Cancel():
            nxt = _cancel(machine, ctx)
    if nxt is None:
        raise IllegalTransitionError(f"cannot {type(given).__name__} while {state.value}")
    effects = ctx.effects
    if nxt.state is not state:
        effects.insert(0, Transition(state, nxt.state))
    return nxt, tuple(effects)


def _start_request(machine: Machine, ctx: _Step) -> Machine:
    ctx.effects.append(StartRequest())
    return replace(machine, state=State.AWAITING_RESPONSE, partial_text_kept=False)


def _start_turn(machine: Machine, ctx: _Step, *, user_message: bool) -> Machine:
    fresh = replace(
        machine,
        attempt=1,
        # A user message breaks a chain of tool rounds; a retry repeats the same request.
        tool_round=0 if user_message else machine.tool_round,
        tool_calls=(),
        decisions=(),
        last_error=None,
    )
    return _start_request(fresh, ctx)


def _completed(machine: Machine, ctx: _Step, ids: tuple[str, ...]) -> Machine:
    if not ids:
        ctx.effects.append(TurnFinished("completed"))
        return replace(machine, state=State.IDLE, partial_text_kept=False)
    rounds = machine.tool_round + 1
    if rounds > ctx.max_tool_rounds:
        # The reply's tool calls must still be resolved, or they would stay pending forever.
        ctx.effects.append(ResolveCancelled(ids, reason=TOOL_ROUND_LIMIT))
        message = (
            f"stopped after {ctx.max_tool_rounds} consecutive tool rounds without a user "
            "message; send a message to continue or raise max_tool_rounds"
        )
        if not ctx.max_tool_rounds:  # a message would not help: the next call stops too
            message = (
                "max_tool_rounds is 0, so no tool call may run; raise max_tool_rounds and retry"
            )
        return _fail(replace(machine, attempt=0), ctx, message, last_error=message)
    ctx.effects.append(RequestApproval(ids))
    return replace(
        machine,
        state=State.AWAITING_TOOL_APPROVAL,
        attempt=0,
        tool_round=rounds,
        tool_calls=ids,
        decisions=(),
        partial_text_kept=False,
    )


def _decided(machine: Machine, ctx: _Step, given: ToolDecided) -> Machine:
    call_id = given.tool_call_id
    where = f"while {machine.state.value}"
    if call_id not in machine.tool_calls:
        raise IllegalTransitionError(
            f"cannot ToolDecided for unknown tool call {call_id!r} {where}"
        )
    if any(decided == call_id for decided, _ in machine.decisions):
        raise IllegalTransitionError(
            f"cannot ToolDecided for tool call {call_id!r} {where}: it is already decided"
        )
    decisions = (*machine.decisions, (call_id, bool(given.approved)))
    if len(decisions) < len(machine.tool_calls):
        return replace(machine, decisions=decisions)
    verdict = dict(decisions)
    ctx.effects.append(
        ExecuteTools(
            approved=tuple(i for i in machine.tool_calls if verdict[i]),
            denied=tuple(i for i in machine.tool_calls if not verdict[i]),
        )
    )
    return replace(machine, state=State.EXECUTING_TOOLS, decisions=decisions)


def _transient(machine: Machine, ctx: _Step, given: TransientFault) -> Machine:
    cut_off = machine.state is State.STREAMING
    marked = replace(machine, partial_text_kept=cut_off, last_error=given.message)
    tries = machine.attempt
    if not ctx.policy.should_retry(tries):
        plural = "s" if tries != 1 else ""
        message = f"gave up after {tries} attempt{plural}; last error: {given.message}"
        return _fail(marked, ctx, message, last_error=given.message)
    delay = ctx.policy.delay(tries, retry_after=given.retry_after, jitter=given.jitter)
    if delay is None:
        message = (
            f"the server asked to wait {given.retry_after:.0f} s, longer than the "
            f"{ctx.policy.max_retry_after:.0f} s this session waits; try again later "
            f"(last error: {given.message})"
        )
        return _fail(marked, ctx, message, last_error=given.message)
    ctx.effects.append(ScheduleRetry(delay=delay, attempt=tries + 1))
    return replace(marked, state=State.TRANSIENT_FAILURE)


def _fail(machine: Machine, ctx: _Step, message: str, *, last_error: str | None) -> Machine:
    ctx.effects.append(Failed(message))
    ctx.effects.append(TurnFinished("failed"))
    return replace(
        machine,
        state=State.PERMANENT_FAILURE,
        tool_calls=(),
        decisions=(),
        partial_text_kept=machine.partial_text_kept or machine.state is State.STREAMING,
        last_error=last_error,
    )


def _cancel(machine: Machine, ctx: _Step) -> Machine:
    state = machine.state
    if state is State.IDLE:
        return machine  # the turn already finished: cancel() must be harmless
    idle = replace(machine, state=State.IDLE, tool_calls=(), decisions=())
    if state is State.PERMANENT_FAILURE:
        return idle  # nothing runs and TurnFinished was already emitted on failing
    ctx.effects.append(AbortRequest())
    if state is State.AWAITING_TOOL_APPROVAL:
        ctx.effects.append(ResolveCancelled(machine.tool_calls, reason="cancelled"))
    ctx.effects.append(TurnFinished("cancelled"))
    # Keep the flag if an earlier error already cut a stream off (TransientFailure).
    return replace(idle, partial_text_kept=machine.partial_text_kept or state is State.STREAMING)
