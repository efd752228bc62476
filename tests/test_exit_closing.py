"""Sessions still open when a process exits are closed first, in order.

A script that never calls ``close()`` left a reply under way ``streaming`` in the
store, and the next opener settled it as cut short by a killed process. Now the exit
closes the session as ``close()`` would: the reply is stored as interrupted by the
session's closing. Real processes; the holds the exit gives back are the registry's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cm_notebook._registry import REGISTRY
from cm_notebook._session_core import SESSION_CLOSED
from cm_notebook.model import MessageStatus
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

FORGETS_TO_CLOSE = """
import sys, time
from cm_notebook import ContextSession
from cm_notebook.testing import ScriptedProvider
slow = ScriptedProvider(delay=0.05)
session = ContextSession.create("forgot", data_dir=sys.argv[1], provider=slow)
print(session.id, flush=True)
turn = session.send(" ".join(f"w{i}" for i in range(200)))  # streams for about 10 s
deadline = time.monotonic() + 60
while len(turn.text.split()) < 3 and time.monotonic() < deadline:
    time.sleep(0.05)
print("streaming", flush=True)
"""


def test_a_script_that_exits_while_a_reply_streams_stores_it_as_stopped_by_the_closing(
    tmp_path: Path,
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", FORGETS_TO_CLOSE, str(tmp_path)], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    context_id, said = done.stdout.decode().split()
    assert said == "streaming"
    assert b"Traceback" not in done.stderr, done.stderr.decode(errors="replace")
    session = ContextSession.open(context_id, data_dir=tmp_path, provider="scripted")
    try:
        reply = session.history()[-1]
    finally:
        session.close()
    assert reply.role == "assistant"
    assert reply.status is MessageStatus.INTERRUPTED
    assert reply.metadata.error == SESSION_CLOSED
    assert reply.content.startswith("echo: w0 w1")


def test_the_registry_lists_the_sessions_still_held_and_leaves_one_hold_at_exit(
    tmp_path: Path,
) -> None:
    first = ContextSession.create("first", data_dir=tmp_path, provider=ScriptedProvider())
    second = ContextSession.create("second", data_dir=tmp_path, provider=ScriptedProvider())
    try:
        again = ContextSession.open(first.id, data_dir=tmp_path)
        assert again is first
        assert REGISTRY.holds(first) == 2
        assert {first, second} <= set(REGISTRY.open_sessions())
        second.close()
        assert second not in REGISTRY.open_sessions()
        assert REGISTRY.holds(second) == 0
        assert not REGISTRY.to_last_hold(second)  # closed: nothing to close
        assert REGISTRY.to_last_hold(first)
        assert REGISTRY.holds(first) == 1
        first.close()  # the last hold now
        assert first.closed
        assert first not in REGISTRY.open_sessions()
    finally:
        first.close()
        second.close()
