"""The chat view's Send when the store refuses the message: the typed text is kept.

The box used to be emptied as soon as Send was clicked, before the message was stored;
where the data folder cannot be written (a colleague's folder on a read-only mount, a
full disk) the status bar said "Nothing was sent; ... send it again" with the text
gone. It is put back in the box now, and the turn's error is taken (no "Task exception
was never retrieved" at exit).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_session_support import until
from test_store_journal_cut_read_only import _make_read_only
from test_store_journal_cut_read_only import read_only as read_only

from cm_notebook import ContextSession
from cm_notebook.testing import ScriptedProvider

pytest.importorskip("anywidget")

from cm_notebook.widgets import ChatView, StatusBar

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions"),
]


def _refusal_shown(status: StatusBar) -> bool | None:
    return any("could not be stored" in str(row.get("error")) for row in status.rows) or None


def _context(data_dir: Path) -> str:
    session = ContextSession.create(provider=ScriptedProvider(["Hello."]), data_dir=data_dir)
    try:
        session.send("Hi").result(30)
    finally:
        session.close()
    return session.id


async def test_a_message_the_store_refuses_stays_in_the_box(
    read_only: tuple[Path, Path],
) -> None:
    data_dir, view = read_only
    context_id = await asyncio.to_thread(_context, data_dir)
    _make_read_only(data_dir, view)
    session = ContextSession.open(context_id, provider=ScriptedProvider(), data_dir=view)
    try:
        chat = ChatView(session)
        status = StatusBar(session)
        chat.input.value = "Is anyone there?\n"
        chat.send_button.click()
        await until(lambda: _refusal_shown(status))
        kept = await until(lambda: chat.input.value or None)
        assert kept == "Is anyone there?"
        assert [m.content for m in session.history()] == ["Hi", "Hello."]
        chat.close()
    finally:
        session.close()


_SEND_AND_EXIT = """
import asyncio, sys
from cm_notebook import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.widgets import ChatView

async def main():
    session = ContextSession.open(sys.argv[1], provider=ScriptedProvider(), data_dir=sys.argv[2])
    chat = ChatView(session)
    chat.input.value = "anyone?"
    chat.send_button.click()
    for _ in range(200):
        await asyncio.sleep(0.05)
        if chat.input.value:
            break
    print("kept:", chat.input.value)
    session.close()

asyncio.run(main())
"""


def test_the_refused_turn_s_error_is_taken_by_the_view(read_only: tuple[Path, Path]) -> None:
    # Nobody awaits a turn a view started: its error is the status bar's to show, and
    # must not end the process with "Task exception was never retrieved".
    data_dir, view = read_only
    context_id = _context(data_dir)
    _make_read_only(data_dir, view)
    done = subprocess.run(
        [sys.executable, "-c", _SEND_AND_EXIT, context_id, str(view)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "kept: anyone?" in done.stdout
    assert "never retrieved" not in done.stderr, done.stderr
