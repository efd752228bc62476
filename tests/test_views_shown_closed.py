"""A view shown again after it was closed (a cell ending in ``view`` re-run after
``view.close()``): a line says it was closed and what shows a new one, with no
traceback and no copy of it saved again. In a real kernel, as a browser drives it
(tests/widget_frontend.py): what is shown is IPython's display, the kernel's."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("anywidget")

from widget_frontend import FrontEnd, front_end

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("shown-closed")) as running:
        running.run(
            """
            from IPython.utils.capture import capture_output
            from cm_notebook import ContextSession
            from cm_notebook.testing import ScriptedProvider
            from cm_notebook.widgets import ChatView
            s = ContextSession.create("closed", provider=ScriptedProvider(["One.", "Two."]))
            await s.send("hi")
            s.branch("b", s.history()[0].id, switch=False)
            await s.send("hi again", branch="b")
            view = s.view(); display(view)
            compare = s.compare_view("main", "b"); display(compare)
            chat = ChatView(s); display(chat)
            view.close(); compare.close(); chat.close()
            %load_ext cm_notebook
            %cm use s
            cm_view = %cm
            cm_compare = %cm compare main b
            display(cm_view); display(cm_compare)
            cm_view.close(); cm_compare.close()
            """
        )
        yield running


def _shown(fe: FrontEnd, name: str) -> Any:
    # What displaying ``name`` gives a front end (IPython's display, captured).
    code = f"with capture_output() as shown:\n    display({name})\n"
    code += "print([o.data for o in shown.outputs])"
    return ast.literal_eval(fe.run(code).strip())


@pytest.mark.parametrize(
    ("name", "line"),
    [
        ("view", "<cm_notebook SessionView> was closed; session.view() shows a new one"),
        (
            "compare",
            "<cm_notebook CompareView of 2 branches> was closed; "
            "session.compare_view(...) shows a new one",
        ),
        (
            "cm_view",
            "<cm_notebook SessionView> was closed; %cm (or session.view()) shows a new one",
        ),
        (
            "cm_compare",
            "<cm_notebook CompareView of 2 branches> was closed; "
            "%cm compare (or session.compare_view(...)) shows a new one",
        ),
    ],
)
def test_a_closed_view_shown_again_says_so(fe: FrontEnd, name: str, line: str) -> None:
    saved_before = len(fe.display_log)
    # The last expression of a cell, as when the cell is run again.
    reply, out = fe.execute(name)
    assert reply["status"] == "ok", out
    assert "Traceback" not in out
    assert _shown(fe, name) == [{"text/plain": line}]
    # Its saved copy is not shown again (nor made anew: the view follows nothing now).
    assert len(fe.display_log) == saved_before


def test_a_closed_chat_view_shows_its_repr_as_any_closed_widget(fe: FrontEnd) -> None:
    # What the two views above are consistent with: no error, a line of text.
    assert _shown(fe, "chat") == [{"text/plain": "<cm_notebook ChatView>"}]
