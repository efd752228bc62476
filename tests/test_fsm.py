"""The pure state machine: the transition table, illegal events, and invariants over
random and exhaustive event sequences."""

from __future__ import annotations

import itertools
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import FrozenInstanceError, dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cm_notebook.errors import IllegalTransitionError, InvalidInputError, StateError
from cm_notebook.fsm import (
    ACTIVE_STATES,
    AbortRequest,
    Cancel,
    Effect,
    ExecuteTools,
    Failed,
    Input,
    Machine,
    PermanentFault,
    RequestApproval,
    ResolveCancelled,
    ResponseCompleted,
    ResponseStarted,
    Retry,
    RetryTimerFired,
    ScheduleRetry,
    Send,
    StartRequest,
    State,
    ToolDecided,
    ToolsFinished,
    TransientFault,
    Transition,
    TurnFinished,
    step,
)
from cm_notebook.retry import DEFAULT_POLICY, RetryPolicy

S = State


def run(
    events: Iterable[Input],
    machine: Machine | None = None,
    policy: RetryPolicy = DEFAULT_POLICY,
    max_tool_rounds: int = 10,
) -> tuple[Machine, list[Effect]]:
    """Apply events in order; return the final machine and every effect."""
    current = machine if machine is not None else Machine.initial()
    effects: list[Effect] = []
    for event in events:
        current, out = step(current, event, policy, max_tool_rounds=max_tool_rounds)
        effects.extend(out)
    return current, effects


# How to reach each state from the initial machine.
PATHS: dict[State, tuple[Input, ...]] = {
    S.IDLE: (),
    S.AWAITING_RESPONSE: (Send(),),
    S.STREAMING: (Send(), ResponseStarted()),
    S.AWAITING_TOOL_APPROVAL: (Send(), ResponseCompleted(("a", "b"))),
    S.EXECUTING_TOOLS: (
        Send(),
        ResponseCompleted(("a", "b")),
        ToolDecided("b", approved=False),
        ToolDecided("a", approved=True),
    ),
    S.TRANSIENT_FAILURE: (Send(), TransientFault("flaky")),
    S.PERMANENT_FAILURE: (Send(), PermanentFault("bad key")),
}


def at(state: State) -> Machine:
    machine, _ = run(PATHS[state])
    assert machine.state is state
    return machine


def test_paths_reach_every_state() -> None:
    assert set(PATHS) == set(State)


# --- the legal transitions, as a table -----------------------------------------------------

LEGAL: list[tuple[State, Input, State, tuple[Effect, ...]]] = [
    (S.IDLE, Send(), S.AWAITING_RESPONSE, (StartRequest(),)),
    (S.IDLE, Cancel(), S.IDLE, ()),
    (S.AWAITING_RESPONSE, ResponseStarted(), S.STREAMING, ()),
    (S.AWAITING_RESPONSE, ResponseCompleted(), S.IDLE, (TurnFinished("completed"),)),
    (S.AWAITING_RESPONSE, ResponseCompleted(("x",)), S.AWAITING_TOOL_APPROVAL,
     (RequestApproval(("x",)),)),
    (S.AWAITING_RESPONSE, TransientFault("t"), S.TRANSIENT_FAILURE,
     (ScheduleRetry(delay=0.5, attempt=2),)),
    (S.AWAITING_RESPONSE, PermanentFault("p"), S.PERMANENT_FAILURE,
     (Failed("p"), TurnFinished("failed"))),
    (S.AWAITING_RESPONSE, Cancel(), S.IDLE, (AbortRequest(), TurnFinished("cancelled"))),
    (S.STREAMING, ResponseCompleted(), S.IDLE, (TurnFinished("completed"),)),
    (S.STREAMING, ResponseCompleted(("x", "y")), S.AWAITING_TOOL_APPROVAL,
     (RequestApproval(("x", "y")),)),
    (S.STREAMING, TransientFault("t", retry_after=3.0), S.TRANSIENT_FAILURE,
     (ScheduleRetry(delay=3.0, attempt=2),)),
    (S.STREAMING, PermanentFault("p"), S.PERMANENT_FAILURE,
     (Failed("p"), TurnFinished("failed"))),
    (S.STREAMING, Cancel(), S.IDLE, (AbortRequest(), TurnFinished("cancelled"))),
    (S.AWAITING_TOOL_APPROVAL, ToolDecided("a", approved=True), S.AWAITING_TOOL_APPROVAL, ()),
    (S.AWAITING_TOOL_APPROVAL, Cancel(), S.IDLE,
     (AbortRequest(), ResolveCancelled(("a", "b"), "cancelled"), TurnFinished("cancelled"))),
    (S.EXECUTING_TOOLS, ToolsFinished(), S.AWAITING_RESPONSE, (StartRequest(),)),
    (S.EXECUTING_TOOLS, Cancel(), S.IDLE, (AbortRequest(), TurnFinished("cancelled"))),
    (S.TRANSIENT_FAILURE, RetryTimerFired(), S.AWAITING_RESPONSE, (StartRequest(),)),
    (S.TRANSIENT_FAILURE, PermanentFault("p"), S.PERMANENT_FAILURE,
     (Failed("p"), TurnFinished("failed"))),
    (S.TRANSIENT_FAILURE, Cancel(), S.IDLE, (AbortRequest(), TurnFinished("cancelled"))),
    (S.PERMANENT_FAILURE, Send(), S.AWAITING_RESPONSE, (StartRequest(),)),
    (S.PERMANENT_FAILURE, Retry(), S.AWAITING_RESPONSE, (StartRequest(),)),
    (S.PERMANENT_FAILURE, Cancel(), S.IDLE, ()),
]  # fmt: skip


