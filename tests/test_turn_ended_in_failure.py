"""A turn that failed for good is over: other processes do not announce its end again.

A turn ends in Idle or in PermanentFailure (its tries ran out). Other processes took
only Idle for an end, so a branch whose turn failed was tracked as busy with its owner
gone, and every process that opened the context "announced" the turn over: a mere
reader appended ``PermanentFailure -> Idle`` to the signal log (on a read-only copy it
logged that it could not, on every open), while ``state_of`` still said
PermanentFailure. A retry refused on a read-only copy also announced the branch
failed before refusing.

The failed turn runs in a real child process; the read-only view is a read-only bind
mount as root, the folder's permissions otherwise.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_store_journal_cut_read_only import _files, _make_read_only
from test_store_journal_cut_read_only import read_only as read_only

from cm_notebook.errors import StoreIOError
from cm_notebook.events import Event, StateChanged
from cm_notebook.fsm import State
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions")

DEADLINE = 30.0

# Runs one turn on branch "italy" that fails for good, then ends as a script does.
_FAILING_WRITER = textwrap.dedent(
    """
    import sys
    from cm_notebook.errors import PermanentProviderError
    from cm_notebook.session import ContextSession
    from cm_notebook.testing import ScriptedProvider

    provider = ScriptedProvider(strict=True).error("permanent")
    session = ContextSession.open(sys.argv[2], data_dir=sys.argv[1], provider=provider)
    try:
        session.send("Capital of Italy?", branch="italy").result(30)
    except PermanentProviderError:
        pass
    else:
        raise SystemExit("the turn did not fail")
    assert session.state_of("italy").value == "PermanentFailure"
    session.close()
    """
)


def _context_with_a_failed_branch(data_dir: Path) -> str:
    provider = ScriptedProvider().reply("Paris.")
    with ContextSession.create(data_dir=data_dir, provider=provider) as session:
        session.send("Capital of France?").result(DEADLINE)
        session.branch("italy", switch=False)
        context_id = session.id
    subprocess.run(
        [sys.executable, "-c", _FAILING_WRITER, str(data_dir), context_id],
        check=True,
        timeout=120,
    )
    return context_id


def _signal_log(data_dir: Path, context_id: str) -> Path:
    return data_dir / "contexts" / context_id / "signals" / "signals.log"


def _read_as_a_viewer(session: ContextSession) -> None:
    # What a viewer reads, then long enough for the session's log follower to read the
    # log and act on it: two of its steps, begun after opening, and what they queued on
    # the session's loop (a read runs on that loop after it).
    assert session.state_of("italy") is State.PERMANENT_FAILURE
    assert session.state_of("main") is State.IDLE
    assert [m.content for m in session.history()] == ["Capital of France?", "Paris."]
    follower = session._follower
    assert follower is not None
    for _ in range(2):
        assert follower.caught_up(DEADLINE)
    session.history("italy")
    assert session.state_of("italy") is State.PERMANENT_FAILURE


def test_a_reader_of_a_context_whose_turn_failed_writes_nothing_to_its_signal_log(
    tmp_path: Path,
) -> None:
    context_id = _context_with_a_failed_branch(tmp_path)
    log = _signal_log(tmp_path, context_id)
    before = log.read_bytes()

    seen: list[Event] = []
    session = ContextSession.open(context_id, data_dir=tmp_path, provider=ScriptedProvider())
    try:
        session.subscribe(seen.append)
        _read_as_a_viewer(session)
    finally:
        session.close()

    assert log.read_bytes() == before  # a reader wrote nothing
    assert not [e for e in seen if isinstance(e, StateChanged)]  # and announced nothing


def test_a_read_only_reader_of_a_failed_turn_announces_and_logs_nothing(
    read_only: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    data_dir, view = read_only
    context_id = _context_with_a_failed_branch(data_dir)
    _make_read_only(data_dir, view)
    before = _files(view)
    caplog.set_level(logging.WARNING, logger="cm_notebook")

    seen: list[Event] = []
    session = ContextSession.open(context_id, data_dir=view, provider=ScriptedProvider())
    try:
        session.subscribe(seen.append)
        _read_as_a_viewer(session)
        # A retry cannot start where nothing can be written: refused before the branch
        # is said to change state, so views do not flicker.
        with pytest.raises(StoreIOError, match=r"(?i)choose a writable data directory"):
            session.retry(branch="italy")
        session.history("italy")  # what the refusal queued on the loop is told by now
        assert session.state_of("italy") is State.PERMANENT_FAILURE
    finally:
        session.close()

    assert not [e for e in seen if isinstance(e, StateChanged)]
    said = [record.getMessage() for record in caplog.records]
    assert not [line for line in said if "could not record signals" in line], said
    assert _files(view) == before
