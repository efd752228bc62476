"""Temporary files of writers that do not hold the context's lock (the signal log's
compaction, decision records), left by a writer killed mid-write: removed when the
context is next opened, but only once no live writer can still be using them."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cm_notebook.session import ContextSession
from cm_notebook.store.leftovers import STRAY_TEMP_SECONDS
from cm_notebook.testing import ScriptedProvider

# Writes signals into a context's log, compacting it every 2 KiB, and is killed by
# SIGKILL just before a compaction renames its new file over the log.
_COMPACTING_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from cm_notebook.signal_log import SignalLog
    from cm_notebook.signals import ContentDelta

    def kill_before_rename(event, args):
        if event == "os.rename" and str(args[0]).endswith(".tmp"):
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(kill_before_rename)
    log = SignalLog(Path(sys.argv[1]), max_bytes=2048)
    for i in range(500):
        log.record(lambda n, i=i: ContentDelta(
            seq=n, message_id="m01m9710000000000000x", text="word " * 5, offset=i * 25))
        log.sync()
    print("never killed")
    """
)


def _age(path: Path) -> None:
    old = time.time() - STRAY_TEMP_SECONDS - 10
    os.utime(path, (old, old))


def _reopen(data_dir: Path, context_id: str) -> None:
    with ContextSession.open(context_id, data_dir=data_dir, provider=ScriptedProvider()) as s:
        s.history()


def test_a_compaction_killed_before_its_rename_leaves_no_file_for_good(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with ContextSession.create("leak", data_dir=data_dir, provider=ScriptedProvider()) as s:
        s.send("hello").result(20)
        log, context_id = s.signal_log_path, s.id
    child = subprocess.run(
        [sys.executable, "-c", _COMPACTING_CHILD, str(log)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    [temp] = [p for p in log.parent.iterdir() if p.name.endswith(".tmp")]
    assert temp.name.startswith(".signals.log.")

    # Just left: a compaction of a live writer could be making it (not locked yet).
    _reopen(data_dir, context_id)
    assert temp.exists()
    # Untouched for long and unlocked: its writer is gone.
    _age(temp)
    _reopen(data_dir, context_id)
    assert not temp.exists()
    assert sorted(p.name for p in log.parent.iterdir()) == [log.name]


def test_a_decision_record_s_temporary_file_is_removed_once_nobody_writes_it(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    with ContextSession.create("d", data_dir=data_dir, provider=ScriptedProvider()) as s:
        s.send("hello").result(20)
        context_id = s.id
    folder = data_dir / "contexts" / context_id / "decisions"
    folder.mkdir(exist_ok=True)  # the session's log follower may have made it, to watch it
    left = folder / ".00112233aabbccdd.tmp"  # a post() killed before its link
    written = folder / ".44556677aabbccdd.tmp"  # one being written right now
    record = folder / "0123456789abcdef0123456789abcdef.json"
    for path in (left, written, record):
        path.write_text('{"tool_call_id": "call_1"', encoding="utf-8")
        _age(path)
    fd = os.open(written, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as write_temp holds it
        _reopen(data_dir, context_id)
        assert sorted(p.name for p in folder.iterdir()) == sorted([written.name, record.name])
    finally:
        os.close(fd)