@pytest.mark.parametrize(
    ("start", "event", "end", "effects"),
    LEGAL,
    ids=[f"{s.value}-{type(e).__name__}" for s, e, _, _ in LEGAL],
)
def test_legal_transition(
    start: State, event: Input, end: State, effects: tuple[Effect, ...]
) -> None:
    machine, out = step(at(start), event)
    assert machine.state is end
    expected = (Transition(start, end), *effects) if start is not end else effects
    assert out == expected


SAMPLE_EVENTS: list[Input] = [
    Send(),
    Retry(),
    ResponseStarted(),
    ResponseCompleted(),
    ToolDecided("a", approved=True),
    ToolsFinished(),
    TransientFault("t"),
    RetryTimerFired(),
    PermanentFault("p"),
    Cancel(),
]
LEGAL_KINDS = {(s, type(e)) for s, e, _, _ in LEGAL}
ILLEGAL = [(s, e) for s in State for e in SAMPLE_EVENTS if (s, type(e)) not in LEGAL_KINDS]


@pytest.mark.parametrize(
    ("start", "event"), ILLEGAL, ids=[f"{s.value}-{type(e).__name__}" for s, e in ILLEGAL]
)
def test_illegal_transition(start: State, event: Input) -> None:
    machine = at(start)
    with pytest.raises(IllegalTransitionError) as info:
        step(machine, event)
    assert str(info.value) == f"cannot {type(event).__name__} while {start.value}"
    assert isinstance(info.value, StateError)


def test_cancel_while_idle_is_a_harmless_no_op() -> None:
    done, _ = run([Send(), ResponseCompleted()])
    again, effects = step(done, Cancel())
    assert again == done
    assert effects == ()


# --- tool approval -----------------------------------------------------------------------


def test_tools_execute_in_the_models_order_once_all_are_decided() -> None:
    machine, _ = run([Send(), ResponseCompleted(("a", "b", "c"))])
    assert machine.undecided == ("a", "b", "c")
    machine, out = step(machine, ToolDecided("c", approved=True))
    assert out == ()
    assert machine.undecided == ("a", "b")
    machine, out = step(machine, ToolDecided("a", approved=False))
    assert machine.decision_map == {"c": True, "a": False}
    machine, out = step(machine, ToolDecided("b", approved=True))
    assert out == (
        Transition(S.AWAITING_TOOL_APPROVAL, S.EXECUTING_TOOLS),
        ExecuteTools(approved=("b", "c"), denied=("a",)),
    )
    machine, out = step(machine, ToolsFinished())
    assert out == (Transition(S.EXECUTING_TOOLS, S.AWAITING_RESPONSE), StartRequest())
    assert machine.tool_calls == ()
    assert machine.decisions == ()
    assert machine.attempt == 1


def test_deciding_an_unknown_tool_call_is_illegal() -> None:
    machine = at(S.AWAITING_TOOL_APPROVAL)
    with pytest.raises(IllegalTransitionError, match="unknown tool call 'zzz'"):
        step(machine, ToolDecided("zzz", approved=True))


def test_deciding_twice_is_illegal() -> None:
    machine, _ = step(at(S.AWAITING_TOOL_APPROVAL), ToolDecided("a", approved=True))
    with pytest.raises(IllegalTransitionError, match=r"'a'.*already decided"):
        step(machine, ToolDecided("a", approved=False))


