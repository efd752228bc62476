"""Saved HTML readable in a dark theme: muted text takes JupyterLab's own colour.

A fixed grey such as #555 reads at 2.5:1 on JupyterLab Dark's background; the views
use ``var(--jp-ui-font-color2, <grey>)``, which is the grey where no theme is loaded
(a page outside Jupyter) and the theme's muted colour inside it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from cm_notebook import ContextSession
from cm_notebook.stability import stability
from cm_notebook.testing import ScriptedProvider

NewSession = Callable[..., ContextSession]

pytestmark = pytest.mark.anyio

#: A text colour given as a bare dark or mid grey (not inside var(...)).
_FIXED_GREY = re.compile(r"(?<![-\w,(])color:#(?:[2-9a]{3}|[2-9a]{6})\b")


async def test_comparisons_and_stability_write_muted_text_in_the_themes_colour(
    new_session: NewSession,
) -> None:
    session = new_session(provider=ScriptedProvider(["Paris.", "Rome.", "Paris.", "Paris."]))
    await session.send("Capital?")
    session.branch("b", session.history()[0].id)
    await session.send("Capital of Italy?")
    session.switch("main")
    pages = {
        "comparison": session.compare("main", "b")._repr_html_(),
        "per turn": session.compare_turns("b", "main")._repr_html_(),
        # The two last replies answer different prompts: no stability of the session's,
        # so the same answers grouped as repeated runs.
        "stability": stability(
            [session.history("main")[-1], session.history("b")[-1], "Paris."]
        )._repr_html_(),
    }
    for name, page in pages.items():
        assert "var(--jp-ui-font-color2" in page, name
        assert not _FIXED_GREY.findall(page), (name, _FIXED_GREY.findall(page))


#: An error's text in a bare dark red (not inside var(...)): 3:1 or less in a dark theme.
_FIXED_RED = re.compile(r"(?<![-\w,(])color:#(?:b91c1c|dc2626)\b")


async def test_an_unfinished_answer_says_so_in_the_themes_error_colour(
    new_session: NewSession,
) -> None:
    provider = ScriptedProvider().reply("Paris.").error("permanent", message="out of credit")
    session = new_session(provider=provider)
    await session.send("Capital?")
    session.branch("b", session.history()[0].id)
    with pytest.raises(Exception, match="out of credit"):
        await session.send("Capital of Italy?")
    page = session.compare("main", "b")._repr_html_()
    assert "no answer: " in page
    assert "var(--jp-error-color1" in page
    assert not _FIXED_RED.findall(page), _FIXED_RED.findall(page)
