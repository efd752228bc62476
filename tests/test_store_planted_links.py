"""Links planted in a context folder received from someone else (a zip, a repository, a
shared drive) never make a session write, or read, outside the data directory.

The signal log (appended to by every process that opens the context, read by every
follower) and the approval log, allow-list and its lock are refused when they, or
their folders, are symbolic links; the file a link points to is left untouched and
never decides anything (an allow-list found through a link allows nothing: the call
asks). The sweep of temporary files left by dead writers never removes one through a
link. (Decision records: see test_planted_decision_links.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

from cm_notebook import ContextSession
from cm_notebook.errors import CorruptDataError, StoreError
from cm_notebook.events import ContentDelta, Event
from cm_notebook.signal_log import LogReader, SignalLog
from cm_notebook.store.diagnostics import StoreWarning
from cm_notebook.store.leftovers import STRAY_TEMP_SECONDS
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.skipif(not hasattr(os, "symlink"), reason="needs symbolic links")

VICTIM_TEXT = "# my shell config\n"


def _shared_context(data_dir: Path) -> Path:
    with ContextSession.create("shared", data_dir=data_dir, provider=ScriptedProvider()) as made:
        made.send("hello").result(timeout=30)
        return data_dir / "contexts" / made.id


def _link_log(folder: Path, victim: Path) -> None:
    shutil.rmtree(folder / "signals")
    (folder / "signals").mkdir()
    os.symlink(victim, folder / "signals" / "signals.log")


def _link_signals_folder(folder: Path, victim: Path) -> None:
    shutil.rmtree(folder / "signals")
    os.symlink(victim.parent, folder / "signals")


@pytest.mark.parametrize("plant", [_link_log, _link_signals_folder], ids=["log", "folder"])
def test_a_linked_signal_log_is_refused_and_its_target_untouched(
    tmp_path: Path, plant: Callable[[Path, Path], None]
) -> None:
    victim = tmp_path / "home" / ".bashrc"
    victim.parent.mkdir()
    victim.write_text(VICTIM_TEXT)
    folder = _shared_context(tmp_path / "data")
    plant(folder, victim)
    with pytest.raises(CorruptDataError, match="is a symbolic link"):
        ContextSession.open(folder.name, data_dir=tmp_path / "data")
    assert victim.read_text() == VICTIM_TEXT
    assert sorted(p.name for p in victim.parent.iterdir()) == [".bashrc"]


def test_a_linked_approvals_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = _shared_context(tmp_path / "data")
    with ContextSession.open(folder.name, data_dir=tmp_path / "data") as session:
        shutil.rmtree(folder / "approvals", ignore_errors=True)
        os.symlink(outside, folder / "approvals")
        with pytest.raises(StoreError, match="symbolic link"):
            session.allow("add", scope="context")
    assert list(outside.iterdir()) == []


def test_a_linked_approval_log_is_not_appended_to(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text(VICTIM_TEXT)
    folder = _shared_context(tmp_path / "data")
    approvals = folder / "approvals"
    approvals.mkdir(exist_ok=True)
    os.symlink(victim, approvals / "log.jsonl")
    provider = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("3")

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    with ContextSession.open(
        folder.name, data_dir=tmp_path / "data", provider=provider, tools=[add]
    ) as session:
        turn = session.send("1 + 2?")
        deadline = time.monotonic() + 30
        while not session.pending_tool_calls:
            assert time.monotonic() < deadline, "the call was never asked for"
            time.sleep(0.01)
        session.approve()  # a decision the log would record
        assert turn.result(timeout=30).content == "3"
    assert victim.read_text() == VICTIM_TEXT


def _wait_for_call(session: ContextSession) -> None:
    deadline = time.monotonic() + 30
    while not session.pending_tool_calls:
        assert time.monotonic() < deadline, "the call was never asked for"
        time.sleep(0.01)


def _link_approvals_folder(folder: Path, outside: Path, name: str) -> Path:
    shutil.rmtree(folder / "approvals", ignore_errors=True)
    os.symlink(outside, folder / "approvals")
    return folder / "approvals"


def _link_approvals_file(folder: Path, outside: Path, name: str) -> Path:
    (folder / "approvals").mkdir(exist_ok=True)
    os.symlink(outside / name, folder / "approvals" / name)
    return folder / "approvals" / name


_PLANTS = pytest.mark.parametrize(
    "plant", [_link_approvals_folder, _link_approvals_file], ids=["folder", "file"]
)


@_PLANTS
def test_an_allow_list_reached_through_a_link_allows_nothing(
    tmp_path: Path, plant: Callable[[Path, Path, str], Path]
) -> None:
    ran: list[str] = []

    def delete_file(path: str) -> str:
        """Delete a file."""
        ran.append(path)
        return "deleted"

    outside = tmp_path / "outside"
    outside.mkdir()
    planted = json.dumps({"tools": ["delete_file"]})
    (outside / "allowed.json").write_text(planted)
    folder = _shared_context(tmp_path / "data")
    link = plant(folder, outside, "allowed.json")
    provider = ScriptedProvider().tool_call("delete_file", {"path": "/etc/hosts"}).reply("done")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        with ContextSession.open(
            folder.name, data_dir=tmp_path / "data", provider=provider, tools=[delete_file]
        ) as session:
            with pytest.raises(CorruptDataError, match=f"{link} is a symbolic link"):
                session.allowed_tools()
            turn = session.send("tidy up")
            _wait_for_call(session)  # asked, not run because a file outside says so
            assert ran == []
            session.deny()
            turn.result(timeout=30)
    assert ran == []
    assert any(
        f"{link} is a symbolic link" in str(w.message) and "asks for a decision" in str(w.message)
        for w in caught
    )
    assert (outside / "allowed.json").read_text() == planted


def test_a_context_allowance_is_not_merged_with_a_linked_allow_list(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    planted = json.dumps({"tools": ["delete_file"]})
    (outside / "allowed.json").write_text(planted)
    folder = _shared_context(tmp_path / "data")
    link = _link_approvals_file(folder, outside, "allowed.json")
    with (
        ContextSession.open(folder.name, data_dir=tmp_path / "data") as session,
        pytest.raises(CorruptDataError, match=f"{link} is a symbolic link"),
    ):
        session.allow("add", scope="context")
    assert link.is_symlink()  # nothing written in its place either
    assert (outside / "allowed.json").read_text() == planted


@_PLANTS
def test_an_approval_log_reached_through_a_link_is_not_read(
    tmp_path: Path, plant: Callable[[Path, Path, str], Path]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "log.jsonl").write_text(VICTIM_TEXT)
    folder = _shared_context(tmp_path / "data")
    link = plant(folder, outside, "log.jsonl")
    with (
        ContextSession.open(folder.name, data_dir=tmp_path / "data") as session,
        pytest.raises(CorruptDataError, match=f"{link} is a symbolic link"),
    ):
        session.approval_log()


def _age(path: Path) -> None:
    old = time.time() - STRAY_TEMP_SECONDS - 10
    os.utime(path, (old, old))


@pytest.mark.parametrize("name", ["signals", "decisions"])
def test_the_sweep_of_leftover_temporary_files_removes_none_through_a_link(
    tmp_path: Path, name: str
) -> None:
    # Opening a context removes what dead writers left in these folders; a link as the
    # folder must not make it remove files elsewhere that happen to look the same.
    outside = tmp_path / "outside"
    outside.mkdir()
    lookalike = outside / ".00112233aabbccdd.tmp"
    lookalike.write_text(VICTIM_TEXT)
    _age(lookalike)
    folder = _shared_context(tmp_path / "data")
    shutil.rmtree(folder / name, ignore_errors=True)
    os.symlink(outside, folder / name)
    if name == "signals":  # refused on opening, after the sweep
        with pytest.raises(CorruptDataError, match="signals is a symbolic link"):
            ContextSession.open(folder.name, data_dir=tmp_path / "data")
    else:
        ContextSession.open(folder.name, data_dir=tmp_path / "data").close()
    assert lookalike.read_text() == VICTIM_TEXT


def test_a_signal_log_reached_through_a_folder_linked_since_opening_is_not_read(
    tmp_path: Path,
) -> None:
    # Opening refuses a linked signals folder; one planted afterwards must not feed
    # records written elsewhere to the readers (a follower, the server's streams).
    folder = _shared_context(tmp_path / "data")
    signals = folder / "signals"
    assert LogReader(signals / "signals.log", since=0).poll()  # the context's own
    outside = tmp_path / "outside"
    signals.rename(outside)
    os.symlink(outside, signals)
    reader = LogReader(signals / "signals.log", since=0)
    with pytest.raises(CorruptDataError, match=f"{signals} is a symbolic link"):
        reader.poll()
    reader.close()


def _delta(n: int) -> Callable[[int], Event]:
    return lambda seq: ContentDelta(seq=seq, message_id="m1", text="x" * 40, offset=n * 40)


def test_a_compaction_is_not_written_through_a_folder_linked_since_opening(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "signals"
    folder.mkdir()
    log = SignalLog(folder / "signals.log", max_bytes=2048, sync_delay=60)
    for n in range(100):
        log.record(_delta(n))  # beyond max_bytes: the next sync compacts the log
    outside = tmp_path / "outside"
    outside.mkdir()
    folder.rename(tmp_path / "moved")
    os.symlink(outside, folder)
    before = outside.stat().st_mtime_ns
    time.sleep(0.05)  # past the file system's clock tick: a file made there would show
    try:
        log.sync()
    finally:
        log.close()
    assert list(outside.iterdir()) == []
    assert outside.stat().st_mtime_ns == before