def test_cancel_resolves_every_call_of_the_round_even_decided_ones() -> None:
    machine, _ = step(at(S.AWAITING_TOOL_APPROVAL), ToolDecided("b", approved=True))
    machine, out = step(machine, Cancel())
    assert ResolveCancelled(("a", "b"), "cancelled") in out
    assert machine == replace(machine, state=S.IDLE, tool_calls=(), decisions=())


def test_tool_round_limit_fails_and_resolves_the_calls() -> None:
    round_trip: list[Input] = [ToolDecided("t", approved=True), ToolsFinished()]
    events: list[Input] = [Send(), ResponseCompleted(("t",)), *round_trip]
    events += [ResponseCompleted(("t",)), *round_trip]
    machine, _ = run(events, max_tool_rounds=2)
    assert machine.tool_round == 2
    machine, out = step(machine, ResponseCompleted(("u", "v")), max_tool_rounds=2)
    assert machine.state is S.PERMANENT_FAILURE
    assert out[1] == ResolveCancelled(("u", "v"), "tool round limit reached")
    assert isinstance(out[2], Failed)
    assert "stopped after 2 consecutive tool rounds" in out[2].message
    assert "raise max_tool_rounds" in out[2].message
    assert out[-1] == TurnFinished("failed")
    # Retry keeps the count (the conversation did not move on) ...
    retried, _ = run([Retry(), ResponseCompleted(("w",))], machine, max_tool_rounds=2)
    assert retried.state is S.PERMANENT_FAILURE
    # ... but a raised limit lets it continue, and a user message resets it.
    raised, _ = run([Retry(), ResponseCompleted(("w",))], machine, max_tool_rounds=3)
    assert raised.state is S.AWAITING_TOOL_APPROVAL
    sent, _ = run([Send(), ResponseCompleted(("w",))], machine, max_tool_rounds=2)
    assert sent.state is S.AWAITING_TOOL_APPROVAL
    assert sent.tool_round == 1


def test_zero_tool_rounds_refuses_every_tool_call() -> None:
    machine, out = run([Send(), ResponseCompleted(("a",))], max_tool_rounds=0)
    assert machine.state is S.PERMANENT_FAILURE
    # A message would not help (the next tool call stops the same way): not offered.
    (failed,) = [effect for effect in out if isinstance(effect, Failed)]
    assert failed.message == (
        "max_tool_rounds is 0, so no tool call may run; raise max_tool_rounds and retry"
    )


def test_negative_max_tool_rounds_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="max_tool_rounds"):
        step(Machine.initial(), Send(), max_tool_rounds=-1)


# --- retries -------------------------------------------------------------------------------


def test_transient_errors_back_off_then_give_up() -> None:
    events: list[Input] = [Send(), TransientFault("e1"), RetryTimerFired()]
    events += [ResponseStarted(), TransientFault("e2"), RetryTimerFired()]
    machine, effects = run(events)
    assert [e for e in effects if isinstance(e, ScheduleRetry)] == [
        ScheduleRetry(0.5, 2),
        ScheduleRetry(1.0, 3),
    ]
    assert machine.attempt == 3
    machine, out = step(machine, TransientFault("e3"))
    assert machine.state is S.PERMANENT_FAILURE
    assert out[1:] == (Failed("gave up after 3 attempts; last error: e3"), TurnFinished("failed"))
    assert machine.last_error == "e3"
    assert machine.attempt == DEFAULT_POLICY.max_attempts


def test_single_attempt_policy_fails_at_once() -> None:
    policy = RetryPolicy(max_attempts=1)
    machine, effects = run([Send(), TransientFault("x")], policy=policy)
    assert machine.state is S.PERMANENT_FAILURE
    assert Failed("gave up after 1 attempt; last error: x") in effects


def test_jitter_from_the_event_is_used() -> None:
    _, effects = run([Send(), TransientFault("x", jitter=0.5)])
    assert effects[-1] == ScheduleRetry(delay=0.5 * (1 - 0.1 * 0.5), attempt=2)


def test_retry_after_is_honoured() -> None:
    _, effects = run([Send(), TransientFault("429", retry_after=12.0)])
    assert effects[-1] == ScheduleRetry(delay=12.0, attempt=2)


def test_retry_after_too_long_fails_with_the_wait() -> None:
    machine, effects = run([Send(), TransientFault("429", retry_after=600.0)])
    assert machine.state is S.PERMANENT_FAILURE
    failed = [e for e in effects if isinstance(e, Failed)]
    assert len(failed) == 1
    assert "server asked to wait 600 s" in failed[0].message


def test_send_after_failure_starts_afresh() -> None:
    machine = at(S.PERMANENT_FAILURE)
    assert machine.last_error == "bad key"
    machine, _ = step(machine, Send())
    assert machine == Machine(state=S.AWAITING_RESPONSE, attempt=1)


