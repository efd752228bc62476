"""Stability: repeated answers grouped by identical text, near ones diffed against the
most common."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
from test_session_support import DEADLINE, Recorder, entered

from cm_notebook import tool
from cm_notebook.compare import word_diff
from cm_notebook.errors import InvalidInputError
from cm_notebook.fsm import State
from cm_notebook.session import ContextSession
from cm_notebook.stability import similarity, stability
from cm_notebook.testing import ScriptedProvider


def test_identical_answers_are_counted_most_common_first() -> None:
    answers = [
        "Paris is the capital of France.",
        "The capital is Lyon, I think, or maybe Marseille.",
        "Paris is the capital of France. ",  # the same after stripping
        "Paris is the capital city of France.",
        "Paris is the capital of France.",
    ]
    result = stability(answers)
    assert [group.count for group in result.groups] == [3, 1, 1]
    assert (result.total, result.distinct) == (5, 3)
    assert result.agreement == pytest.approx(0.6)
    top, near, far = result.groups
    assert top.text == "Paris is the capital of France."
    assert top.members == ["#0", "#2", "#4"]
    assert top.diff is None
    assert top.similarity == 1.0
    # Ties keep the order they were first seen in; the near one carries the diff.
    assert near.text == "The capital is Lyon, I think, or maybe Marseille."
    assert near.diff is None  # not near: too different
    assert far.text == "Paris is the capital city of France."
    assert far.diff == word_diff(top.text, far.text)
    assert far.near
    assert ("+", "city ") in far.diff
    assert repr(result) == "<Stability 5 answers, 3 distinct, agreement 60%>"
    text = str(result)
    assert "{+city +}" in text
    html = result._repr_html_()
    assert html.count("<tr>") == 4  # a header and one row per group
    assert "city" in html
    assert "background:#dfd" in html  # the added word, marked as compare.py marks it
    assert "60%" in html


def test_similarity_comes_from_the_word_diff() -> None:
    assert similarity(word_diff("a b c", "a b c")) == 1.0
    assert similarity(word_diff("", "")) == 1.0
    assert similarity(word_diff("abc", "xyz")) == 0.0
    assert 0.5 < similarity(word_diff("one two three four", "one two three five")) < 1.0


def test_options_and_bad_input() -> None:
    lower = stability(["Yes", "yes", "YES.", "No."], normalize=lambda t: t.lower().strip(" ."))
    assert [(group.text, group.count) for group in lower.groups] == [("Yes", 3), ("No.", 1)]
    strict = stability(["a b c d", "a b c e"], threshold=1.0)
    assert strict.groups[1].diff is None
    loose = stability(["a b c d", "a b c e"], threshold=0.0)
    assert loose.groups[1].diff is not None
    assert stability([]).agreement == 1.0
    # Not shown as "agreement 100%": there were no answers to agree.
    assert repr(stability([])) == "<Stability no answers>"
    assert "no answers" in stability([])._repr_html_()
    assert stability([]).top is None
    with pytest.raises(InvalidInputError, match="threshold"):
        stability(["a"], threshold=2)
    with pytest.raises(InvalidInputError, match="not one string"):
        stability("abc")
    with pytest.raises(InvalidInputError, match="answer #1 is a int"):
        stability(["a", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match=r"returned a list for answer #0 \('a b'\)"):
        stability(["a b"], normalize=str.split)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="returned a NoneType"):
        stability(["a", "b"], normalize=lambda t: None)  # type: ignore[arg-type,return-value]


def test_branches_line_up_with_members_when_some_answers_name_none() -> None:
    from cm_notebook.model import Message

    def said(text: str) -> Message:
        return Message(role="assistant", content=text)

    first, second, third = said("Paris."), said("Paris."), said("Paris.")
    result = stability([("a", first), second, ("c", third)])
    (group,) = result.groups
    assert group.members == [first.id, second.id, third.id]
    assert group.branches == ["a", second.id, "c"]  # one per member, in order
    assert stability([first, second]).groups[0].branches == []
    with pytest.raises(InvalidInputError, match="answer #0 is a tuple of 3"):
        stability([("a", first, "extra")])  # type: ignore[list-item]


def test_session_stability_compares_the_last_reply_of_each_branch(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(["Blue.", "Blue.", "Blue, mostly.", "Blue."])
    session = new_session("repeats", provider=fake)
    comparison = session.fan_out(
        "Sky colour?", [{"temperature": 1.0}, {"temperature": 1.0}, {"temperature": 1.0}]
    ).result(DEADLINE)
    result = session.stability(comparison.branches)
    assert [group.count for group in result.groups] == [2, 1]
    assert sorted(result.groups[0].branches + result.groups[1].branches) == sorted(
        comparison.branches
    )
    assert result.groups[0].members == [
        r.message_id for r in comparison.results if r.text == "Blue."
    ]
    # Every branch by default; a branch without a reply ("main" here) is left out.
    assert session.stability().total == 3


def test_a_reply_that_failed_is_not_an_answer(new_session: Callable[..., ContextSession]) -> None:
    fake = ScriptedProvider().reply("Paris.").error("permanent").reply("Paris.")
    session = new_session("repeats", provider=fake)
    fanned = session.fan_out("Capital?", [{}, {}, {}])
    with contextlib.suppress(Exception):
        fanned.result(DEADLINE)
    result = session.stability()
    assert (result.total, result.distinct, result.agreement) == (2, 1, 1.0)


@tool
def lookup(city: str) -> str:
    """The country of a city."""
    return "France"


def test_a_reply_counts_once_however_many_branches_share_it(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider().reply("Paris").reply("Lyon")
    fake.tool_call("lookup", {"city": "Paris"})
    session = new_session("repeats", provider=fake, tools=[lookup], approval="ask")
    session.send("Capital of France?").result(DEADLINE)
    question = session.history()[0].id
    session.edit(question, "Capital of France?", branch="run2").result(DEADLINE)
    # A fork of main with nothing sent on it shares main's reply.
    session.branch("followup", from_message=session.history("main")[-1].id, switch=False)
    result = session.stability()
    assert (result.total, result.distinct, result.agreement) == (2, 2, 0.5)
    assert [group.branches for group in result.groups] == [["main"], ["run2"]]
    # A reply that only asks for a tool (it waits for approval here) is no answer.
    recorder = Recorder(session)
    session.edit(question, "Capital of France?", branch="run3")
    recorder.wait(entered(State.AWAITING_TOOL_APPROVAL, "run3"))
    assert session.history("run3")[-1].tool_calls
    assert session.stability().total == 2
    session.stop("run3")


def test_replies_to_different_prompts_are_no_repeated_runs(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(["Sure.", "Yes.", "Yes."])
    session = new_session("mixed", provider=fake)
    session.send("Let's talk about physics.").result(DEADLINE)
    arm = session.fan_out("Is fire hot?", [{"temperature": 0.2}]).result(DEADLINE).branches[0]
    session.send("Is ice cold?", branch="main").result(DEADLINE)
    # "Yes." to both is no agreement of repeated runs: refused, saying which is which.
    with pytest.raises(InvalidInputError, match="2 different prompts") as refused:
        session.stability()
    assert f"'Is ice cold?': main; 'Is fire hot?': {arm}" in str(refused.value)
    with pytest.raises(InvalidInputError, match="different prompts"):
        session.stability(["main", arm])
    # The branches of one prompt are grouped as before.
    assert session.stability([arm]).total == 1
