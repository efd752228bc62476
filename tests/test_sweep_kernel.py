"""A sweep inside a real kernel, its grid driven as a browser drives it
(tests/widget_frontend.py): the cell that starts it ends at once, the grid fills in
afterwards (while it runs, by messages that carry only the changed cells), a view
that starts mid-sweep gets the whole grid, and ``await session.sweep(...)`` works in
a cell."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

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


def shown(fe: FrontEnd, grid: str, upto: int | None = None) -> dict[str, dict[str, Any]]:
    """The grid's cells as its view holds them (static/grid.js): the last full ``cells``
    state, with the changed cells of the custom messages after it applied in order."""
    cells: dict[str, dict[str, Any]] = {}
    for record in fe.comms[:upto]:
        if record.comm_id != grid:
            continue
        state = record.content.get("state", {})
        if "cells" in state:
            cells = {cell["key"]: cell for cell in state["cells"]}
        content = record.content.get("content")
        if record.method == "custom" and isinstance(content, dict):
            for cell in content.get("cells", []):
                before = cells.get(cell["key"])
                if before is None:
                    continue
                if "more" not in cell:
                    cells[cell["key"]] = cell
                elif utf16_length(before["text"]) == cell["text_from"]:
                    grown = {k: v for k, v in cell.items() if k not in ("more", "text_from")}
                    cells[cell["key"]] = {**grown, "text": before["text"] + cell["more"]}
    return cells


def utf16_length(text: str) -> int:
    """A string's length as JavaScript counts it."""
    return len(text.encode("utf-16-le")) // 2


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
    views = [shown(fe, grid, n + 1) for n in range(start, len(fe.comms))]
    assert any(any(c["status"] == "running" for c in view.values()) for view in views)
    assert shown(fe, grid) == {c["key"]: c for c in fe.models[grid]["cells"]}


def test_a_running_grid_sends_only_the_cells_that_changed(fe: FrontEnd) -> None:
    grid = fe.run(
        """
        fake = ScriptedProvider(delay=0.005)
        s3 = ContextSession.create("big grid", provider=fake)
        sw3 = s3.sweep([f"question {n} a b c" for n in range(20)], [{}, {"temperature": 1}],
                       concurrency=4, progress=False, name="big")
        g3 = sw3.view()
        print(g3.model_id)
        """
    ).strip()
    start = fe.mark()
    fe.wait_for(
        lambda: (
            len(fe.models[grid].get("cells", [])) == 40
            and all(c["status"] == "done" for c in fe.models[grid]["cells"])
        ),
        what="the 40 cells done",
    )
    records = [r for r in fe.comms[start:] if r.comm_id == grid]
    patches = [r for r in records if r.method == "custom"]
    full = [r for r in records if "cells" in r.content.get("state", {})]
    assert patches, "no update while the sweep ran"
    # Each update while it ran carried the cells that changed, never the whole grid;
    # the whole grid went once, at the end.
    assert max(len(r.content["content"]["cells"]) for r in patches) < 40
    assert len(full) == 1
    assert sum(r.size for r in patches) < len(patches) * full[0].size / 2
    assert shown(fe, grid) == {c["key"]: c for c in fe.models[grid]["cells"]}


def test_a_streaming_cell_sends_only_the_text_it_added(fe: FrontEnd) -> None:
    # Each update re-sent a growing reply's whole text, four times a second.
    words = " ".join(f"w{n}\U0001f600" for n in range(40))  # astral: 2 UTF-16 units
    grid = fe.run(
        f"""
        slow = ScriptedProvider(strict=True)
        slow.reply({words!r}, chunks="words", delay=0.05)
        s5 = ContextSession.create("slow grid", provider=slow)
        sw5 = s5.sweep(["A"], [{{}}], progress=False, name="slow")
        g5 = sw5.view()
        print(g5.model_id)
        """
    ).strip()
    start = fe.mark()
    fe.wait_for(
        lambda: [c["status"] for c in fe.models[grid].get("cells", [])] == ["done"],
        what="the cell done",
    )
    sent = [
        cell
        for r in fe.comms[start:]
        if r.comm_id == grid and r.method == "custom"
        for cell in r.content["content"]["cells"]
    ]
    grown = [cell for cell in sent if "more" in cell]
    assert len(grown) >= 3, sent
    assert all("text" not in cell for cell in grown)
    assert sum(len(cell["more"]) for cell in grown) < len(words)
    assert shown(fe, grid) == {c["key"]: c for c in fe.models[grid]["cells"]}
    # Every update on the way, as a view applies it, was a start of the reply.
    views = [shown(fe, grid, n + 1) for n in range(start, len(fe.comms))]
    assert all(words.startswith(c["text"]) for view in views for c in view.values())


def test_a_view_that_starts_mid_sweep_gets_the_whole_grid(fe: FrontEnd) -> None:
    grid = fe.run(
        """
        hung = ScriptedProvider(strict=True)
        for _ in range(2):
            hung.hang(after_chunks=2, text="partial answer")
        s4 = ContextSession.create("hung grid", provider=hung)
        sw4 = s4.sweep(["A", "B"], [{}], concurrency=2, progress=False, name="hung")
        g4 = sw4.view()
        print(g4.model_id)
        """
    ).strip()

    def streaming() -> bool:
        return all(c["text"] == "partial answer" for c in shown(fe, grid).values())

    fe.wait_for(streaming, what="both cells' partial text")
    # A reloaded page: its model comes from the kernel's state, then its view says
    # it is ready; the kernel answers with the whole current grid.
    mark = fe.mark()
    fe.custom(grid, {"type": "ready"})
    fe.wait_for(
        lambda: any(
            r.comm_id == grid and "cells" in r.content.get("state", {}) for r in fe.comms[mark:]
        ),
        what="the whole grid after 'ready'",
    )
    cells = fe.models[grid]["cells"]
    assert [(c["status"], c["text"]) for c in cells] == [("running", "partial answer")] * 2
    fe.run("sw4.cancel(); await sw4")


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
