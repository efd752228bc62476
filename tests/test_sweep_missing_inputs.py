"""A sweep's input rows with a missing value (NaN, None, pd.NA) are refused before
anything is written, naming the row, the column and the value; text such as "nan" and
the number 0 are values, and missing values in columns the prompt does not use are
recorded, never sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from test_session_support import DEADLINE

from cm_notebook.errors import InvalidInputError
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

pd = pytest.importorskip("pandas")
np = pytest.importorskip("numpy")


def _refused(session: ContextSession, template: str, inputs: Any) -> str:
    before = set(session.branches)
    with pytest.raises(InvalidInputError) as refused:
        session.sweep(template, [{}], inputs=inputs, progress=False)
    assert set(session.branches) == before  # nothing written
    return str(refused.value)


def test_a_dataframe_row_with_a_missing_value_is_refused_naming_it(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(strict=True)
    session = new_session(provider=fake)
    df = pd.DataFrame({"country": ["France", None], "year": [1990, np.nan]})
    text = _refused(session, "Capital of {country} in {year}?", df)
    assert "input row 1" in text
    assert "'country'" in text
    assert "missing" in text
    assert "dropna(subset=['country'])" in text

    # An integer column with a missing value, read as floats: said, with the way back.
    text = _refused(session, "Capital in {year}?", df)
    assert "input row 1: its 'year' has no value (nan: missing)" in text
    assert "astype({'year': int})" in text
    assert "1990.0" in text

    # pandas' own markers of a missing value too.
    nullable = pd.DataFrame({"year": pd.array([1990, None], dtype="Int64")})
    assert "its 'year' has no value" in _refused(session, "In {year}?", nullable)
    assert "(<NA>: missing)" in _refused(session, "In {year}?", [{"year": pd.NA}])
    assert "(NaT: missing)" in _refused(session, "On {day}?", [{"day": pd.NaT}])
    assert fake.requests == []


def test_none_in_a_list_of_rows_is_refused(new_session: Callable[..., ContextSession]) -> None:
    session = new_session(provider=ScriptedProvider(strict=True))
    text = _refused(session, "Capital of {country}?", [{"country": "Peru"}, {"country": None}])
    assert "prompt 0 filled with input row 1: its 'country' has no value (None: missing)" in text
    # In the second prompt too, said as its own.
    text = _refused(session, ["Hello", "Capital of {country}?"], [{"country": None}])
    assert "prompt 1 filled with input row 0" in text


def test_values_that_only_read_like_missing_ones_are_sent_and_unused_gaps_are_kept(
    new_session: Callable[..., ContextSession],
) -> None:
    fake = ScriptedProvider(strict=True).reply("a").reply("b").reply("c")
    session = new_session(provider=fake)
    df = pd.DataFrame(
        {
            "word": ["nan", "None", "zero"],
            "count": [0, 1, 2],
            "note": [None, "x", np.nan],  # not in the prompt: never sent
        }
    )
    sweep = session.sweep("Say {word} {count} times.", [{}], inputs=df, progress=False)
    sweep.run(DEADLINE)
    sent = [request.messages[-1].content for request in fake.requests]
    assert sorted(sent) == ["Say None 1 times.", "Say nan 0 times.", "Say zero 2 times."]
    assert [cell.status for cell in sweep.cells] == ["done"] * 3
    # Once complete and converted back, the integers are sent as they were given.
    fixed = pd.DataFrame({"year": [1990, np.nan]}).dropna().astype({"year": int})
    fake.reply("Paris")
    again = session.sweep("In {year}?", [{}], inputs=fixed, progress=False).run(DEADLINE)
    assert fake.requests[-1].messages[-1].content == "In 1990?"
    assert again.cells[0].status == "done"
