"""Fan-out (one message on N new branches at once) and comparing branches."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_session_support import (
    DEADLINE,
    Recorder,
    message_files,
    roles,
)

from cm_notebook.compare import BranchResult, Comparison, diff_side_html, word_diff
from cm_notebook.errors import BusyError, InvalidInputError
from cm_notebook.events import BranchCreated, ContentDelta, MessageCompleted
from cm_notebook.fsm import State
from cm_notebook.model import MessageStatus, TokenUsage
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.turn_diff import TurnComparison, TurnDiff


def test_fan_out_runs_the_variants_concurrently_and_compares_them(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    base = ScriptedProvider(["Setup done."])
    # The first arm streams slowly enough (4 x 150 ms) that the second, started right
    # after it, begins while it is still streaming even on a loaded machine.
    fast = ScriptedProvider(model="fast").reply(
        "Paris is the capital.", chunks="words", delay=0.15, usage=(10, 4)
    )
    slow = ScriptedProvider(model="slow").reply(
        "The capital is Paris.", chunks="words", delay=0.02, usage=(10, 5)
    )
    session = new_session(provider=base)
    session.send("Setup").result(DEADLINE)
    recorder = Recorder(session)
    files_before = len(message_files(data_dir, session))

    fan = session.fan_out("Capital of France?", [fast, slow])
    assert len(fan.turns) == 2
    comparison = fan.result(DEADLINE)
    assert fan.done()
    assert isinstance(comparison, Comparison)
    assert comparison.branches == fan.branches
    first, second = fan.branches
    assert comparison[first].text == "Paris is the capital."
    assert comparison[second].text == "The capital is Paris."
    assert comparison[first].usage == TokenUsage(input_tokens=10, output_tokens=4)
    assert comparison[second].model == "slow"
    assert all(r.duration_ms is not None and r.duration_ms > 0 for r in comparison.results)
    assert all(r.status is MessageStatus.COMPLETE for r in comparison.results)

    # Concurrent: deltas of the two branches interleave.
    streams = [e.branch for e in recorder.of(ContentDelta)]
    assert streams.index(second) < len(streams) - 1 - streams[::-1].index(first)

    # Each variant is a new branch from the same head; nothing is copied.
    assert {e.branch for e in recorder.of(BranchCreated)} == {first, second}
    assert session.active_branch == "main"
    assert [m.content for m in session.history()] == ["Setup", "Setup done."]
    for name in fan.branches:
        history = session.history(name)
        assert roles(history) == ["user", "assistant", "user", "assistant"]
        assert history[:2] == session.history()
        assert session.state_of(name) is State.IDLE
    assert len(message_files(data_dir, session)) == files_before + 4
    # Both models saw the same conversation (each branch has its own user message).
    seen_by = [[(m.role, m.content) for m in f.last_request.messages] for f in (fast, slow)]
    assert (
        seen_by[0]
        == seen_by[1]
        == [
            ("user", "Setup"),
            ("assistant", "Setup done."),
            ("user", "Capital of France?"),
        ]
    )

    # Word diff and similarity against the first branch.
    diff = comparison.diff()
    assert "".join(t for op, t in diff if op in "=-") == "Paris is the capital."
    assert "".join(t for op, t in diff if op in "=+") == "The capital is Paris."
    assert 0 < comparison.similarity() < 1
    assert first in str(comparison)
    assert "similarity" in str(comparison)
    assert "Paris" in comparison.unified_diff()


@pytest.mark.anyio
async def test_fan_out_over_parameters_is_awaitable(data_dir: Path) -> None:
    fake = ScriptedProvider(["cold answer", "warm answer"])
    session = ContextSession.create(provider=fake, data_dir=data_dir)
    fan = session.fan_out(
        "Hi", [{"temperature": 0, "branch": "cold"}, {"temperature": 1.0, "branch": "warm"}]
    )
    comparison = await fan
    assert comparison.branches == ["cold", "warm"]
    assert comparison["cold"].parameters == {"temperature": 0}
    assert comparison["warm"].parameters == {"temperature": 1.0}
    assert {r.text for r in comparison.results} == {"cold answer", "warm answer"}
    assert sorted(r.params["temperature"] for r in fake.requests) == [0, 1.0]
    with pytest.raises(KeyError):
        comparison["nope"]


def test_fan_out_names_branches_after_what_differs(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider())
    twins = [ScriptedProvider(model="same"), ScriptedProvider(model="same")]
    fan = session.fan_out("Hi", [*twins, {"temperature": 0.5}])
    fan.result(DEADLINE)
    names = fan.branches
    assert len(set(names)) == 3
    assert names[0].startswith("main-scripted-same")
    assert names[2] == "main-temperature-0.5"
    again = session.fan_out("Hi", [{"temperature": 0.5}])
    again.result(DEADLINE)
    assert again.branches == ["main-temperature-0.5-2"]
    # Several mapping variants are named after what differs between them only.
    third = session.fan_out("Hi", [{"temperature": 0, "seed": 1}, {"temperature": 1, "seed": 1}])
    third.result(DEADLINE)
    assert third.branches == ["main-temperature-0", "main-temperature-1"]


def test_a_failed_arm_is_reported_in_the_comparison(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    good = ScriptedProvider(["fine"])
    bad = ScriptedProvider().error("permanent", message="quota exceeded")
    session = new_session(provider=good)
    comparison = session.fan_out("Hi", [good, {"provider": bad, "branch": "broken"}]).result(
        DEADLINE
    )
    assert comparison.results[0].text == "fine"
    broken = comparison["broken"]
    assert broken.status is MessageStatus.ERROR
    assert session.state_of("broken") is State.PERMANENT_FAILURE
    # Retrying the failed arm asks the arm's own provider again, not the session's.
    bad.reply("recovered")
    assert session.retry(branch="broken").result(DEADLINE).content == "recovered"
    assert session.compare("broken")["broken"].status is MessageStatus.COMPLETE


def test_cancelling_a_fan_out_interrupts_every_arm(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    arms = [ScriptedProvider().hang(after_chunks=1, text=t) for t in ("a", "b")]
    session = new_session(provider=ScriptedProvider())
    recorder = Recorder(session)
    fan = session.fan_out("Hi", arms)
    recorder.wait(lambda events: sum(isinstance(e, ContentDelta) for e in events) == 2)
    assert not fan.done()
    fan.cancel()
    comparison = fan.result(DEADLINE)
    assert [(r.text, r.status) for r in comparison.results] == [
        ("a", MessageStatus.INTERRUPTED),
        ("b", MessageStatus.INTERRUPTED),
    ]
    recorder.wait(lambda events: sum(isinstance(e, MessageCompleted) for e in events) == 2)
    fan.cancel()  # harmless once done


@pytest.mark.parametrize("variants", [[], "temperature", [{"branch": "x"}, {"branch": "x"}]])
def test_fan_out_refuses_bad_variant_lists(
    data_dir: Path, new_session: Callable[..., ContextSession], variants: object
) -> None:
    session = new_session(provider=ScriptedProvider())
    with pytest.raises(InvalidInputError):
        session.fan_out("Hi", variants)  # type: ignore[arg-type]
    assert list(session.branches) == ["main"]
    assert message_files(data_dir, session) == []


def test_compare_defaults_to_every_branch(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider(["one", "two"]))
    session.send("Hi").result(DEADLINE)
    session.regenerate().result(DEADLINE)
    session.branch("empty", from_message=None)
    session.switch("main")
    session.branch("fresh", switch=False)
    comparison = session.compare()
    assert comparison.branches == ["main", "empty", "fresh"]
    assert comparison["main"].text == "two"
    assert comparison["empty"].text == "two"  # the fork shares main's last answer
    only = session.compare("main")
    assert only.diff() == []
    assert only.similarity() == 1.0
    assert only.unified_diff() == ""


def test_compare_measures_against_the_pinned_baseline(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(["A.", "Paris is the capital.", "Paris is the capital of France."])
    session = new_session("baseline", provider=fake)
    session.send("q").result(DEADLINE)
    first, second = (
        session.fan_out("q2", [{"temperature": 0.1}, {"temperature": 0.2}])
        .result(DEADLINE)
        .branches
    )
    session.pin_baseline(second)
    # Every branch, or those given: the baseline first, the others in their order.
    assert session.compare().branches == [second, "main", first]
    pair = session.compare(first, second)
    assert pair.branches == [second, first]
    # (Which arm got which scripted reply depends on which asked first.)
    assert pair.diff() == word_diff(pair[second].text, pair[first].text)
    assert pair.diff() != word_diff(pair[first].text, pair[second].text)
    assert f"diff {second} -> {first}" in str(pair)
    # Without the baseline among them, the first given is measured against.
    assert session.compare(first, "main").branches == [first, "main"]


def test_comparison_html_escapes_everything(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    hostile = "<script>alert('x')</script> & <b>bold</b>"
    fakes = [
        ScriptedProvider(model="<img src=x onerror=alert(1)>").reply(hostile),
        ScriptedProvider(model="plain").reply(hostile + " <i>more</i>"),
    ]
    session = new_session(provider=ScriptedProvider())
    comparison = session.fan_out("Hi", [{"provider": fakes[0], "branch": "a+b"}, fakes[1]]).result(
        DEADLINE
    )
    page = comparison._repr_html_()
    for raw in ("<script>", "<img", "<b>bold", "<i>more"):
        assert raw not in page
    assert "&lt;script&gt;" in page
    assert "&amp;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "similarity" in page


def test_comparison_of_plain_results() -> None:
    results = [
        BranchResult(branch="<a>", text="x < y"),
        BranchResult(branch="b", text="x > y", usage=TokenUsage(input_tokens=1, output_tokens=2)),
    ]
    comparison = Comparison(results=results)
    page = comparison._repr_html_()
    assert "<a>" not in page
    assert "&lt;a&gt;" in page
    assert "&lt;" in page
    assert "&gt;" in page
    assert "1+2 tokens" in page
    assert "(no answer)" in str(Comparison(results=[BranchResult(branch="z")]))
    assert word_diff("a b", "a c") == [("=", "a "), ("-", "b"), ("+", "c")]


def test_one_side_of_a_word_diff_marks_only_that_sides_words() -> None:
    ops = word_diff("the cat <sat>", "the dog <sat>")
    assert diff_side_html(ops, "-") == (
        'the <span style="background:#fdd;color:#1f2937;text-decoration:line-through">cat</span>'
        " &lt;sat&gt;"
    )
    assert diff_side_html(ops, "+", {"+": "color:green", "-": ""}) == (
        'the <span style="color:green">dog</span> &lt;sat&gt;'
    )


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["the", "cat", "sat", "on", " ", "  ", "\n", "mat."]), max_size=40),
    st.lists(st.sampled_from(["the", "dog", "sat", "on", " ", "\n", "mat."]), max_size=40),
)
def test_a_word_diff_gives_both_texts_back_and_keeps_words_in_common(
    left: list[str], right: list[str]
) -> None:
    a, b = "".join(left), "".join(right)
    ops = word_diff(a, b)
    assert "".join(text for op, text in ops if op != "+") == a
    assert "".join(text for op, text in ops if op != "-") == b
    assert all(text for _op, text in ops)  # no empty parts
    # A change is shown as what went, then what came, between two runs in common.
    for first, second in itertools.pairwise([op for op, _text in ops]):
        assert (first, second) != ("+", "-")
        assert first != second
    # No lone white space kept in common between two changes: changes read as phrases.
    for before, middle, after in zip(ops, ops[1:], ops[2:], strict=False):
        assert not (middle[0] == "=" and middle[1].isspace() and "=" not in (before[0], after[0]))
    # Shared text is found: the same text is one run in common, and text added at the
    # end leaves all of the first in common.
    if a:
        assert word_diff(a, a) == [("=", a)]
        tail = "tail" if a[-1].isspace() else " tail"
        assert word_diff(a, a + tail)[0] == ("=", a)


@pytest.mark.anyio
async def test_fan_out_and_fork_wait_for_a_turn_running_on_their_branch(data_dir: Path) -> None:
    # Mid-turn, the branch's head is the turn's own prompt, or its unfinished reply:
    # arms or a fork made there would continue a conversation that has not happened.
    fake = ScriptedProvider().reply("Paris.", chunks="words", delay=0.05)
    fake.reply("Blue light scatters.").reply("Rayleigh.")
    session = ContextSession.create(provider=fake, data_dir=data_dir)
    turn = session.send("Capital of France?")
    with pytest.raises(BusyError, match="still being generated on branch 'main'"):
        session.fan_out("Why is the sky blue?", [{"branch": "a"}, {"branch": "b"}])
    with pytest.raises(BusyError, match="still being generated on branch 'main'"):
        session.branch("fork")
    assert set(session.branches) == {"main"}  # nothing was written
    await turn
    comparison = await session.fan_out("Why is the sky blue?", [{"branch": "a"}, {"branch": "b"}])
    for arm in comparison.branches:
        assert roles(session.history(arm)) == ["user", "assistant", "user", "assistant"]
        assert session.history(arm)[1].content == "Paris."
    session.close()


@pytest.mark.parametrize(
    ("base", "other", "shown"),
    [
        (0.4, 0.2, "latency 0 -> 0 ms (0)"),
        (1.2, 1.4, "latency 1 -> 1 ms (0)"),
        (10.0, 35.0, "latency 10 -> 35 ms (+25)"),
        (35.0, 10.0, "latency 35 -> 10 ms (-25)"),
    ],
)
def test_a_delta_that_rounds_to_zero_has_no_sign(base: float, other: float, shown: str) -> None:
    turn = TurnDiff(
        turn=1,
        prompt="Q",
        base=BranchResult(branch="a", text="x", duration_ms=base),
        other=BranchResult(branch="b", text="x", duration_ms=other),
    )
    assert str(TurnComparison(base="a", other="b", turns=[turn])).endswith(f"   {shown}")


@pytest.mark.parametrize(
    ("base", "other", "shown"),
    [
        ((1.4, 2.5), (0.6, 2.5), "latency 1 -> 1 ms (0)"),  # not (-1)
        ((1.6, 2.5), (2.4, 2.5), "latency 2 -> 2 ms (0)"),  # not (+1)
        ((1.4, 2.5), (2.6, 2.5), "latency 1 -> 3 ms (+2)"),  # not (+1)
        ((10.0, 2.494), (10.0, 2.506), "score 2.49 -> 2.51 (+0.02)"),  # not (+0.01)
    ],
)
def test_a_delta_is_the_change_between_the_values_shown(
    base: tuple[float, float], other: tuple[float, float], shown: str
) -> None:
    turn = TurnDiff(
        turn=1,
        prompt="Q",
        base=BranchResult(branch="a", text="x", duration_ms=base[0]),
        other=BranchResult(branch="b", text="x", duration_ms=other[0]),
        base_score=base[1],
        other_score=other[1],
    )
    assert shown in str(TurnComparison(base="a", other="b", turns=[turn])).splitlines()[-1]
    page = TurnComparison(base="a", other="b", turns=[turn])._repr_html_()
    assert shown.replace(">", "&gt;") in page


def test_printed_comparisons_show_a_reply_s_terminal_escapes_without_acting_on_them(
    new_session: Callable[..., ContextSession],
) -> None:
    hostile = "Fine.\x1b[2J\x1b]0;title\x07 done\r over \u202ereversed"
    session = new_session(provider=ScriptedProvider().reply("Plain answer."))
    comparison = session.fan_out(
        "q", [{"provider": ScriptedProvider().reply(hostile)}, {"system": "x"}]
    ).result(DEADLINE)
    for shown in (str(comparison), str(session.stability(comparison.branches))):
        assert "\x1b" not in shown
        assert "\r" not in shown
        assert "\u202e" not in shown
        assert "\\x1b[2J" in shown
