"""A reply whose final write hits a real full disk (a small tmpfs): the turn ends, and
the reply is not left "streaming" (the store-seam version is test_session_disk_full.py,
where the interrupting write always succeeds; here it fails too).

This process reads it interrupted with its text at once, its streaming lock is let go,
and its final state is stored by the first write once there is room (or over another
process's "writer died" mark, when the session closes)."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from full_disk import Filler, small_disk  # noqa: F401 (the fixture)

from cm_notebook.errors import StoreError
from cm_notebook.fsm import State
from cm_notebook.model import Message, MessageStatus
from cm_notebook.session import ContextSession
from cm_notebook.store.oslock import lock_is_held
from cm_notebook.store.paths import streaming_lock_path
from cm_notebook.testing import ScriptedProvider

DEADLINE = 20.0
TEXT = "lorem ipsum " * 150

# Another process's session: sends once (its request reads the marked reply), waits for
# a line, sends again and prints what its request carried as the reply to "q".
OTHER = """
import json, sys
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
fake = ScriptedProvider()
with ContextSession.open(sys.argv[2], data_dir=sys.argv[1], provider=fake) as other:
    other.send("next").result(20)
    print("sent", flush=True)
    sys.stdin.readline()
    other.send("after").result(20)
    sent = [(m.role, m.content) for m in fake.last_request.messages]
    print(json.dumps(sent[sent.index(("user", "q")) + 1][1]))
"""


def _show(data_dir: Path, context_id: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir), "show", context_id],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    return done.stdout


def _refused_reply(
    session: ContextSession, fake: ScriptedProvider, filler: Filler, pages: int, data_dir: Path
) -> Message | None:
    # A reply sent with ``pages`` free pages left: it if its final state was refused (its
    # file still says streaming), else None (the prompt did not fit, no reply was
    # stored, or the final state fitted: not the case these tests are about).
    session.send("warm").result(DEADLINE)
    filler.fill(leave=pages)
    fake.reply(TEXT, chunks="words")
    # The prompt may not fit (StoreError), or the reply (StorageFullError).
    with contextlib.suppress(StoreError):
        session.send("q").result(DEADLINE)
    reply = session.history()[-1]
    if reply.role != "assistant" or reply.content == "echo: warm":
        return None
    stored = data_dir / "contexts" / session.id / "messages" / f"{reply.id}.json"
    return reply if '"streaming"' in stored.read_text(encoding="utf-8") else None


@pytest.mark.parametrize("first", ["branch", "another process"])
def test_a_reply_refused_by_a_full_disk_ends_interrupted(
    small_disk: Path,  # noqa: F811 (the fixture)
    first: str,
) -> None:
    filler = Filler(small_disk)
    seen = 0
    other: subprocess.Popen[str] | None = None
    for pages in range(8):
        if seen >= 2:
            break
        data_dir = small_disk / f"data{pages}"
        fake = ScriptedProvider()
        session = ContextSession.create("full", data_dir=data_dir, provider=fake)
        try:
            reply = _refused_reply(session, fake, filler, pages, data_dir)
            if reply is None:
                continue
            folder = data_dir / "contexts" / session.id
            seen += 1
            # This process, the disk still full: the turn is over, the reply as it left it.
            assert session.state is State.IDLE
            assert reply.status is MessageStatus.INTERRUPTED
            assert reply.content == TEXT
            assert session.get(reply.id).status is MessageStatus.INTERRUPTED
            assert not lock_is_held(streaming_lock_path(folder, reply.id))

            filler.empty()
            if first == "branch":
                session.branch("b2", switch=False)  # a write: stores the reply first
                out = _show(data_dir, session.id)
                assert "(streaming)" not in out
                assert TEXT.strip() in out
            else:
                # Another process marks it first ("writer died", without the text this
                # process had); the session stores its own state over that on close.
                assert "(streaming)" not in _show(data_dir, session.id)
                # A session of another process that read the mark (in a request of its
                # own) must not keep it once this one writes its text over it.
                other = subprocess.Popen(
                    [sys.executable, "-c", OTHER, str(data_dir), session.id],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
                )
                assert other.stdout is not None
                assert other.stdin is not None
                assert other.stdout.readline().strip() == "sent"
                session.branch("b2", switch=False)
        finally:
            session.close()
            filler.empty()
        if other is not None:
            answer, _ = other.communicate("go\n", timeout=60)
            assert json.loads(answer) == TEXT
            other = None
        with ContextSession.open(
            session.id, data_dir=data_dir, provider=ScriptedProvider()
        ) as again:
            stored_reply = again.get(reply.id)
            assert stored_reply.status is MessageStatus.INTERRUPTED
            assert stored_reply.content == TEXT
            assert "could not be stored" in (stored_reply.metadata.error or "")
            assert again.send("again").result(DEADLINE).content == "echo: again"
    assert seen, "no free-page count had the reply stored but its final state refused"


def test_the_chat_view_shows_a_refused_reply_once_as_finished(
    small_disk: Path,  # noqa: F811 (the fixture)
) -> None:
    # No MessageCompleted comes for it: the view learns the turn's end from the state,
    # and must not keep the reply as a live box beside its finished copy.
    widgets = pytest.importorskip("cm_notebook.widgets")
    filler = Filler(small_disk)
    for pages in range(8):
        data_dir = small_disk / f"data{pages}"
        fake = ScriptedProvider()
        session = ContextSession.create("full", data_dir=data_dir, provider=fake)
        view = widgets.ChatView(session)
        try:
            reply = _refused_reply(session, fake, filler, pages, data_dir)
            if reply is None:
                continue
            deadline = time.monotonic() + DEADLINE
            while view.transcript.live or reply.id not in _frozen_ids(view):
                assert time.monotonic() < deadline, (view.transcript.live, _frozen_ids(view))
                time.sleep(0.02)
            assert _frozen_ids(view).count(reply.id) == 1
            return
        finally:
            view.close()
            session.close()
            filler.empty()
    pytest.fail("no free-page count had the reply stored but its final state refused")


def _frozen_ids(view: Any) -> list[str]:
    return [frozen.data["id"] for frozen in view.transcript.frozen]
