"""A sweep inside a real kernel, its grid driven as a browser drives it
(tests/widget_frontend.py): the cell that starts it ends at once, the grid fills in
afterwards, and ``await session.sweep(...)`` works in a cell."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("anywidget")

from widget_frontend import FrontEnd, front_end

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontEnd]:
    with front_end(tmp_path_factory.mktemp("sweep-kernel")) as running:
        running.run(
            """
            from cm_notebook import ContextSession
            from cm_notebook.testing import ScriptedProvider
            """
        )
        yield running


def test_the_grid_fills_in_after_the_cell_ended(fe: FrontEnd) -> None:
    grid = fe.run(
        """
        fake = ScriptedProvider(delay=0.01)
        s = ContextSession.create("grid", provider=fake)
        sw = s.sweep(["one two three", "four five"], [{}, {"temperature": 1}], repeat=2,
                     concurrency=2, progress=False, name="k")
        g = sw.view()
        print(g.model_id)
        """
    ).strip()
    start = fe.mark()

    def finished() -> bool:
        cells = fe.models[grid].get("cells", [])
        return len(cells) == 8 and all(c["status"] == "done" for c in cells)

    fe.wait_for(finished, what="every cell of the grid done")
    texts = sorted({c["text"] for c in fe.models[grid]["cells"]})
    assert texts == ["echo: four five", "echo: one two three"]
    assert fe.models[grid]["columns"] == ["variant", "temperature-1"]
    # The grid was updated while cells ran, not only at the end.
    updates = [
        r for r in fe.comms[start:] if r.comm_id == grid and "cells" in r.content.get("state", {})
    ]
    running = [
        r for r in updates if any(c["status"] == "running" for c in r.content["state"]["cells"])
    ]
    assert running
    assert len(updates) >= 2


def test_await_a_sweep_in_a_cell_and_resume_it(fe: FrontEnd) -> None:
    out = fe.run(
        """
        s2 = ContextSession.create("await", provider=ScriptedProvider())
        done = await s2.sweep("Q", [{}], repeat=3, progress=False, name="aw")
        again = await s2.sweep("Q", [{}], repeat=3, progress=False, name="aw")
        print(done.counts()["done"], again.counts()["done"], len(s2.branches))
        """
    )
    assert out.split() == ["3", "3", "4"]
