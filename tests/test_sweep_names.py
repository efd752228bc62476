"""A sweep's names and labels are checked like branch names and labels, before any of
its cells is written: a bad variant label or a look-alike sweep name writes nothing."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from test_session_support import DEADLINE

from cm_notebook.errors import InvalidInputError
from cm_notebook.model import MAX_LABEL_VALUE
from cm_notebook.session import ContextSession
from cm_notebook.sweep import plan_sweep
from cm_notebook.testing import ScriptedProvider

SECRET = "sk-abcdefghijklmnopqrstuv"


@pytest.mark.parametrize(
    ("label", "words"),
    [
        ("two\nlines", r"'two\\nlines' is not one line"),
        (f"key {SECRET}", "looks like a secret"),
    ],
)
def test_a_variant_label_branch_labels_refuse_is_refused_before_anything_is_written(
    new_session: Callable[..., ContextSession], label: str, words: str
) -> None:
    fake = ScriptedProvider()
    session = new_session(provider=fake)
    before = set(session.branches)
    with pytest.raises(InvalidInputError, match=f"variant 1: .*{words}") as caught:
        session.sweep(
            "Q", [{"label": "ok"}, {"label": label, "temperature": 1}], name="lb", progress=False
        )
    assert "Give the variant a 'label' of one line" in str(caught.value)
    assert SECRET not in str(caught.value)  # the error never shows a secret
    assert set(session.branches) == before
    assert fake.requests == []
    with pytest.raises(InvalidInputError, match="variant 0"):
        plan_sweep("Q", [{"label": label}])  # planning alone refuses it


def test_a_secret_looking_sweep_name_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="sweep name refused: it looks like a secret"):
        plan_sweep("Q", [{}], name=SECRET)


def test_a_sweep_name_that_looks_like_an_existing_sweep_is_refused_up_front(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider()
    session = new_session(provider=fake)
    session.sweep("Q", [{}, {"temperature": 1}], name="cap", progress=False).run(DEADLINE)
    before, asked = set(session.branches), len(fake.requests)
    with pytest.raises(
        InvalidInputError,
        match=r"sweep name 'Cap': its cell branch 'Cap-p0-v0-r0' looks like the existing "
        r"branch 'cap-p0-v0-r0'.*reads differently, or name='cap' to run that sweep again",
    ):
        session.sweep("Other question", [{}, {"temperature": 1}], name="Cap", progress=False)
    assert set(session.branches) == before
    assert len(fake.requests) == asked


def test_a_sweep_name_that_looks_like_another_branch_is_refused_up_front(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.branch("mine-p0-v0-r0", switch=False)
    before = set(session.branches)
    with pytest.raises(InvalidInputError, match=r"look alike\). Give the sweep a name") as caught:
        session.sweep("Q", [{}], name="MINE", progress=False)
    assert "run that sweep again" not in str(caught.value)  # it is not a sweep's cell
    assert set(session.branches) == before


@pytest.mark.parametrize("control", ["\x1b[2J", "\x9b2J", "\x00"])
def test_control_characters_in_a_variant_label_are_refused(control: str) -> None:
    with pytest.raises(InvalidInputError, match=r"variant 0: .*control characters \(U\+00"):
        plan_sweep("Q", [{"label": f"arm{control}"}])


@pytest.mark.parametrize("control", ["\u2028", "\u2029", "\u202e"])
def test_a_variant_label_off_one_line_is_refused(control: str) -> None:
    # A line separator breaks the one line a label is; a bidi override reorders it.
    found = re.escape(f"U+{ord(control):04X}")
    with pytest.raises(InvalidInputError, match=rf"variant 0: .*control characters \({found}"):
        plan_sweep("Q", [{"label": f"arm{control}x"}])


def test_an_input_column_whose_record_column_is_a_fixed_one_is_refused_up_front(
    new_session: Callable[..., ContextSession],
) -> None:
    # "tokens" would be recorded as input_tokens, the reply's input token count.
    fake = ScriptedProvider()
    session = new_session(provider=fake)
    before = set(session.branches)
    rows = [{"topic": "cats", "tokens": 50}, {"topic": "dogs", "tokens": 100}]
    with pytest.raises(
        InvalidInputError,
        match=r"input column 'tokens' cannot be used: .* 'input_tokens', which is already "
        r"the column of the reply's input tokens\. Rename the input column",
    ):
        session.sweep("Write about {topic} in {tokens} tokens", [{}], inputs=rows, progress=False)
    assert set(session.branches) == before
    assert fake.requests == []
    # Renamed, the input has a column of its own, and the reply's count is kept.
    renamed = [{"topic": row["topic"], "n_tokens": row["tokens"]} for row in rows]
    sweep = session.sweep(
        "Write about {topic} in {n_tokens} tokens", [{}], inputs=renamed, progress=False
    ).run(DEADLINE)
    records = sweep.to_records()
    assert [r["input_n_tokens"] for r in records] == [50, 100]
    usage = [session.get(cell.message_id or "").metadata.usage for cell in sweep.cells]
    assert [r["input_tokens"] for r in records] == [u.input_tokens for u in usage if u] == [6, 6]


def test_a_variant_label_given_is_kept_whole(new_session: Callable[..., ContextSession]) -> None:
    # Cut to 80 characters, these were "... variant" and "... variant-2" everywhere: what
    # told the variants apart was gone.
    stem = "temperature sweep, system prompt asks for a careful step-by-step answer, variant"
    first, second = f"{stem} A", f"{stem} B"
    session = new_session(provider=ScriptedProvider())
    sweep = session.sweep(
        "Q",
        [{"label": first, "temperature": 0.1}, {"label": second, "temperature": 0.9}],
        name="whole",
        progress=False,
    ).run(DEADLINE)
    assert sweep.variant_labels == [first, second]
    assert [record["variant"] for record in sweep.to_records()] == [first, second]
    assert [session.branches[cell.branch].labels["variant"] for cell in sweep.cells] == [
        first,
        second,
    ]


def test_a_label_given_twice_is_numbered_within_the_length_labels_allow() -> None:
    longest = "x" * MAX_LABEL_VALUE
    plan = plan_sweep("Q", [{"label": longest}, {"label": longest, "temperature": 1}])
    assert plan.labels == [longest, f"{'x' * (MAX_LABEL_VALUE - 2)}-2"]


def test_a_label_made_from_a_variant_s_settings_is_cut_to_80_characters() -> None:
    stop = "a" * 100
    plan = plan_sweep("Q", [{"stop": [f"{stop}1"]}, {"stop": [f"{stop}2"]}])
    made = f"stop-['{stop}"[:80]
    assert plan.labels == [made, f"{made}-2"]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("", "it is empty"),
        ("x" * 61, "it has 61 characters, at most 60"),
        ("has space", "it has a space"),
        ("a/b", "character '/' is not allowed"),
    ],
)
def test_a_bad_sweep_name_is_refused_saying_what_a_sweep_name_may_be(name: str, why: str) -> None:
    with pytest.raises(InvalidInputError, match=f"^sweep name .* is not valid: {why}") as caught:
        plan_sweep("Q", [{}], name=name)
    told = str(caught.value)
    assert "Sweep names are 1-60 characters without spaces" in told
    assert "Branch names" not in told  # a branch name's rule allows spaces and 100
