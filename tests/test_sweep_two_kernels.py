"""One sweep run in two kernels at once (two real processes on one data directory):
a cell the other kernel answered after this one planned the sweep is not asked again,
and its answer stays the cell's answer."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

from test_session_support import DEADLINE

from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

# The other kernel: the same sweep, answered at once by an echoing fake.
_OTHER_KERNEL = textwrap.dedent(
    """
    import json, sys
    from cm_notebook.session import ContextSession
    from cm_notebook.testing import ScriptedProvider
    data_dir, context_id = sys.argv[1:3]
    fake = ScriptedProvider()
    session = ContextSession.open(context_id, data_dir=data_dir, provider=fake)
    sweep = session.sweep("Q", [{}], repeat=2, concurrency=1, name="twice", progress=False)
    sweep.run(60)
    print(json.dumps({"status": [c.status for c in sweep.cells],
                      "asked": len(fake.requests)}), flush=True)
    session.close()
    """
)


def test_a_cell_the_other_kernel_answered_meanwhile_is_not_asked_again(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    # This kernel's first cell hangs (until cancelled below); meanwhile the other kernel
    # runs the same sweep: the first cell is busy here, so it answers the second one.
    fake = ScriptedProvider().hang(after_chunks=1, text="partial")
    session = new_session(provider=fake)
    sweep = session.sweep("Q", [{}], repeat=2, concurrency=1, name="twice", progress=False)
    deadline = time.monotonic() + DEADLINE
    while not fake.requests and time.monotonic() < deadline:
        time.sleep(0.01)  # poll for the first cell's request, with a deadline
    assert fake.requests, "the first cell never asked the model"

    other = subprocess.run(
        [sys.executable, "-c", _OTHER_KERNEL, str(data_dir), session.id],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(other.stdout)
    assert result == {"status": ["failed", "done"], "asked": 1}
    second = "twice-p0-v0-r1"
    answer = session.history(second)[-1]
    assert answer.content == "echo: Q"

    # This kernel now goes on past its first cell to the second, which the plan knew
    # as not started: it is done, with the other kernel's answer, and not asked again.
    first = sweep.cells[0].turn
    assert first is not None
    first.cancel()
    sweep.run(DEADLINE)
    assert [c.status for c in sweep.cells] == ["failed", "done"]
    assert (sweep.cells[1].message_id, sweep.cells[1].reply) == (answer.id, "echo: Q")
    assert len(fake.requests) == 1
    assert [m.content for m in session.history(second)] == ["Q", "echo: Q"]
    assert [m.id for m in session.siblings(answer.id)] == [answer.id]  # one reply only
