"""Comparisons and per-turn diffs show a reply that did not complete (it failed, was
interrupted or is still streaming) as such: its status and why, its partial text
unmarked, never diffed or measured against the other answers as if it were one."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from test_session_support import DEADLINE

from cm_notebook.compare import BranchResult, Comparison
from cm_notebook.errors import PermanentProviderError
from cm_notebook.model import MessageStatus, StreamStats, TokenUsage
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool
from cm_notebook.turn_diff import METRICS, TurnComparison, TurnDiff
from cm_notebook.widgets.compare import comparison_html


def test_a_failed_arm_is_shown_as_failed_not_as_its_answer(
    new_session: Callable[..., ContextSession],
) -> None:
    good = ScriptedProvider(["Paris is the capital."])
    broken = ScriptedProvider().error("permanent", after_chunks=2, text="Lyon is")
    session = new_session(provider=ScriptedProvider())
    comparison = session.fan_out(
        "Capital of France?",
        [{"provider": good, "branch": "good"}, {"provider": broken, "branch": "bad"}],
    ).result(DEADLINE)
    bad = comparison["bad"]
    assert (bad.status, bad.unfinished, bad.text) == (MessageStatus.ERROR, True, "Lyon is")
    assert bad.error == "scripted permanent failure"
    assert not comparison["good"].unfinished
    # The attempt's tokens and speed are not shown as what an answer cost.
    assert bad.facts() == ["scripted", "error"]

    text = str(comparison)
    assert "== bad (scripted, error)" in text
    assert "no answer: the reply failed: scripted permanent failure" in text
    assert "partial text: Lyon is" in text
    assert "diff good -> bad: none, bad has no answer (error)" in text
    assert "[-Paris-]" not in text
    assert "similarity" not in text

    page = comparison._repr_html_()
    assert 'class="cm-outcome cm-outcome-error"' in page
    assert "no answer: the reply failed: scripted permanent failure" in page
    assert "no diff: <bdi>bad</bdi> has no answer (error)" in page
    assert "similarity" not in page
    assert "line-through" not in page  # nothing marked as removed by the failed arm

    turns = session.compare_turns("bad", against="good")
    assert turns.changed_turns == [1]
    first = turns.turns[0]
    assert [side.branch for side in first.unanswered] == ["bad"]
    deltas = first.deltas()
    assert all(deltas[name].other is None for name, *_ in METRICS)
    assert all(deltas[name].change is None for name, *_ in METRICS)
    shown = str(turns)
    assert "good: Paris is the capital." in shown
    assert "bad: no answer: the reply failed: scripted permanent failure" in shown
    assert "bad has no answer (error)" in shown
    assert "output tokens" not in shown
    assert "TTFT" not in shown
    assert "[-Paris-]" not in shown
    turn_page = turns._repr_html_()
    assert "cm-outcome-error" in turn_page
    assert "<bdi>bad</bdi> has no answer (error)" in turn_page
    assert "output tokens" not in turn_page


def test_no_similarity_or_diff_is_measured_against_an_unfinished_reply(
    new_session: Callable[..., ContextSession],
) -> None:
    # The numbers the API gives agree with the views: no answer, nothing measured.
    session = new_session(provider=ScriptedProvider())
    both_failed = session.fan_out(
        "Capital of France?",
        [
            {"provider": ScriptedProvider().error("permanent"), "branch": "one"},
            {"provider": ScriptedProvider().error("permanent"), "branch": "two"},
        ],
    ).result(DEADLINE)
    assert both_failed.similarity() is None  # two failures are not "identical"
    assert both_failed.diff() == []
    assert both_failed.unified_diff() == ""
    words = "Paris is the capital of France."
    cut = ScriptedProvider().error("permanent", after_chunks=6, text=words)
    partial = session.fan_out(
        "Capital of France?",
        [
            {"provider": ScriptedProvider([words]), "branch": "good"},
            {"provider": cut, "branch": "cut"},
            {"provider": ScriptedProvider([words]), "branch": "also"},
        ],
    ).result(DEADLINE)
    assert partial["cut"].text == words
    assert partial.similarity() is None
    assert partial.similarity("cut") is None
    assert partial.diff("cut") == []
    assert partial.unified_diff("cut") == ""
    assert partial.similarity("also") == 1.0  # two answers are still measured
    assert partial.diff("also") == [("=", words)]
    turn = session.compare_turns("cut", against="good").turns[0]
    assert turn.diff == []
    assert turn.changed


def test_an_interrupted_arm_is_shown_as_interrupted(
    new_session: Callable[..., ContextSession],
) -> None:
    stuck = ScriptedProvider().hang(after_chunks=1, text="Paris")
    session = new_session(provider=ScriptedProvider())
    fan = session.fan_out(
        "Capital of France?",
        [{"provider": ScriptedProvider(["Paris."]), "branch": "a"}, {"provider": stuck}],
    )
    deadline = time.monotonic() + DEADLINE
    while not stuck.requests and time.monotonic() < deadline:
        time.sleep(0.01)  # poll for the hanging arm's request, with a deadline
    fan.turns[1].cancel()
    comparison = fan.result(DEADLINE)
    cut = comparison.results[1]
    assert cut.status is MessageStatus.INTERRUPTED
    assert cut.facts()[-1] == "interrupted"
    assert "no answer: the reply was interrupted" in str(comparison)
    assert f"diff a -> {cut.branch}: none, {cut.branch} has no answer (interrupted)" in str(
        comparison
    )
    assert "cm-outcome-interrupted" in comparison._repr_html_()


def test_results_without_a_status_or_complete_are_answers() -> None:
    usage = TokenUsage(input_tokens=1, output_tokens=2)
    plain = BranchResult(branch="a", text="x", usage=usage)
    done = BranchResult(
        branch="b", text="y", status=MessageStatus.COMPLETE, usage=usage, stats=StreamStats()
    )
    streaming = BranchResult(branch="c", text="z", status=MessageStatus.STREAMING, usage=usage)
    assert not plain.unfinished
    assert plain.outcome is None
    assert "1+2 tokens" in done.facts()
    assert streaming.outcome == "the reply is still being generated"
    assert streaming.facts() == ["?", "streaming"]
    assert "similarity: " in str(Comparison(results=[plain, done]))
    assert Comparison(results=[plain, done]).similarity() == 0.0
    assert "c has no answer (streaming)" in str(Comparison(results=[plain, streaming]))
    assert Comparison(results=[streaming, plain]).similarity() is None


def test_a_turn_stopped_in_its_tool_rounds_has_no_answer(
    new_session: Callable[..., ContextSession],
) -> None:
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    fake = ScriptedProvider(strict=True)
    for _ in range(3):
        fake.tool_call("add", {"a": 1, "b": 2})
    session = new_session(provider=fake, tools=[add], approval="auto", max_tool_rounds=2)
    with pytest.raises(PermanentProviderError, match="tool rounds"):
        session.send("1 + 2?").result(DEADLINE)
    last = session.history()[-2]
    assert (last.role, last.status, len(last.tool_calls)) == ("assistant", "complete", 1)
    fake.reply("1 + 2 = 3")
    comparison = session.replay("main").result(DEADLINE)
    turn = comparison.turns[0]
    assert turn.base is not None
    assert turn.base.unfinished
    assert turn.base.facts()[-1] == "tool calls"
    assert [side.branch for side in turn.unanswered] == ["main"]
    assert turn.changed
    # No token or latency delta against a reply that only asked for a tool.
    assert all(delta.change is None for delta in turn.deltas().values())
    shown = str(comparison)
    assert "main: no answer: the reply only asks for tools" in shown
    assert "main has no answer (tool calls)" in shown
    assert "output tokens" not in shown
    assert "cm-outcome-tool-calls" in comparison._repr_html_()
    # As in session.stability() and session.compare(): no answer to count.
    assert session.stability(["main", comparison.other]).total == 1
    assert session.compare("main", comparison.other)["main"].unfinished
    columns = [
        {"branch": name, "system": None, "messages": session.history(name), "state": "Idle"}
        for name in ("main", comparison.other)
    ]
    view = comparison_html(columns)
    assert "cm-outcome-tool-calls" in view
    assert "line-through" not in view  # the answer is not diffed against the empty text


def test_a_turn_one_branch_does_not_have_is_no_answer_not_an_empty_one(
    new_session: Callable[..., ContextSession],
) -> None:
    # A replay that failed at turn 2 has no turn 3: its answer there is not "", and the
    # source's answer is no deletion, nor are its tokens and timings measured against
    # nothing.
    session = new_session(provider=ScriptedProvider())
    for prompt in ("one", "two", "three"):
        session.send(prompt).result(DEADLINE)
    session.rate(session.history()[-1].id, score=5)
    failing = ScriptedProvider(strict=True).reply("echo: one")
    failing.error("permanent", message="model not found")
    replay = session.replay("main", provider=failing, name="again")
    with pytest.raises(PermanentProviderError, match="model not found"):
        replay.result(DEADLINE)
    turns = session.compare_turns("again", against="main")
    assert turns.changed_turns == [2, 3]
    third = turns.turns[2]
    assert third.diff == []
    assert [side.branch for side in third.unanswered] == ["again"]
    assert third.other is not None
    assert (third.other.missing, third.other.state) == (True, "no reply")
    deltas = third.deltas()
    assert deltas["score"] == (5.0, None)  # the rating stays, measured against nothing
    assert all(delta.change is None for delta in deltas.values())
    shown = str(turns).split("== turn 3: three\n")[1]
    assert shown == (
        "main: echo: three\n"
        "again: no answer: there is no reply to this turn on this branch\n"
        "   again has no answer (no reply)"
    )
    page = turns._repr_html_()
    assert "line-through" not in page  # nothing marked as removed by the missing turn
    assert 'class="cm-outcome cm-outcome-no-reply"' in page
    assert "<bdi>again</bdi> has no answer (no reply)" in page
    assert "score 5.00" not in page
    # Either way round: the base side is the one without the turn.
    backwards = session.compare_turns("main", against="again").turns[2]
    assert [side.branch for side in backwards.unanswered] == ["again"]
    assert backwards.diff == []
    # The compare view shows the same per-turn rows.
    columns = [
        {"branch": name, "system": None, "messages": session.history(name), "state": "Idle"}
        for name in ("main", "again")
    ]
    view = comparison_html(columns, [turns])
    assert "cm-outcome-no-reply" in view
    assert "line-through" not in view


def test_a_branch_without_a_reply_is_compared_as_no_answer(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.send("one").result(DEADLINE)
    session.branch("empty", from_message=session.history()[0].id, switch=False)
    comparison = session.compare("main", "empty")
    assert comparison.similarity() is None
    assert comparison.diff() == []
    empty = comparison["empty"]
    assert (empty.missing, empty.unfinished, empty.facts()) == (True, True, ["?", "no reply"])
    text = str(comparison)
    assert "no answer: there is no reply to this turn on this branch" in text
    assert "diff main -> empty: none, empty has no answer (no reply)" in text
    assert "[-echo: one-]" not in text
    page = comparison._repr_html_()
    assert "no diff: <bdi>empty</bdi> has no answer (no reply)" in page
    assert "line-through" not in page
    # A result made by hand without a status is still an answer.
    assert not BranchResult(branch="z").unfinished


def test_a_turn_diff_made_without_one_side_diffs_nothing() -> None:
    turn = TurnDiff(turn=1, prompt="Q", base=BranchResult(branch="a", text="an answer"))
    assert turn.diff == []
    assert turn.changed
    assert "[-an answer-]" not in str(TurnComparison(base="a", other="b", turns=[turn]))
