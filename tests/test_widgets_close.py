"""Closing a view closes every widget it made: in a kernel each widget left registered
with ipywidgets is an open comm, kept for as long as the kernel runs. On a real session
(ScriptedProvider the only fake), driven as a person would, without a front end."""

from __future__ import annotations

import asyncio
import gc
import warnings
import weakref
from collections.abc import Callable

import pytest

pytest.importorskip("anywidget")

import ipywidgets
from test_session_support import until

from cm_notebook import ContextSession, tool
from cm_notebook.sweep import Sweep
from cm_notebook.testing import ScriptedProvider
from cm_notebook.widgets import CompareView, SessionView
from cm_notebook.widgets.sweep_grid import SweepGrid

pytestmark = pytest.mark.anyio

NewSession = Callable[..., ContextSession]


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def registered() -> set[str]:
    """The model ids of the widgets ipywidgets holds (each an open comm in a kernel)."""
    with warnings.catch_warnings():  # Widget.widgets is deprecated, still the registry
        warnings.simplefilter("ignore", DeprecationWarning)
        return set(ipywidgets.Widget.widgets)


async def _session_with_a_branch(new_session: NewSession) -> ContextSession:
    fake = ScriptedProvider(strict=True).reply("Hello.").reply("Other.")
    fake.tool_call("add", {"a": 1, "b": 2}).reply("3.").tool_call("add", {"a": 2, "b": 2})
    session = new_session(provider=fake, tools=[add])
    await session.send("hi")
    session.branch("alt", switch=False)
    await session.send("and else?", branch="alt")
    return session


async def _use(view: SessionView, compare: CompareView, session: ContextSession) -> None:
    # What a person does with the views; each makes widgets while the view lives.
    turn = session.send("add 1 and 2")
    row = await until(lambda: view.approvals.rows.get(("call_1", "main")))
    row.arguments.value = '{"a": 1, "b": 2}'  # edited, then approved
    row.approve_button.click()
    assert (await turn).content == "3."
    # The next call waits for approval: its row replaces the decided one.
    session.send("add 2 and 2")
    await until(lambda: ("call_1", "main") not in view.approvals.rows and view.approvals.rows)
    await until(lambda: view.approvals.history.records)
    # The compare view re-renders as the branches change; rate an answer there.
    await until(lambda: len(compare._bars) == 2)
    next(iter(compare._bars.values())).up.click()
    await until(lambda: any(b.up.button_style == "success" for b in compare._bars.values()))
    # The chat follows the active branch: messages of another branch are made too.
    session.switch("alt")
    await until(lambda: view.chat.transcript.branch == "alt" and view.chat.transcript.frozen)
    session.switch("main")
    await until(lambda: view.chat.transcript.branch == "main")


async def test_closed_views_leave_no_widget_registered(new_session: NewSession) -> None:
    session = await _session_with_a_branch(new_session)
    before = registered()
    view = SessionView(session)
    compare = CompareView(session, "main", "alt")
    await _use(view, compare, session)
    assert len(registered() - before) > 50  # what the views made (its rows included)

    view.close()
    compare.close()
    assert registered() == before
    view.close()  # a second time: harmless
    compare.close()
    assert registered() == before

    # Closed, they follow the session no more: nothing is made for a change.
    session.switch("alt")
    session.rate(session.history("alt")[-1].id, thumbs="down")
    await asyncio.sleep(0.6)  # longer than the views' throttles
    assert registered() == before


async def test_closed_views_and_their_parts_can_be_freed(new_session: NewSession) -> None:
    session = await _session_with_a_branch(new_session)
    view = SessionView(session)
    compare = CompareView(session, "main", "alt")
    parts = [view, view.status, view.tree, view.chat, view.chat.transcript, view.approvals]
    freed = [weakref.ref(part) for part in [*parts, compare]]
    view.close()
    compare.close()
    del view, compare, parts
    await asyncio.sleep(0)  # what was handed to the loop before the close runs (and stops)
    gc.collect()
    assert [ref() for ref in freed] == [None] * len(freed)


async def _shown_and_closed(sweep: Sweep) -> weakref.ref[SweepGrid]:
    # The grid of ``sweep`` while it runs to its end, then closed (twice).
    grid = sweep.view()
    await sweep
    await until(lambda: all(cell["status"] == "done" for cell in grid.cells))
    grid.close()
    grid.close()
    return weakref.ref(grid)


async def test_a_closed_sweep_grid_leaves_no_widget_registered(new_session: NewSession) -> None:
    session = new_session(provider=ScriptedProvider(["Cold.", "Warm."]))
    sweep = session.sweep(["Q"], [{"label": "cold"}, {"label": "warm"}], name="g", progress=False)
    before = registered()
    freed = await _shown_and_closed(sweep)
    assert registered() == before
    await asyncio.sleep(0)
    gc.collect()
    assert freed() is None


async def test_a_closed_comparison_of_a_cell_leaves_no_widget_registered(
    new_session: NewSession,
) -> None:
    # What `%%cm --ab` shows: the arms side by side, its own note and outcome widgets.
    from cm_notebook.magics._comparison import ComparisonView

    session = new_session(provider=ScriptedProvider(strict=True).reply("A.").reply("B."))
    before = registered()
    fan = session.fan_out("Hi", ["scripted", "scripted"])
    view = ComparisonView(session, fan, branch="main")
    await fan
    await until(lambda: view.compare is not None)
    view.close()
    view.close()
    assert registered() == before
