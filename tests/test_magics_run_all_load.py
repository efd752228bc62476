"""Run All over many ``%%cm`` cells on one branch, in a real kernel: what it costs the
kernel stays bounded.

Each cell waits for the reply above it. Until its own turn starts, a queued cell's
output only says that it waits: it is not sent again on every signal of the turns
before it (that made a Run All of n cells send O(n²) updates). The updates sent as the
running cell go out from one publisher thread, not a thread each: ipykernel keeps a
ZeroMQ socket open for every thread that published, for 10 s after it ends, and a Run
All of 30 cells ran the kernel out of sockets and file descriptors (replies failed to
be stored, tracebacks landed in the cells).
"""

from __future__ import annotations

import ast
import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

from widget_frontend import FrontEnd, front_end

#: The ``text/plain`` of a ``%%cm`` reply's output (cm_notebook.magics._reply.PLAIN).
REPLY = "<cm_notebook reply (HTML)>"
WAITING = "waits for the replies above it, then asks"
#: Each reply streams 14 words, a chunk each (about 0.3 s a reply).
DELAY = 0.02
#: Words of error text that must never reach a cell's output.
FAILURES = ("Traceback", "ZMQError", "Too many open files", "Error")


@pytest.fixture
def fe(tmp_path: Path) -> Iterator[FrontEnd]:
    # A kernel of its own: what is counted (descriptors, updates) is this test's.
    with front_end(tmp_path / "data") as frontend:
        frontend.run("%load_ext cm_notebook")
        frontend.run(
            f"""
            from cm_notebook import ContextSession
            from cm_notebook.testing import ScriptedProvider
            model = ScriptedProvider(delay={DELAY})
            s = ContextSession.create("run all", provider=model)
            %cm use s
            """
        )
        # A first reply, so that the cells below run as fast as they do once all is
        # loaded (each must come while the reply above it is still streaming).
        frontend.run("%%cm\nwarm up")
        frontend.run("await _")
        yield frontend


def _printed(fe: FrontEnd, expression: str) -> Any:
    return ast.literal_eval(fe.run(f"print(repr({expression}))").strip())


def _question(number: int) -> str:
    return f"question number {number} " + " ".join(["lorem ipsum"] * 4)


def _run_all(fe: FrontEnd, cells: int, watch: Any = None) -> list[str]:
    """Send ``cells`` ``%%cm`` cells and a cell awaiting the last reply back to back, as
    Run All does; handle iopub until the kernel is idle after each (calling ``watch()``
    meanwhile); return their message ids, having checked each cell succeeded."""
    # The first reply is slower (as echoed, word by word), so that all the cells after it
    # have run, and queued, before it ends, even on a busy machine.
    first = {"reply": f"echo: {_question(0)}", "chunks": "words", "delay": 0.1}
    fe.run(f"model.load([{first!r}])")
    sent = [fe.client.execute(f"%%cm\n{_question(number)}") for number in range(cells)]
    sent.append(fe.client.execute("last = await _"))

    def all_done() -> bool:
        if watch is not None:
            watch()
        return all(fe.done(msg_id) for msg_id in sent)

    fe.wait_for(all_done, timeout=300, what="the Run All")
    for msg_id in sent:
        reply = fe.reply(msg_id)
        assert reply["status"] == "ok", fe.output(msg_id)
    return sent


def _stored(fe: FrontEnd) -> list[tuple[str, str, str]]:
    # The messages of the Run All (after the warm-up's two).
    stored = _printed(fe, "[(m.role, m.content, m.status.value) for m in s.history()[2:]]")
    return [tuple(message) for message in stored]


def _expected(cells: int) -> list[tuple[str, str, str]]:
    expected = []
    for number in range(cells):
        expected.append(("user", _question(number), "complete"))
        expected.append(("assistant", f"echo: {_question(number)}", "complete"))
    return expected


