"""A tool call left waiting by a killed process, read where its folder cannot be written.

The process was killed (SIGKILL) while its call waited for approval: the call is stored
``pending`` with no answer. A session that can write settles such a round when it
opens the context (test_session_dead_rounds.py). Where the folder cannot be written,
nothing can: readers used to contradict each other (the history said ``pending``,
``pending_tool_calls`` was empty, records said ``running``, the transcripts
``(pending)``, one REST route "pending" and the other nothing), and approve/deny
answered "read it again in a moment" for ever. Every reader now shows the round as
settling it will record it (denied, its process gone), without writing, and a
decision is refused saying why and where it can be settled.

The read-only view is a read-only bind mount as root, the folder's permissions
otherwise (test_store_journal_cut_read_only.py).
"""

from __future__ import annotations

import os
import threading
import warnings
from pathlib import Path

import httpx
import pytest
from jupyter_server_proc import JupyterServer
from test_session_dead_rounds import _doomed_writer, _kill, _kill_when
from test_signal_follow import DEADLINE
from test_store_journal_cut_read_only import _files, _make_read_only
from test_store_journal_cut_read_only import read_only as read_only

from cm_notebook._dead_rounds import UNDECIDED
from cm_notebook.cli import main
from cm_notebook.errors import StoreIOError, ToolCallAlreadyResolvedError
from cm_notebook.fsm import State
from cm_notebook.model import ToolCallStatus
from cm_notebook.session import ContextSession
from cm_notebook.store import StoreWarning
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs SIGKILL and flock")

#: What a refused decision says: why, and what to do.
GONE = "the process whose turn asked for it is gone"
UNWRITABLE = "this context's folder cannot be written here"
REMEDY = "Open the context where its folder can be written"


def _left_waiting(data_dir: Path) -> str:
    """A context whose writer was killed while ``slow(x="1")`` waited for approval."""
    with ContextSession.create(data_dir=data_dir, provider=ScriptedProvider()) as session:
        context_id = session.id
    _kill_when(_doomed_writer(data_dir, context_id, approval="ask"), "ASKED")
    return context_id


def _open(view: Path, context_id: str) -> ContextSession:
    return ContextSession.open(context_id, data_dir=view, provider=ScriptedProvider())


def test_every_reader_shows_the_round_ended_by_its_dead_process_and_writes_nothing(
    read_only: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir, view = read_only
    context_id = _left_waiting(data_dir)
    _make_read_only(data_dir, view)
    before = _files(view)

    with _open(view, context_id) as session:
        [call] = session.history()[-1].tool_calls
        assert call.status is ToolCallStatus.DENIED
        assert call.reason == UNDECIDED  # the process running the turn died
        assert session.get(session.history()[-1].id).tool_calls == [call]
        assert session.pending_tool_calls == []
        assert session.state is State.IDLE
        [record] = session.to_records()
        assert record["status"] == "stopped"
        transcript = session.export().to_markdown()
        assert "(pending)" not in transcript
        assert "`slow` (denied)" in transcript
        assert "the process running this turn died" in transcript.replace("\\", "")
        assert "(pending)" not in session._repr_html_()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)  # (the CLI prints them itself)
        code = main(["--data-dir", str(view), "show", context_id])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "[pending]" not in out
    assert "[denied]" in out
    assert "the process running this turn died" in out

    assert _files(view) == before  # nothing written


@pytest.mark.parametrize("decision", ["approve", "deny"])
def test_a_decision_says_the_process_is_gone_and_the_folder_cannot_be_written(
    read_only: tuple[Path, Path], decision: str
) -> None:
    data_dir, view = read_only
    context_id = _left_waiting(data_dir)
    _make_read_only(data_dir, view)
    before = _files(view)

    with _open(view, context_id) as session:
        for _ in range(2):  # the same answer each time: there is nothing to wait for
            with pytest.raises(ToolCallAlreadyResolvedError) as refused:
                getattr(session, decision)("call_1")
            said = str(refused.value)
            assert GONE in said
            assert UNWRITABLE in said
            assert REMEDY in said
            assert "in a moment" not in said
        assert session.history()[-1].tool_calls[0].status is ToolCallStatus.DENIED
    assert _files(view) == before

    # Where the folder can be written, opening it settles the round as it was shown.
    with ContextSession.open(context_id, data_dir=data_dir, provider=ScriptedProvider()) as there:
        [settled] = there.history()[-2].tool_calls
        assert settled.status is ToolCallStatus.DENIED
        assert settled.reason == UNDECIDED
        assert [m.role for m in there.history()] == ["user", "assistant", "tool"]


def test_the_rest_api_agrees_and_refuses_a_decision_saying_why(
    read_only: tuple[Path, Path], tmp_path: Path
) -> None:
    data_dir, view = read_only
    context_id = _left_waiting(data_dir)
    _make_read_only(data_dir, view)
    before = _files(view)

    server = JupyterServer(tmp_path / "server")
    server.data_dir = view  # the server's data directory: the read-only view
    with (
        server as running,
        httpx.Client(base_url=running.api("/"), headers=running.auth, timeout=30) as http,
    ):
        waiting = http.get(f"contexts/{context_id}/tools")
        assert waiting.status_code == 200, waiting.text
        assert waiting.json()["tool_calls"] == []
        one = http.get(f"contexts/{context_id}/tools/call_1")
        assert one.status_code == 200, one.text
        assert one.json()["tool_call"]["status"] == "denied"
        assert one.json()["tool_call"]["reason"] == UNDECIDED
        for route in ("approve", "deny"):
            refused = http.post(
                f"contexts/{context_id}/tools/{route}", json={"tool_call_id": "call_1"}
            )
            assert refused.status_code == 409, refused.text
            assert GONE in refused.json()["message"]
            assert UNWRITABLE in refused.json()["message"]
    assert _files(view) == before


def test_a_call_a_live_process_waits_on_is_shown_waiting_through_the_read_only_view(
    read_only: tuple[Path, Path],
) -> None:
    # The read-only view of a folder a live process writes through another path (a
    # bind mount): its turn holds the branch's claim, so its round is not a dead one.
    if os.geteuid() != 0:
        pytest.skip("needs a read-only bind mount (root): a copy is not written live")
    data_dir, view = read_only
    with ContextSession.create(data_dir=data_dir, provider=ScriptedProvider()) as session:
        context_id = session.id
    child = _doomed_writer(data_dir, context_id, approval="ask")
    timer = threading.Timer(DEADLINE, child.kill)  # a writer that never asks
    timer.start()
    try:
        assert child.stdout is not None
        for line in child.stdout:
            if line.strip() == "ASKED":
                break
        else:
            raise AssertionError("the writer ended before it asked")
        timer.cancel()
        with _open(view, context_id) as reader:
            [call] = reader.history()[-1].tool_calls
            assert call.status is ToolCallStatus.PENDING
            [record] = reader.to_records()
            assert record["status"] == "running"
            # A decision or a stop asked from here cannot be written for the live
            # process to read: refused the store's way, saying what to do (was a bare
            # OSError, and a 500 over REST).
            with pytest.raises(StoreIOError, match="read-only") as refused:
                reader.approve(call.id)
            assert "copy the data directory" in str(refused.value)
            with pytest.raises(StoreIOError, match="read-only"):
                reader.stop(branch="main")
    finally:
        timer.cancel()
        _kill(child)
