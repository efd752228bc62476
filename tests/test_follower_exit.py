"""A script that opens a context whose last writer was killed mid-reply exits quietly.

Opening starts the log follower, whose first step settles the dead writer's turn; a
script that reads and closes at once exits while that step may still run, and the
interpreter's exit shuts the store's workers down under it. That must not print a
traceback (the next opener settles what was cut short), and the reply must be seen
as interrupted. Real processes: a writer streaming slowly is SIGKILLed, then a fresh
interpreter opens, reads, closes and exits, many times over (the race is a timing one).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.slow

ROUNDS = 10

STREAMER = """
import sys, threading, time
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
words = " ".join(f"w{i}" for i in range(2000))
fake = ScriptedProvider().reply(words, chunks="words", delay=0.02)
session = ContextSession.open(sys.argv[2], data_dir=sys.argv[1], provider=fake)
def streaming():
    while len(session.history()) < 2:  # the reply stored (on a loaded machine: later)
        time.sleep(0.01)
    time.sleep(0.2)  # a few chunks written
    print("streaming", flush=True)
threading.Thread(target=streaming, daemon=True).start()
session.send("hi").result()
"""

OPENER = """
import sys
from cm_notebook.session import ContextSession
session = ContextSession.open(sys.argv[2], data_dir=sys.argv[1], provider="scripted")
print(len(session.history()))
session.close()
"""


def _killed_mid_reply(data_dir: Path) -> str:
    session = ContextSession.create(data_dir=data_dir, provider=ScriptedProvider())
    context_id = session.id
    session.close()
    writer = subprocess.Popen(
        [sys.executable, "-c", STREAMER, str(data_dir), context_id], stdout=subprocess.PIPE
    )
    try:
        assert writer.stdout is not None
        assert writer.stdout.readline().strip() == b"streaming"
    finally:
        writer.kill()
        writer.communicate(timeout=30)
    return context_id


def test_opening_after_a_writer_was_killed_mid_reply_prints_no_traceback(
    tmp_path: Path,
) -> None:
    for round_ in range(ROUNDS):
        data_dir = tmp_path / str(round_)
        context_id = _killed_mid_reply(data_dir)
        opened = subprocess.run(
            [sys.executable, "-c", OPENER, str(data_dir), context_id],
            capture_output=True,
            timeout=60,
        )
        assert opened.returncode == 0, opened.stderr.decode(errors="replace")
        assert opened.stdout.strip() == b"2"  # the question and the interrupted reply
        assert b"Traceback" not in opened.stderr, opened.stderr.decode(errors="replace")
    # Whatever the last opener cut short, the next one settles: the reply is interrupted.
    session = ContextSession.open(context_id, data_dir=data_dir, provider="scripted")
    try:
        assert session.history()[-1].status.value == "interrupted"
    finally:
        session.close()
