"""The status bar as branches come and go: an error belongs to the branch that had it,
not to a new branch made later under the same name. On a real session (ScriptedProvider
the only fake), the bar driven directly as test_widgets.py does."""

from __future__ import annotations

from collections.abc import Callable

import pytest

pytest.importorskip("anywidget")

from test_session_support import until

from cm_notebook import ContextSession
from cm_notebook.errors import CMError
from cm_notebook.testing import ScriptedProvider
from cm_notebook.widgets import StatusBar

pytestmark = pytest.mark.anyio

NewSession = Callable[..., ContextSession]


async def test_a_branch_made_again_under_a_deleted_ones_name_has_no_error(
    new_session: NewSession,
) -> None:
    session = new_session(provider=ScriptedProvider().reply("fine").error("permanent"))
    await session.send("hello")
    session.branch("x", switch=False)
    status = StatusBar(session)
    try:
        with pytest.raises(CMError, match="permanent failure"):
            await session.send("fail please", branch="x")
        await until(lambda: any(r["branch"] == "x" and "error" in r for r in status.rows))
        session.delete_branch("x")
        await until(lambda: [r["branch"] for r in status.rows] == ["main"])
        session.branch("x", switch=False)
        # Made active: the new branch's chip is shown whatever its state (the signals
        # reach the bar in order, so its creation has been heard by then).
        session.switch("x")
        row = await until(
            lambda: status.rows and status.rows[0]["branch"] == "x" and status.rows[0]
        )
        assert row["state"] == "Idle"
        assert "error" not in row
        session.switch("main")
        # Not active and idle: not shown at all.
        await until(lambda: [r["branch"] for r in status.rows] == ["main"])
    finally:
        status.close()
