"""A sweep cell whose reply the operating system will not let be read is no damage.

A re-run of a sweep reads each stored cell's prompt and reply. When the read fails
because of the process or the system (too many open files, permission denied), the
files may be whole: the cell fails saying what is wrong and what to fix, and nothing
tells the user to delete the branch (which would destroy a good answer). The records
and the stability raise the same error rather than mark the answer unreadable.

Real conditions, in a child process: its limit of open files lowered
(``resource.setrlimit``), and a reply file without read permission (as root, the
child runs without the capability that bypasses permissions, via ``setpriv``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from test_session_support import DEADLINE

from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

pytestmark = pytest.mark.skipif(os.name != "posix", reason="needs setrlimit and chmod")

CHILD = Path(__file__).with_name("sweep_os_child.py")


def _answered(new_session: Callable[..., ContextSession], data_dir: Path) -> tuple[str, Path]:
    """A context whose sweep ``cap`` has its one cell answered; its id and reply file."""
    session = new_session(provider=ScriptedProvider(strict=True).reply("Paris."))
    sweep = session.sweep("Capital of France?", [{}], name="cap", progress=False)
    sweep.run(DEADLINE)
    cell = sweep.cells[0]
    assert (cell.status, cell.reply) == ("done", "Paris.")
    reply = data_dir / "contexts" / session.id / "messages" / f"{cell.message_id}.json"
    session.close()
    return session.id, reply


def _run_again(data_dir: Path, context_id: str, mode: str, prefix: list[str]) -> Any:
    done = subprocess.run(
        [*prefix, sys.executable, str(CHILD), str(data_dir), context_id, mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


def _assert_no_damage_said(found: Any, condition: str, data_dir: Path, cid: str) -> None:
    assert found["status"] == "failed"
    assert found["requests"] == 0  # not asked again
    error = found["error"]
    assert condition in error
    assert "could not be read just now" in error
    assert "run the sweep again" in error
    for damage in ("delete_branch", "restore that file", "backup"):
        assert damage not in error
    # The records read the failed reply's file too: they stop on the same error.
    assert found["records"]["type"] == "StoreIOError"
    assert condition in found["records"]["message"]
    # Nothing was lost: the answer is still there, and a run once the fault is gone
    # finds the cell done.
    session = ContextSession.open(cid, provider=ScriptedProvider(strict=True), data_dir=data_dir)
    try:
        again = session.sweep("Capital of France?", [{}], name="cap", progress=False)
        again.run(DEADLINE)
        assert [(c.status, c.reply) for c in again.cells] == [("done", "Paris.")]
    finally:
        session.close()


def test_too_many_open_files_fails_the_cell_without_calling_it_damaged(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    cid, _reply = _answered(new_session, data_dir)
    found = _run_again(data_dir, cid, "emfile", [])
    _assert_no_damage_said(found, "Too many open files", data_dir, cid)
    assert "ulimit -n" in found["error"]


def test_records_and_stability_stop_on_too_many_open_files_rather_than_mark_the_answer(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    cid, _reply = _answered(new_session, data_dir)
    found = _run_again(data_dir, cid, "emfile-after", [])
    assert (found["status"], found["error"], found["requests"]) == ("done", None, 0)
    for read in ("records", "stability"):
        assert found[read] is not None, read
        assert found[read]["type"] == "StoreIOError"
        assert "Too many open files" in found[read]["message"]
        assert "ulimit -n" in found[read]["message"]


def test_permission_denied_fails_the_cell_without_calling_it_damaged(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:  # pragma: no cover - util-linux is missing
            pytest.skip("root reads every file; needs setpriv to drop that power")
        prefix = [setpriv, "--inh-caps=-all", "--bounding-set=-all"]
    cid, reply = _answered(new_session, data_dir)
    reply.chmod(0o000)
    try:
        found = _run_again(data_dir, cid, "plain", prefix)
    finally:
        reply.chmod(0o644)
    _assert_no_damage_said(found, "permission denied", data_dir, cid)
    assert str(reply) in found["error"]
