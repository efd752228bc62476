"""Links planted in a context folder received from someone else (a zip, a repository, a
shared drive) never make a session write, or read, outside the data directory.

The signal log (appended to by every process that opens the context) and the approval
log, allow-list and its lock are refused when they, or their folders, are symbolic
links; the file a link points to is left untouched and never decides anything (an
allow-list found through a link allows nothing: the call asks). (Decision records: see
test_planted_decision_links.py.)
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
from cm_notebook.store.diagnostics import StoreWarning
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
