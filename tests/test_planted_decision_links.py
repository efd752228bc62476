"""Links planted in a context's ``decisions/`` folder (or as the folder) never make a
session obey, or write, a decision record outside the data directory.

A record there decides a tool call waiting in another process, edited arguments
included: one reached through a link is not applied (a warning says so, and the call
stays waiting), and a decision or stop is never written through one (the decider gets
a ``CorruptDataError`` naming the link). Once the link is gone, deciding works again.
"""

from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tool_writer import start_tool_writer

from cm_notebook import ContextSession
from cm_notebook._remote_decisions import DecisionBox
from cm_notebook.errors import CorruptDataError
from cm_notebook.store.diagnostics import StoreWarning
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")

DEADLINE = 30.0
TURN_ID = "t01m97c0000000000000000"


def _shared_context(data_dir: Path) -> Path:
    with ContextSession.create("shared", data_dir=data_dir, provider=ScriptedProvider()) as made:
        made.send("hello").result(timeout=DEADLINE)
        return data_dir / "contexts" / made.id


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def stray_warnings() -> Iterator[list[warnings.WarningMessage]]:
    # The waiting process warns from its follower's thread, on every poll.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        yield caught


def _elsewhere(tmp_path: Path) -> DecisionBox:
    # Decision records in a folder outside the data directory, written as another
    # process's approve() writes them: anyone who can write there could make them.
    (tmp_path / "elsewhere").mkdir()
    return DecisionBox(tmp_path / "elsewhere")


def _link_folder(folder: Path, record: Path) -> Path:
    shutil.rmtree(folder / "decisions", ignore_errors=True)
    os.symlink(record.parent, folder / "decisions")
    return folder / "decisions"


def _link_record(folder: Path, record: Path) -> Path:
    (folder / "decisions").mkdir(exist_ok=True)
    os.symlink(record, folder / "decisions" / record.name)
    return folder / "decisions" / record.name


@pytest.mark.parametrize("plant", [_link_folder, _link_record], ids=["folder", "record"])
def test_a_decision_reached_through_a_link_is_not_obeyed(
    tmp_path: Path,
    plant: Callable[[Path, Path], Path],
    stray_warnings: list[warnings.WarningMessage],
) -> None:
    ran: list[str] = []

    def delete_file(path: str) -> str:
        """Delete a file."""
        ran.append(path)
        return "deleted"

    folder = _shared_context(tmp_path / "data")
    elsewhere = _elsewhere(tmp_path)
    provider = ScriptedProvider().tool_call("delete_file", {"path": "notes.txt"}).reply("done")
    with ContextSession.open(
        folder.name, data_dir=tmp_path / "data", provider=provider, tools=[delete_file]
    ) as session:
        turn = session.send("tidy up")
        _until(lambda: bool(session.pending_tool_calls), "the call to be asked")
        [call] = session.pending_tool_calls
        asking = session.history()[-1]
        edited = {"path": "/home/me/.ssh/id_rsa"}
        assert elsewhere.post(call.id, asking.id, approved=True, reason=None, arguments=edited)
        [record] = elsewhere.folder.iterdir()
        link = plant(folder, record)

        _until(
            lambda: any(
                f"{link} is a symbolic link" in str(w.message) and "Not applied" in str(w.message)
                for w in stray_warnings
            ),
            "the waiting process to refuse the record",
        )
        assert [c.id for c in session.pending_tool_calls] == [call.id]
        assert ran == []
        # Deciding here is refused too (the call stays waiting), not reported made.
        with pytest.raises(CorruptDataError, match=f"{link} is a symbolic link"):
            session.approve(call.id)
        with pytest.raises(CorruptDataError, match="Remove the link"):
            DecisionBox(folder).post(call.id, asking.id, approved=False, reason="no")
        assert [c.id for c in session.pending_tool_calls] == [call.id]

        os.unlink(link)  # what the error says to do
        session.approve(call.id)
        assert turn.result(timeout=DEADLINE).content == "done"
    assert ran == ["notes.txt"]
    assert [p.name for p in elsewhere.folder.iterdir()] == [record.name]


