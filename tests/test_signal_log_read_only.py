"""A context opened where it may only be read: the signal log is read, not complained of.

Opening the log to find its last signal number took the writer's lock, which needs
the file open for writing: on a read-only mount every session opened there logged
"could not read the last signal number ... Read-only file system" and numbered its
signals from 0. The number is read without writing now, and nothing is logged.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from test_store_journal_cut_read_only import _files, _make_read_only
from test_store_journal_cut_read_only import read_only as read_only

from cm_notebook.session import ContextSession
from cm_notebook.signal_log import SignalLog
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions")


def _log_of(data_dir: Path, context_id: str) -> Path:
    return data_dir / "contexts" / context_id / "signals" / "signals.log"


def _prepare(data_dir: Path) -> tuple[str, int]:
    """A context with two turns: its id, and its signal log's last signal number."""
    session = ContextSession.create(provider=ScriptedProvider(["one", "two"]), data_dir=data_dir)
    try:
        session.send("first").result(30)
        session.send("second").result(30)
    finally:
        session.close()
    last = SignalLog(_log_of(data_dir, session.id)).last_seq
    assert last > 0
    return session.id, last


@pytest.fixture
def quiet_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="cm_notebook")
    return caplog


def test_the_last_signal_number_is_read_where_the_log_cannot_be_written(
    read_only: tuple[Path, Path],
) -> None:
    data_dir, view = read_only
    context_id, last = _prepare(data_dir)
    _make_read_only(data_dir, view)
    before = _files(view)

    assert SignalLog(_log_of(view, context_id)).last_seq == last
    assert _files(view) == before


def test_a_session_opened_read_only_logs_nothing_about_its_signals(
    read_only: tuple[Path, Path],
    quiet_logs: pytest.LogCaptureFixture,
) -> None:
    data_dir, view = read_only
    context_id, _last = _prepare(data_dir)
    _make_read_only(data_dir, view)
    before = _files(view)

    session = ContextSession.open(context_id, provider=ScriptedProvider(), data_dir=view)
    try:
        assert [m.content for m in session.history()][-1] == "two"
    finally:
        session.close()
    said = [r.getMessage() for r in quiet_logs.records]
    assert not [line for line in said if "signal number" in line], said
    assert _files(view) == before