def _reply_display_ids(fe: FrontEnd, sent: list[str]) -> list[str]:
    # Each %%cm cell's reply output: the one it showed, i.e. first seen as that cell
    # (an earlier cell's output may be updated as this one before it shows its own).
    shown_by: dict[str, str] = {}
    for parent, display_id, data in fe.display_log:
        if data.get("text/plain") == REPLY:
            shown_by.setdefault(display_id, parent)
    ids = []
    for msg_id in sent:
        shown = [display_id for display_id, parent in shown_by.items() if parent == msg_id]
        assert len(shown) == 1, f"cell {msg_id} showed {len(shown)} replies"
        ids.append(shown[0])
    return ids


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/<pid>/fd")
def test_a_run_all_of_thirty_cells_stores_every_reply_with_few_open_files(
    fe: FrontEnd,
) -> None:
    cells = 30
    pid = _printed(fe, "__import__('os').getpid()")
    before = len(os.listdir(f"/proc/{pid}/fd"))
    peak = [before]
    last_look = [0.0]

    def look() -> None:
        # The kernel's open descriptors, read from here while the cells run (a leak
        # is held at least 10 s, so a look every 10 ms cannot miss it).
        now = time.monotonic()
        if now - last_look[0] >= 0.01:
            last_look[0] = now
            with contextlib.suppress(OSError):  # the kernel died: the checks below say so
                peak[0] = max(peak[0], len(os.listdir(f"/proc/{pid}/fd")))

    sent = _run_all(fe, cells, look)
    assert _stored(fe) == _expected(cells)
    assert _printed(fe, "last.content") == f"echo: {_question(cells - 1)}"
    for msg_id in sent:
        output = fe.output(msg_id)
        assert not any(word in output for word in FAILURES), output
    for _parent, _display_id, data in fe.display_log:
        html = data.get("text/html", "")
        assert not any(word in html for word in FAILURES), html
    # Before: about 900 (a socket for every thread that had published in the last
    # 10 s); now a handful more than the kernel had at rest.
    assert peak[0] < before + 200, (before, peak[0])


def test_a_queued_cell_is_not_updated_on_every_signal_of_the_turns_before_it(
    fe: FrontEnd,
) -> None:
    cells = 10
    sent = _run_all(fe, cells)
    assert _stored(fe) == _expected(cells)
    for number, display_id in enumerate(_reply_display_ids(fe, sent[:cells])):
        shown = [data["text/html"] for _parent, id_, data in fe.display_log if id_ == display_id]
        if number > 0:
            assert WAITING in shown[0]  # queued when shown: it says so
        # Updates while it waited: one when its view started (and the same again as the
        # running cell, or as the next cell when made between cells), not one or two
        # for each turn before it (they were 14 for the second cell, 33 for the tenth).
        waiting_updates = [html for html in shown[1:] if WAITING in html]
        assert len(waiting_updates) <= 4, (number, len(waiting_updates))
        # Its own reply still reaches it, to the end.
        assert f"echo: question number {number} " in shown[-1]
        assert WAITING not in shown[-1]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts /proc/<pid>/fd")
def test_updates_sent_again_as_the_running_cell_share_one_thread(fe: FrontEnd) -> None:
    # An output shown by one cell and updated, 400 times, by its task while a later
    # cell runs: each update goes out as both cells. The kernel opens no socket per
    # update (it did: one per thread that published, each held for 10 s).
    fe.run(
        """
        import asyncio
        from cm_notebook.widgets._live_output import LiveOutput
        counter = LiveOutput()
        counter.show({"text/plain": "0"})
        later_cell_runs = asyncio.Event()
        async def count_up():
            await later_cell_runs.wait()
            for number in range(1, 401):
                counter.update({"text/plain": str(number)})
                await asyncio.sleep(0)
        counting = asyncio.get_running_loop().create_task(count_up())
        """
    )
    display_id = _printed(fe, "counter.display_id")
    pid = _printed(fe, "__import__('os').getpid()")
    before = len(os.listdir(f"/proc/{pid}/fd"))
    later = fe.client.execute("later_cell_runs.set()\nawait counting")
    assert fe.reply(later)["status"] == "ok", fe.output(later)
    after = len(os.listdir(f"/proc/{pid}/fd"))
    assert after < before + 50, (before, after)
    as_later = [
        data for parent, id_, data in fe.display_log if id_ == display_id and parent == later
    ]
    # Each update went out as the running cell too (and as the cell that showed it), in
    # the order made.
    assert [data["text/plain"] for data in as_later] == [str(n) for n in range(1, 401)]
    assert fe.displays[display_id]["text/plain"] == "400"
    assert not any(word in fe.output(later) for word in FAILURES), fe.output(later)
