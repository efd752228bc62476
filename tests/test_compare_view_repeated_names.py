"""A comparison asked for with a branch named twice (a typo): the branch is compared
once, and too few distinct branches is the usual clear error. On a real session
(ScriptedProvider the only fake), the view driven directly as test_widgets.py does."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest

pytest.importorskip("anywidget")

import ipywidgets
from test_session_support import until

from cm_notebook import ContextSession
from cm_notebook.errors import InvalidInputError
from cm_notebook.testing import ScriptedProvider
from cm_notebook.widgets.rating import RatingBar

pytestmark = pytest.mark.anyio

NewSession = Callable[..., ContextSession]


def registered() -> set[str]:
    """The model ids of the widgets ipywidgets holds (each an open comm in a kernel)."""
    with warnings.catch_warnings():  # Widget.widgets is deprecated, still the registry
        warnings.simplefilter("ignore", DeprecationWarning)
        return set(ipywidgets.Widget.widgets)


async def _two_branches(new_session: NewSession) -> ContextSession:
    session = new_session(provider=ScriptedProvider(["One.", "Two.", "Three."]))
    await session.send("hi")
    session.branch("b", session.history()[0].id, switch=False)
    await session.send("hi again", branch="b")
    return session


async def test_a_branch_named_twice_is_compared_once(new_session: NewSession) -> None:
    session = await _two_branches(new_session)
    view = session.compare_view("main", "b", "b")
    try:
        assert view.branch_names == ["main", "b"]
        assert repr(view) == "<cm_notebook CompareView of 2 branches>"
        assert "2 branches" in view.value
        assert [type(c) for c in view.ratings.children] == [RatingBar, RatingBar]
        # A later turn on the repeated branch is drawn like any other.
        await session.send("more", branch="b")
        await until(lambda: "Three." in view.value)
    finally:
        view.close()


async def test_one_branch_named_twice_is_too_few_and_leaves_nothing_behind(
    new_session: NewSession,
) -> None:
    session = await _two_branches(new_session)
    before = registered()
    for names in (("b", "b"), ("main", "main")):
        with pytest.raises(InvalidInputError, match=r"two or more branches, got \['.*'\]"):
            session.compare_view(*names)
    # No half-made view is left open, following the session.
    assert registered() == before
