"""A branch whose last reply is a stand-in (what ``check --repair`` writes in place of a
message whose file could not be read) has no readable answer in a comparison: its
placeholder text is neither shown, diffed nor measured as the branch's answer, and the
views say why and what to do, as they say a missing reply.

Real files: the index is lost and the reply's file cut short, then a real repair
(``FileStore.check(repair=True)``) writes the stand-in (see test_stand_in_use.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import DEADLINE
from test_stand_in_use import PROMPTS, _damaged

from cm_notebook.model import Message
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

pytest.importorskip("anywidget")

from cm_notebook.widgets.rating import RatingBar


@pytest.fixture
def at_stand_in(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> tuple[ContextSession, Message]:
    fake = ScriptedProvider().reply("Paris.").reply("Rome.").reply("Berlin.")
    session = new_session(provider=fake)
    for prompt in PROMPTS:
        session.send(prompt).result(DEADLINE)
    history = session.history()
    reopened = _damaged(data_dir, session, history[3])  # "Rome.": main goes on after it
    reopened.branch("at-rome", from_message=history[3].id, switch=False)
    reopened.branch("at-paris", from_message=history[1].id, switch=False)
    stand_in = reopened.history("at-rome")[-1]
    assert stand_in.id == history[3].id
    assert "Rome." not in stand_in.content  # a placeholder
    return reopened, stand_in


def _says_why(text: str, stand_in: Message) -> None:
    assert "could not be read" in text
    assert "stand-in" in text
    assert f"damaged/{stand_in.id}.json" in text
    assert "Restore the message's file from a backup" in text


def test_a_comparison_shows_a_stand_in_as_no_readable_answer(
    at_stand_in: tuple[ContextSession, Message],
) -> None:
    session, stand_in = at_stand_in
    try:
        for order in (("at-rome", "at-paris"), ("at-paris", "at-rome")):
            comparison = session.compare(*order)
            lost = comparison["at-rome"]
            assert lost.unfinished
            assert lost.state == "unreadable"
            assert lost.text == ""  # the placeholder is not what the model said
            assert lost.message_id == stand_in.id
            assert lost.outcome is not None
            _says_why(lost.outcome, stand_in)
            assert "unreadable" in lost.facts()
            assert comparison.similarity() is None
            assert comparison.diff() == []
            assert comparison.unified_diff() == ""
            text = str(comparison)
            assert stand_in.content not in text
            assert "no answer: " in text
            _says_why(text, stand_in)
            assert "at-rome has no answer (unreadable)" in text
            page = comparison._repr_html_()
            assert stand_in.content not in page
            assert "cm-outcome-unreadable" in page
            assert "no diff:" in page
            assert "Paris." in page  # the readable answer is shown as one
        # A missing turn and an unreadable one read alike: no answer, and why.
        assert not session.compare("at-paris", "main")["main"].unfinished
    finally:
        session.close()


def test_the_compare_view_shows_a_stand_in_as_no_answer_and_offers_no_rating(
    at_stand_in: tuple[ContextSession, Message],
) -> None:
    session, stand_in = at_stand_in
    view = session.compare_view("at-paris", "at-rome")
    try:
        page = view.value
        assert stand_in.content not in page
        assert "cm-outcome-unreadable" in page
        assert "could not be read" in page
        assert f"damaged/{stand_in.id}.json" in page
        assert "(diff against the first)" not in page
        # Only the readable answer can be rated.
        kinds = [type(child) for child in view.ratings.children]
        assert kinds[0] is RatingBar
        assert kinds[1] is not RatingBar
    finally:
        view.close()
        session.close()
