"""Replays and counterfactual edits: user turns run again on a new branch, compared
turn by turn (answer diffs, metric deltas) against the branch they came from."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import pytest
from test_session_support import DEADLINE, Recorder, entered

from cm_notebook import tool
from cm_notebook.errors import (
    BranchNotFoundError,
    InvalidInputError,
    MessageNotFoundError,
)
from cm_notebook.fsm import State
from cm_notebook.model import MessageStatus
from cm_notebook.providers.base import (
    ChatRequest,
    Finish,
    ReasoningDelta,
    RefusalDelta,
    StreamChunk,
    TextDelta,
    ToolCallRequest,
)
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.turn_diff import TurnComparison

NewSession = Callable[..., ContextSession]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def contents(session: ContextSession, branch: str) -> list[str]:
    return [m.content for m in session.history(branch)]


def asked(fake: ScriptedProvider) -> list[str]:
    return [request.messages[-1].content for request in fake.requests]


@pytest.fixture
def fake() -> ScriptedProvider:
    return ScriptedProvider(strict=True)


@pytest.fixture
def three_turns(new_session: NewSession, fake: ScriptedProvider) -> ContextSession:
    """main: Q1 A1 Q2 A2 Q3 A3, under the branch prompt "Be brief."."""
    for n in (1, 2, 3):
        fake.reply(f"A{n} is the answer", usage=(10, 4))
    session = new_session(provider=fake)
    session.edit_system("Be brief.")
    for n in (1, 2, 3):
        session.send(f"Q{n}").result(DEADLINE)
    return session


def test_replay_sends_the_user_turns_again_with_another_model(
    three_turns: ContextSession,
) -> None:
    session = three_turns
    other = ScriptedProvider(strict=True, model="other")
    other.reply("A1 is the answer", usage=(10, 4))
    other.reply("B2 is different", usage=(10, 6))
    other.reply("A3 is the answer", usage=(10, 4))
    replay = session.replay("main", provider=other, temperature=0.5)
    comparison = replay.result(DEADLINE)
    assert replay.branch == "main-replay-1"
    assert contents(session, replay.branch) == [
        "Q1",
        "A1 is the answer",
        "Q2",
        "B2 is different",
        "Q3",
        "A3 is the answer",
    ]
    assert asked(other) == ["Q1", "Q2", "Q3"]
    # The replay keeps the branch's prompt and history, with the new parameters.
    assert [m.role for m in other.requests[1].messages] == ["system", "user", "assistant", "user"]
    assert other.requests[2].messages[0].content == "Be brief."
    assert all(request.params["temperature"] == 0.5 for request in other.requests)
    assert session.branches[replay.branch].labels == {"replay_of": "main"}
    assert isinstance(comparison, TurnComparison)
    assert (comparison.base, comparison.other) == ("main", "main-replay-1")
    assert comparison.changed_turns == [2]
    second = comparison.turns[1]
    assert second.diff == [
        ("-", "A2"),
        ("+", "B2"),
        ("=", " is "),
        ("-", "the answer"),
        ("+", "different"),
    ]
    assert second.deltas()["output_tokens"].change == 2
    assert second.base is not None
    assert second.base.model == "scripted"
    assert second.other is not None
    assert second.other.model == "other"
    assert "turn 2: Q2" in str(comparison)
    assert "output tokens 4 -> 6 (+2)" in str(comparison)
    assert "[-A2-]" in str(comparison)
    assert "cm-turn-changed" in comparison._repr_html_()
    assert repr(comparison) == "<TurnComparison 'main' -> 'main-replay-1': 3 turns, 1 changed>"


def test_a_replay_given_a_spec_is_not_answered_by_the_branchs_provider_instance(
    new_session: NewSession,
) -> None:
    # A branch whose default is an instance (kept by this session, not stored): a
    # replay of it given a provider spec answers with that spec's model.
    session = new_session(provider=ScriptedProvider())
    mine = ScriptedProvider(model="mine").reply("from mine")
    session.branch("a", provider=mine)
    session.send("Q1").result(DEADLINE)
    replay = session.replay("a", provider="scripted:spec-model")
    replay.result(DEADLINE)
    reply = session.history(replay.branch)[-1]
    assert (reply.metadata.model, reply.content) == ("spec-model", "echo: Q1")


def test_replay_refuses_what_it_cannot_do(new_session: NewSession) -> None:
    session = new_session(provider=ScriptedProvider())
    with pytest.raises(InvalidInputError, match="no user message"):
        session.replay("main")
    with pytest.raises(BranchNotFoundError):
        session.replay("nope")
    session.send("hi").result(DEADLINE)
    with pytest.raises(InvalidInputError, match="not_a_param"):
        session.replay("main", not_a_param=1)
    assert set(session.branches) == {"main"}


def test_tools_in_a_replay_go_through_approval(new_session: NewSession) -> None:
    session = new_session(provider=ScriptedProvider(["plain"]), tools=[add])
    session.send("What is 1 + 2?").result(DEADLINE)
    other = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("It is 3.")
    replay = session.replay("main", provider=other)
    calls = None
    end = time.monotonic() + DEADLINE
    while not (calls := session.pending_tool_calls) and time.monotonic() < end:
        time.sleep(0.01)  # poll for the approval request, with a deadline
    assert [call.name for call in calls] == ["add"]
    session.approve(branch=replay.branch)
    comparison = replay.result(DEADLINE)
    assert contents(session, replay.branch)[-1] == "It is 3."
    assert comparison.turns[0].other is not None
    assert comparison.turns[0].other.text == "It is 3."


def test_counterfactual_user_message_reruns_the_later_turns(
    three_turns: ContextSession, fake: ScriptedProvider
) -> None:
    session = three_turns
    original = session.history("main")
    fake.reply("new two").reply("new three")
    replay = session.counterfactual(original[2].id, "Q2 changed")
    assert replay.branch == "main-cf-1"
    comparison = replay.result(DEADLINE)
    history = session.history(replay.branch)
    assert [m.content for m in history][:3] == ["Q1", "A1 is the answer", "Q2 changed"]
    assert history[1].id == original[1].id  # shared, not copied
    assert [m.content for m in history][4] == "Q3"
    assert len(history) == 6
    assert session.branches[replay.branch].labels == {
        "counterfactual_of": "main",
        "edited": "user",
    }
    assert session.branches[replay.branch].system_prompt == "Be brief."
    assert comparison.turns[1].base_prompt == "Q2"
    assert comparison.turns[1].prompt == "Q2 changed"
    assert comparison.turns[0].changed is False


def test_counterfactual_reply_is_kept_and_later_turns_see_it(new_session: NewSession) -> None:
    fake = ScriptedProvider(strict=True).reply("A1").reply("A2")
    session = new_session(provider=fake)
    session.send("Q1").result(DEADLINE)
    session.send("Q2").result(DEADLINE)
    a1 = session.history()[1]
    fake.reply("B2")
    replay = session.counterfactual(a1.id, "A1 edited")
    comparison = replay.result(DEADLINE)
    assert contents(session, replay.branch) == ["Q1", "A1 edited", "Q2", "B2"]
    assert asked(fake)[2:] == ["Q2"]
    assert [m.content for m in fake.requests[2].messages] == ["Q1", "A1 edited", "Q2"]
    edited = session.history(replay.branch)[1]
    assert edited.metadata.model_dump()["edited_from"] == a1.id
    assert comparison.changed_turns == [1, 2]
    # The model's figures were of the original text, not of the edited one.
    assert a1.metadata.usage is not None
    assert a1.metadata.request_hash is not None
    assert (edited.metadata.usage, edited.metadata.stats) == (None, None)
    assert (edited.metadata.request_hash, edited.metadata.seed) == (None, None)
    assert edited.metadata.model == a1.metadata.model  # the turn's setting, kept


def test_counterfactual_tool_result_makes_the_model_answer_again(
    new_session: NewSession,
) -> None:
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2}).reply("It is 3.")
    session = new_session(provider=fake, tools=[add], approval="auto")
    session.send("What is 1 + 2?").result(DEADLINE)
    fake.reply("Q2 answer")
    session.send("Q2").result(DEADLINE)
    result = next(m for m in session.history() if m.role == "tool")
    assert result.content == "3"
    fake.reply("It is 4.").reply("Q2 again")
    replay = session.counterfactual(result.id, "4")
    comparison = replay.result(DEADLINE)
    roles = [m.role for m in session.history(replay.branch)]
    assert roles == ["user", "assistant", "tool", "assistant", "user", "assistant"]
    assert contents(session, replay.branch)[2:4] == ["4", "It is 4."]
    assert fake.requests[3].messages[-1].content == "4"
    assert asked(fake)[4] == "Q2"
    assert comparison.turns[0].diff == [("=", "It is "), ("-", "3."), ("+", "4.")]


def test_counterfactual_system_prompt_reruns_every_turn(
    three_turns: ContextSession, fake: ScriptedProvider
) -> None:
    session = three_turns
    fake.reply("Arr 1").reply("Arr 2").reply("Arr 3")
    replay = session.counterfactual("system", "Answer like a pirate.")
    comparison = replay.result(DEADLINE)
    history = session.history(replay.branch)
    assert [m.content for m in history if m.role == "user"] == ["Q1", "Q2", "Q3"]
    assert history[0].parent_id is None
    assert session.system_prompt_of(replay.branch) == "Answer like a pirate."
    assert session.branches[replay.branch].labels["edited"] == "system"
    assert len(comparison.turns) == 3
    assert all(r.messages[0].content == "Answer like a pirate." for r in fake.requests[3:])
    assert comparison.turns[2].other is not None
    assert comparison.turns[2].other.text == "Arr 3"


def test_counterfactual_refuses_bad_input(three_turns: ContextSession) -> None:
    session = three_turns
    before = set(session.branches)
    with pytest.raises(MessageNotFoundError):
        session.counterfactual("m0000000000000000000", "x")
    q1 = session.history()[0]
    with pytest.raises(InvalidInputError, match="cannot be empty"):
        session.counterfactual(q1.id, "  ")
    with pytest.raises(InvalidInputError, match="must be a string"):
        session.counterfactual(q1.id, 3)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="2,000,001 characters; the limit is 2,000,000"):
        session.counterfactual(q1.id, "x" * 2_000_001)  # what send() refuses too
    assert set(session.branches) == before


def test_a_stopped_turn_ends_the_replay(three_turns: ContextSession) -> None:
    session = three_turns
    other = ScriptedProvider(strict=True).hang(after_chunks=1, text="partial").reply("B2")
    recorder = Recorder(session)
    replay = session.replay("main", provider=other, name="again")
    recorder.wait(entered(State.STREAMING, "again"))
    session.stop("again")  # the Stop button
    replay.result(DEADLINE)
    assert len(other.requests) == 1  # Q2 and Q3 are not sent on top of a partial answer
    statuses = [m.status for m in session.history("again")]
    assert statuses == [MessageStatus.COMPLETE, MessageStatus.INTERRUPTED]


def test_compare_turns_against_the_pinned_baseline_with_scores(
    three_turns: ContextSession,
) -> None:
    session = three_turns
    other = ScriptedProvider().reply("A1 is the answer").reply("A2 is the answer")
    other.reply("A3 is the answer")
    replay = session.replay("main", provider=other, name="candidate")
    replay.result(DEADLINE)
    with pytest.raises(InvalidInputError, match="against which branch"):
        session.compare_turns("main")
    for asked in (("nope",), ("main", "nope")):
        with pytest.raises(BranchNotFoundError, match="no branch 'nope'"):
            session.compare_turns(*asked)
    session.pin_baseline("main")
    first = session.history("main")[1]
    session.rate(first.id, score=2)
    session.rate(session.history("candidate")[1].id, score=5)
    comparison = session.compare_turns("candidate")
    assert comparison.base == "main"
    assert comparison.turns[0].deltas()["score"].change == 3.0
    assert comparison.changed_turns == []


def test_compare_turns_after_the_replayed_branch_was_deleted_says_so(
    three_turns: ContextSession,
) -> None:
    session = three_turns
    session.branch("source", switch=False)
    other = ScriptedProvider().reply("A1").reply("A2").reply("A3")
    session.replay("source", provider=other, name="again").result(DEADLINE)
    session.delete_branch("source")
    with pytest.raises(BranchNotFoundError, match="replayed from 'source', which has been") as e:
        session.compare_turns("again")
    assert "against=" in str(e.value)
    assert session.compare_turns("again", "main").base == "main"


def test_a_score_delta_compares_one_metric_on_both_sides(three_turns: ContextSession) -> None:
    session = three_turns
    other = ScriptedProvider().reply("A1 is the answer").reply("A2 is the answer")
    other.reply("A3 is the answer")
    session.replay("main", provider=other, name="candidate").result(DEADLINE)
    # Only main's replies are graded for accuracy; both branches get a length.
    session.score(lambda m: 1.0, name="accuracy", branches="main", progress=False)
    session.score(lambda m: len(m.content), name="length", progress=False)
    delta = session.compare_turns("candidate", "main").turns[0].deltas()["score"]
    assert (delta.base, delta.other) == (16.0, 16.0)  # length against length, not accuracy
    # A 1-5 rating on one side only is no scale for the other's metric: nothing shown.
    session.rate(session.history("main")[1].id, score=4)
    session.rate(session.history("candidate")[1].id, thumbs="up")
    session.score(lambda m: 0.5, name="only_here", branches="candidate", progress=False)
    delta = session.compare_turns("candidate", "main").turns[0].deltas()["score"]
    assert (delta.base, delta.other) == (16.0, 16.0)
    # The second turn: main scored, the candidate's reply not rated by hand.
    assert session.compare_turns("candidate", "main").turns[1].deltas()["score"].change == 0.0


def test_the_compare_view_puts_the_baseline_first_with_per_turn_diffs(
    three_turns: ContextSession,
) -> None:
    from cm_notebook.widgets import CompareView

    session = three_turns
    other = ScriptedProvider().reply("A1 is the answer", usage=(10, 4))
    other.reply("B2 differs", usage=(10, 7)).reply("A3 is the answer", usage=(10, 4))
    session.replay("main", provider=other, name="candidate").result(DEADLINE)
    session.pin_baseline("main")
    view = CompareView(session, "candidate", "main")
    try:
        assert view.branch_names == ["main", "candidate"]
        assert "per turn: <b><bdi>candidate</bdi></b> against <b><bdi>main</bdi></b>" in view.value
        assert "1 of 3 turns changed" in view.value
        assert "output tokens 4 -&gt; 7 (+3)" in view.value
        assert view.value.count('class="cm-turn ') == 1  # only the changed turn
    finally:
        view.close()


class _Thinker:
    """Replies with reasoning: a refusal, then an answer, then tool calls."""

    name = "thinker"
    model = "thinker-1"

    def __init__(self) -> None:
        self.replies = 0

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        self.replies += 1
        yield ReasoningDelta(f"Thought {self.replies}.", "reasoning_content")
        if self.replies == 1:
            yield RefusalDelta("I can't help with that.")
        elif self.replies == 2:
            yield ToolCallRequest("call-1", "add", '{"a": 1, "b": 2}')
            yield Finish("tool_calls")
            return
        else:
            yield TextDelta("Fine.")
        yield Finish("stop")

    async def aclose(self) -> None:
        pass


def test_an_edited_reply_is_neither_a_refusal_nor_reasoned_unless_it_calls_tools(
    new_session: NewSession,
) -> None:
    session = new_session(provider=_Thinker(), tools=[add], approval="auto")
    refused = session.send("Rob a bank.").result(DEADLINE)
    assert refused.metadata.refusal
    assert refused.metadata.reasoning == "Thought 1."
    replay = session.counterfactual(refused.id, "Sure.")
    replay.result(DEADLINE)
    edited = session.history(replay.branch)[1]
    assert edited.content == "Sure."
    assert not edited.metadata.refusal
    assert (edited.metadata.reasoning, edited.metadata.reasoning_field) == (None, None)
    # A reply with tool calls keeps its reasoning: the model answers its calls again,
    # and the API needs the reasoning back with them.
    session.switch("main")
    session.send("What is 1 + 2?").result(DEADLINE)
    calling = session.history()[3]
    assert calling.tool_calls
    replay = session.counterfactual(calling.id, "Let me add.")
    replay.result(DEADLINE)
    edited = session.history(replay.branch)[3]
    assert edited.content == "Let me add."
    assert edited.metadata.reasoning == "Thought 2."


@pytest.mark.anyio
async def test_an_interrupted_wait_for_a_replay_says_how_to_stop_it(
    three_turns: ContextSession,
) -> None:
    # `cmp = await session.replay(...)` interrupted (here: its wait cancelled, as the
    # kernel's Interrupt does): the cell has no Replay, so it is told the session's stop.
    session = three_turns
    replay = session.replay("main", provider=ScriptedProvider().hang())
    waiting = asyncio.ensure_future(replay)
    await asyncio.sleep(0.1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError) as cancelled:
        await waiting
    branch = replay.branch
    assert str(cancelled.value) == (
        f"stopped waiting; the replay goes on, on branch {branch!r}: "
        f"session.stop(branch={branch!r}) stops its running turn, and with it the replay"
    )
    session.stop(branch=branch)  # as told
    comparison = await replay
    assert contents(session, branch)[-1] == ""  # the first turn, stopped before any text
    assert isinstance(comparison, TurnComparison)