def test_partial_text_is_recorded_when_a_stream_is_cut_off() -> None:
    assert step(at(S.STREAMING), Cancel())[0].partial_text_kept
    assert not step(at(S.AWAITING_RESPONSE), Cancel())[0].partial_text_kept
    cut, _ = run([TransientFault("reset")], at(S.STREAMING))
    assert cut.partial_text_kept
    assert step(cut, Cancel())[0].partial_text_kept
    assert not step(cut, RetryTimerFired())[0].partial_text_kept
    assert step(at(S.STREAMING), PermanentFault("x"))[0].partial_text_kept


# --- the event and machine values -------------------------------------------------------------


def test_response_completed_refuses_duplicate_or_empty_ids() -> None:
    with pytest.raises(InvalidInputError, match="unique"):
        ResponseCompleted(("a", "a"))
    with pytest.raises(InvalidInputError, match="unique"):
        ResponseCompleted(("",))
    assert ResponseCompleted(["a", "b"]).tool_call_ids == ("a", "b")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [{"jitter": 1.0}, {"jitter": -0.1}, {"retry_after": -1.0}, {"retry_after": float("nan")}],
)
def test_transient_error_validates_its_numbers(kwargs: dict[str, float]) -> None:
    with pytest.raises(InvalidInputError):
        TransientFault("x", **kwargs)


def test_machine_is_immutable_and_reports_busy() -> None:
    machine = Machine.initial()
    with pytest.raises(FrozenInstanceError):
        machine.state = S.STREAMING  # type: ignore[misc]
    assert not machine.busy
    assert {s for s in State if at(s).busy} == ACTIVE_STATES


# --- invariants over random sequences ----------------------------------------------------------

KINDS = [
    "send", "retry", "started", "completed", "completed_tools", "decide", "finished",
    "transient", "timer", "permanent", "cancel",
]  # fmt: skip


@st.composite
def next_event(draw: st.DrawFn, machine: Machine, fresh: Iterable[int]) -> Input:
    """An event, valid or not, biased towards ones that make sense for ``machine``."""
    kind = draw(st.sampled_from(KINDS))
    ids = iter(fresh)
    if kind == "completed_tools":
        count = draw(st.integers(1, 3))
        return ResponseCompleted(tuple(f"t{next(ids)}" for _ in range(count)))
    if kind == "decide":
        call_id = draw(st.sampled_from([*machine.tool_calls, "stranger"]))
        return ToolDecided(call_id, approved=draw(st.booleans()))
    if kind == "transient":
        retry_after = draw(st.none() | st.floats(0, 300, allow_nan=False))
        jitter = draw(st.floats(0, 1, exclude_max=True))
        return TransientFault("flaky", retry_after=retry_after, jitter=jitter)
    simple: dict[str, Input] = {
        "send": Send(),
        "retry": Retry(),
        "started": ResponseStarted(),
        "completed": ResponseCompleted(),
        "finished": ToolsFinished(),
        "timer": RetryTimerFired(),
        "permanent": PermanentFault("broken"),
        "cancel": Cancel(),
    }
    return simple[kind]


