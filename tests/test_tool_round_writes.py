"""A reply that asks for many tool calls: the stored reply, which records every call of
the round, is rewritten a bounded number of times to mark them running (not once per
call, which costs time quadratic in the calls), and each call is still stored as
running before its tool starts, so a process killed meanwhile never leaves a call that
ran recorded as "never run".

Observed through the store's public ``fsync=`` seam: at every fsync (a write's commit
point) the reply's file, as it is on disk, is read back.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from cm_notebook import tool
from cm_notebook._runner_tools import RUNNING_MARKS
from cm_notebook.model import ToolCallStatus
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider

#: Enough calls that marking them one write each would take several times the bound.
CALLS = 4 * RUNNING_MARKS


class StoredCalls:
    """The statuses of the asking reply's calls as stored, read back at every fsync."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._lock = threading.Lock()  # fsyncs come from several threads at once
        self._file: Path | None = None
        #: Each different stored version, in the order seen.
        self.versions: list[dict[str, str]] = []

    def statuses(self) -> dict[str, str]:
        """The reply's calls (id -> status) as its file says now; {} before it has any."""
        if self._file is None:
            for path in self._data_dir.glob("contexts/*/messages/*.json"):
                if json.loads(path.read_text(encoding="utf-8"))["tool_calls"]:
                    self._file = path
                    break
            else:
                return {}
        stored: list[dict[str, Any]] = json.loads(self._file.read_text(encoding="utf-8"))[
            "tool_calls"
        ]
        return {call["id"]: call["status"] for call in stored}

    def newly(self, status: str) -> list[set[str]]:
        """For each stored version that gave calls ``status``, those calls."""
        given: list[set[str]] = []
        before: set[str] = set()
        for version in self.versions:
            now = {call_id for call_id, stored in version.items() if stored == status}
            if now - before:
                given.append(now - before)
            before = now
        return given

    def __call__(self, fd: int) -> None:
        os.fsync(fd)
        with self._lock:
            now = self.statuses()
            if now and (not self.versions or self.versions[-1] != now):
                self.versions.append(now)


@pytest.mark.anyio
async def test_a_large_round_marks_its_calls_running_in_a_bounded_number_of_writes(
    tmp_path: Path,
) -> None:
    stored = StoredCalls(tmp_path)
    entered: list[tuple[int, str]] = []  # (i, its call's stored status as its tool starts)

    @tool
    def note(i: int) -> str:
        """Note a number."""
        entered.append((i, stored.statuses()[f"c{i}"]))
        return str(i)

    provider = ScriptedProvider(strict=True).tool_calls(
        *[("note", {"i": i}, f"c{i}") for i in range(CALLS)]
    )
    provider.reply("noted")
    store = FileStore(tmp_path, fsync=stored)
    session = ContextSession.create(store=store, provider=provider, tools=[note], approval="auto")
    try:
        assert (await session.send("Note them all.")).content == "noted"
        [asking] = [m for m in session.history() if m.tool_calls]
        answers = [m.content for m in session.history() if m.role == "tool"]
    finally:
        session.close()
        await store.close()

    # Every call ran once, in order, and was stored as running before its tool started.
    assert entered == [(i, "running") for i in range(CALLS)]
    assert answers == [str(i) for i in range(CALLS)]
    assert all(call.status is ToolCallStatus.DONE for call in asking.tool_calls)
    # The stored versions that mark calls running: a bounded number of them.
    assert 1 < len(stored.newly("running")) <= RUNNING_MARKS
    assert stored.versions[-1] == {f"c{i}": "done" for i in range(CALLS)}


@pytest.mark.anyio
async def test_calls_approved_together_are_stored_approved_in_one_write(tmp_path: Path) -> None:
    # approve() of every waiting call: one decision each (each in the audit log), one
    # rewrite of the reply for them all, before any of them runs.
    stored = StoredCalls(tmp_path)

    @tool
    def note(i: int) -> str:
        """Note a number."""
        return str(i)

    provider = ScriptedProvider(strict=True).tool_calls(
        *[("note", {"i": i}, f"c{i}") for i in range(CALLS)]
    )
    provider.reply("noted")
    store = FileStore(tmp_path, fsync=stored)
    session = ContextSession.create(store=store, provider=provider, tools=[note])
    try:
        turn = session.send("Note them all.")
        assert len(await turn.wait_for_approval()) == CALLS
        assert len(session.approve(by="ada")) == CALLS
        assert (await turn).content == "noted"
        log = session.approval_log()
    finally:
        session.close()
        await store.close()

    assert [(r.tool_call_id, r.by) for r in log] == [(f"c{i}", "ada") for i in range(CALLS)]
    assert stored.newly("approved") == [{f"c{i}" for i in range(CALLS)}]
    assert stored.versions[-1] == {f"c{i}": "done" for i in range(CALLS)}
