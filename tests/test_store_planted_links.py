"""Links planted in a context folder received from someone else (a zip, a repository, a
shared drive) never make a session write outside the data directory.

The signal log (appended to by every process that opens the context) and the approval
log and allow-list lock are refused when they, or their folders, are symbolic links;
the file a link points to is left untouched.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cm_notebook import ContextSession
from cm_notebook.errors import CorruptDataError, StoreError
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