@dataclass
class Ledger:
    """What a session would observe; checks the invariants after each accepted step."""

    policy: RetryPolicy
    max_tool_rounds: int
    turn_open: bool = False
    introduced: set[str] = field(default_factory=set)
    resolved: Counter[str] = field(default_factory=Counter)

    def check(
        self, before: Machine, event: Input, after: Machine, effects: tuple[Effect, ...]
    ) -> None:
        assert isinstance(after.state, State)
        changes = [e for e in effects if isinstance(e, Transition)]
        if after.state is before.state:
            assert changes == []
        else:
            assert effects[0] == Transition(before.state, after.state)
            assert len(changes) == 1
        finished = [e for e in effects if isinstance(e, TurnFinished)]
        assert len(finished) <= 1
        if finished:
            assert effects[-1] == finished[0]

        # Every turn finishes exactly once; a turn is open exactly while the machine is busy.
        if isinstance(event, (Send, Retry)):
            assert not self.turn_open
            self.turn_open = True
        if finished:
            assert self.turn_open
            self.turn_open = False
        assert self.turn_open == after.busy
        assert any(isinstance(e, Failed) for e in effects) == (
            after.state is S.PERMANENT_FAILURE and before.state is not S.PERMANENT_FAILURE
        )

        # Every tool call the model asked for is resolved exactly once.
        if isinstance(event, ResponseCompleted):
            assert self.introduced.isdisjoint(event.tool_call_ids)
            self.introduced.update(event.tool_call_ids)
        for effect in effects:
            if isinstance(effect, ExecuteTools):
                assert isinstance(event, ToolDecided)
                decided = {**before.decision_map, event.tool_call_id: event.approved}
                assert set(effect.approved) == {i for i, ok in decided.items() if ok}
                assert set(effect.denied) == {i for i, ok in decided.items() if not ok}
                self.resolved.update((*effect.approved, *effect.denied))
            elif isinstance(effect, ResolveCancelled):
                self.resolved.update(effect.tool_call_ids)
        assert all(count == 1 for count in self.resolved.values())
        if after.state in (S.IDLE, S.PERMANENT_FAILURE):
            assert set(self.resolved) == self.introduced
        if after.state is S.AWAITING_TOOL_APPROVAL:
            assert self.resolved.keys().isdisjoint(after.tool_calls)

        # Bookkeeping stays consistent.
        assert 0 <= after.attempt <= self.policy.max_attempts
        assert 0 <= after.tool_round <= self.max_tool_rounds
        if after.state in (S.AWAITING_RESPONSE, S.STREAMING, S.TRANSIENT_FAILURE):
            assert after.attempt >= 1
        for effect in effects:
            if isinstance(effect, ScheduleRetry):
                assert effect.attempt == after.attempt + 1 <= self.policy.max_attempts
                assert effect.delay >= 0
                if isinstance(event, TransientFault) and event.retry_after is not None:
                    assert effect.delay >= event.retry_after
        assert {i for i, _ in after.decisions} <= set(after.tool_calls)
        if after.state not in (S.AWAITING_TOOL_APPROVAL, S.EXECUTING_TOOLS):
            assert after.tool_calls == ()
            assert after.decisions == ()
        if isinstance(event, Cancel):
            assert after.state is S.IDLE


policies = st.builds(
    RetryPolicy,
    initial_delay=st.floats(0, 2),
    multiplier=st.floats(1, 3),
    max_attempts=st.integers(1, 4),
    max_delay=st.floats(0, 60),
    jitter=st.floats(0, 1),
    max_retry_after=st.floats(0, 200),
)


@settings(max_examples=300, deadline=None)
@given(data=st.data(), policy=policies, max_tool_rounds=st.integers(0, 3))
def test_invariants_hold_for_random_event_sequences(
    data: st.DataObject, policy: RetryPolicy, max_tool_rounds: int
) -> None:
    machine = Machine.initial()
    fresh = itertools.count()
    ledger = Ledger(policy, max_tool_rounds)
    for _ in range(data.draw(st.integers(0, 60), label="length")):
        event = data.draw(next_event(machine, fresh))
        snapshot = replace(machine)
        try:
            after, effects = step(machine, event, policy, max_tool_rounds=max_tool_rounds)
        except IllegalTransitionError:
            assert machine == snapshot
            continue
        ledger.check(machine, event, after, effects)
        machine = after


# --- exhaustive exploration over a small alphabet ----------------------------------------------

ALPHABET: list[Input] = [
    Send(),
    Retry(),
    ResponseStarted(),
    ResponseCompleted(),
    ResponseCompleted(("a",)),
    ResponseCompleted(("a", "b")),
    ToolDecided("a", approved=True),
    ToolDecided("a", approved=False),
    ToolDecided("b", approved=True),
    ToolDecided("b", approved=False),
    ToolsFinished(),
    TransientFault("e"),
    TransientFault("e", retry_after=500.0),
    RetryTimerFired(),
    PermanentFault("p"),
    Cancel(),
]


def test_exhaustive_reachability_and_table() -> None:
    """Every machine reachable with a small alphabet is consistent, every state is
    reachable, and the (state, event) pairs that are accepted are exactly the table's."""
    start = Machine.initial()
    seen = {start}
    queue = deque([start])
    accepted: set[tuple[State, type]] = set()
    while queue:
        machine = queue.popleft()
        for event in ALPHABET:
            try:
                after, effects = step(machine, event, max_tool_rounds=2)
            except IllegalTransitionError:
                continue
            accepted.add((machine.state, type(event)))
            if after.state is not machine.state:
                assert effects[0] == Transition(machine.state, after.state)
            # From anywhere, Cancel gets back to Idle without leaving a turn open.
            cancelled, _ = step(after, Cancel())
            assert cancelled.state is S.IDLE
            assert not cancelled.busy
            if after not in seen:
                seen.add(after)
                queue.append(after)
    assert {m.state for m in seen} == set(State)
    assert accepted == LEGAL_KINDS
    assert len(seen) < 500  # the state space stays small and finite
