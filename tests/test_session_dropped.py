"""A session dropped without close() is collected, and what it held is released.

The registry holds sessions weakly; the log follower's thread calls back into its
session through weak references, and a finalizer closes what the session opened
(cm_notebook._dropped). A notebook cell that makes a session, re-run, must not pile
up threads and open files until the process runs out of them.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
import weakref
from pathlib import Path

import pytest

from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

DEADLINE = 30

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts /proc fds")


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def _followers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("cm-signal-follower")]


def _settled(check: object, what: str) -> None:
    # The release runs on a thread of its own: wait for it (a behaviour, not a speed).
    deadline = time.monotonic() + DEADLINE
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(what)
        gc.collect()
        time.sleep(0.05)


def test_dropped_sessions_are_collected_and_release_their_threads_and_files(
    tmp_path: Path,
) -> None:
    with ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider()) as warm:
        warm.send("warm up the package's own threads").result(DEADLINE)
    del warm
    gc.collect()
    files, followers = _open_files(), len(_followers())
    refs = []
    ids = []
    for n in range(12):
        session = ContextSession.create(
            f"dropped {n}", data_dir=tmp_path, provider=ScriptedProvider()
        )
        session.send("hello").result(DEADLINE)
        refs.append(weakref.ref(session))
        ids.append(session.id)
        del session
    _settled(lambda: all(ref() is None for ref in refs), "a dropped session stayed alive")
    _settled(lambda: len(_followers()) <= followers, "a dropped session's follower runs on")
    # Its files too (a little slack for the package's own pooled workers).
    _settled(lambda: _open_files() <= files + 2, "a dropped session's files stay open")
    # Nothing of it is left registered: the context opens afresh, options and all.
    reopened = ContextSession.open(ids[0], data_dir=tmp_path, provider=ScriptedProvider(["ok"]))
    try:
        assert reopened.send("again").result(DEADLINE).content == "ok"
        assert [m.content for m in reopened.history()][-2:] == ["again", "ok"]
    finally:
        reopened.close()


def test_the_event_stream_of_a_dropped_session_ends(tmp_path: Path) -> None:
    session = ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider())
    session.send("hello").result(DEADLINE)
    stream = session.event_stream()
    ref = weakref.ref(session)
    del session
    # Work the session started may still hold it a moment (naming the context after
    # its first message): collected once that is done.
    _settled(lambda: ref() is None, "the dropped session stayed alive")

    async def read() -> list[str]:
        return [event.type async for event in stream]

    async def read_in_time() -> list[str]:
        return await asyncio.wait_for(read(), DEADLINE)

    # It ends, as close() ends it, after what was published since it was made (the
    # context's new title, at most).
    assert set(asyncio.run(read_in_time())) <= {"ContextUpdated"}
