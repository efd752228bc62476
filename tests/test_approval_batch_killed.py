"""A batch of decisions (``approve()`` of every waiting call) and a process killed while
it applies them: a call the audit log says was approved is never settled afterwards as
"no decision was made".

The decisions are stored in the asking reply first, in one write, and only then added
to the audit log (a record of decisions already applied, one fsync'd line each): so a
kill while the lines are written leaves calls that say they were approved, settled as
"approved, but never started", whatever part of the log was written. A real child
process, killed with SIGKILL once the log holds its first line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cm_notebook._dead_rounds import NOT_STARTED, UNDECIDED
from cm_notebook.model import ToolCallStatus
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

#: Enough calls that their log lines (each fsync'd) take a while to write.
CALLS = 150
DEADLINE = 60.0


def _approver(data_dir: Path, context_id: str) -> subprocess.Popen[str]:
    # Asks for CALLS calls of ``slow``, prints ASKED once all wait for a decision, then
    # approves them all at once.
    code = textwrap.dedent(
        f"""
        import time
        from cm_notebook.session import ContextSession
        from cm_notebook.testing import ScriptedProvider

        def slow(x: str) -> str:
            \"\"\"Take a long time.\"\"\"
            time.sleep(600)
            return "finished"

        provider = ScriptedProvider()
        provider.tool_calls(*[("slow", {{"x": str(i)}}, f"c{{i}}") for i in range({CALLS})])
        provider.reply("never sent")
        session = ContextSession.open({context_id!r}, data_dir={str(data_dir)!r},
                                      provider=provider, tools=[slow], approval="ask")
        session.send("Please run slow.")
        while len(session.pending_tool_calls) < {CALLS}:
            time.sleep(0.01)
        print("ASKED", flush=True)
        session.approve()
        time.sleep(600)
        """
    )
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def _kill_at_first_log_line(child: subprocess.Popen[str], log: Path) -> None:
    stdout = child.stdout
    assert stdout is not None
    try:
        assert stdout.readline().strip() == "ASKED", "the child ended before it asked"
        deadline = time.monotonic() + DEADLINE
        while time.monotonic() < deadline:
            try:
                if b"\n" in log.read_bytes():
                    break
            except FileNotFoundError:
                pass
            time.sleep(0.0005)
        else:
            raise AssertionError("the child wrote no decision to the audit log")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(DEADLINE)
        stdout.close()


def test_no_call_the_audit_log_says_was_approved_is_settled_as_undecided(
    tmp_path: Path,
) -> None:
    with ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider()) as session:
        context_id = session.id
    log = tmp_path / "contexts" / context_id / "approvals" / "log.jsonl"
    _kill_at_first_log_line(_approver(tmp_path, context_id), log)
    with ContextSession.open(context_id, data_dir=tmp_path) as session:
        logged = {r.tool_call_id for r in session.approval_log() if r.approved}
        calls = {call.id: call for m in session.history() for call in m.tool_calls}
    assert logged, "the kill came before any decision was logged"
    assert len(calls) == CALLS
    said_undecided = sorted(i for i in logged if calls[i].reason == UNDECIDED)
    assert said_undecided == [], f"{len(said_undecided)} logged approvals settled as undecided"
    # Approved and then cut off: "approved, but never started" (or, had the kill come
    # after the last line, "interrupted while running" for the first call run).
    assert {calls[i].status for i in logged} == {ToolCallStatus.FAILED}
    assert NOT_STARTED in {calls[i].reason for i in logged}