def test_a_turn_stopped_while_its_call_waits_ends_cleanly_with_a_linked_folder(
    tmp_path: Path,
) -> None:
    # A call its turn stops waiting for is claimed, so that no later decision is
    # reported made; a linked folder leaves it unclaimed instead of failing the stop.
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = _shared_context(tmp_path / "data")
    provider = ScriptedProvider().tool_call("delete_file", {"path": "notes.txt"}).reply("never")
    ran: list[str] = []

    def delete_file(path: str) -> str:
        """Delete a file."""
        ran.append(path)
        return "deleted"

    with ContextSession.open(
        folder.name, data_dir=tmp_path / "data", provider=provider, tools=[delete_file]
    ) as session:
        turn = session.send("tidy up")
        _until(lambda: bool(session.pending_tool_calls), "the call to be asked")
        shutil.rmtree(folder / "decisions", ignore_errors=True)
        os.symlink(outside, folder / "decisions")
        session.stop()
        stopped = turn.result(timeout=DEADLINE)
        assert [call.status.value for call in stopped.tool_calls] == ["denied"]
        assert "cancelled by the user" in session.history()[-1].content
        assert not session.pending_tool_calls
    assert ran == []
    assert list(outside.iterdir()) == []


def _open_files() -> int:
    folder = "/proc/self/fd"
    return len(os.listdir(folder)) if os.path.isdir(folder) else 0


def test_a_decision_for_another_process_is_refused_through_a_linked_folder(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    folder = _shared_context(data_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    child = start_tool_writer(data_dir, folder.name, print_tool_result=True)
    try:
        with ContextSession.open(folder.name, data_dir=data_dir) as session:
            _until(lambda: bool(session.pending_tool_calls), "the other process to ask")
            [call] = session.pending_tool_calls
            shutil.rmtree(folder / "decisions", ignore_errors=True)
            os.symlink(outside, folder / "decisions")
            before = _open_files()
            for _ in range(10):  # one call's, then every waiting call's
                with pytest.raises(CorruptDataError, match="decisions is a symbolic link"):
                    session.approve(call.id)
                with pytest.raises(CorruptDataError, match="decisions is a symbolic link"):
                    session.approve()
            # Each refused try let go of the log reader it waited for the outcome with.
            assert _open_files() - before < 10
            assert list(outside.iterdir()) == []
            os.unlink(folder / "decisions")
            session.approve(call.id)
        out, _ = child.communicate(timeout=DEADLINE)
        assert out.decode().strip() == "3"
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate(timeout=DEADLINE)


def _post(box: DecisionBox) -> None:
    box.post("call_1", "m01m97c0000000000000000", approved=True, reason=None)


def _claim(box: DecisionBox) -> None:
    box.claim("call_1", "m01m97c0000000000000000")


def _post_stop(box: DecisionBox) -> None:
    box.post_stop(TURN_ID, "main")


@pytest.mark.parametrize("decide", [_post, _claim, _post_stop], ids=["post", "claim", "stop"])
def test_nothing_is_written_through_a_linked_decisions_folder(
    tmp_path: Path, decide: Callable[[DecisionBox], None]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = _shared_context(tmp_path / "data")
    shutil.rmtree(folder / "decisions", ignore_errors=True)
    os.symlink(outside, folder / "decisions")
    with pytest.raises(CorruptDataError, match="decisions is a symbolic link"):
        decide(DecisionBox(folder))
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("plant", [_link_folder, _link_record], ids=["folder", "record"])
def test_a_stop_reached_through_a_link_stops_nothing(
    tmp_path: Path,
    plant: Callable[[Path, Path], Path],
    stray_warnings: list[warnings.WarningMessage],
) -> None:
    folder = _shared_context(tmp_path / "data")
    elsewhere = _elsewhere(tmp_path)
    elsewhere.post_stop(TURN_ID, "main")
    [record] = elsewhere.folder.iterdir()
    link = plant(folder, record)
    box = DecisionBox(folder)
    assert not box.stop_asked(TURN_ID)
    assert any(
        f"{link} is a symbolic link" in str(w.message)
        and f"stop of turn {TURN_ID!r}" in str(w.message)
        for w in stray_warnings
    )
    # Asking for the stop is refused, not taken for "asked already".
    with pytest.raises(CorruptDataError, match=f"{link} is a symbolic link"):
        box.post_stop(TURN_ID, "main")
    os.unlink(link)
    box.post_stop(TURN_ID, "main")
    assert box.stop_asked(TURN_ID)
    assert [p.name for p in elsewhere.folder.iterdir()] == [record.name]
