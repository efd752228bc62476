"""The record of a turn stopped in its tool round says so in ``status``: its last reply
only asks for tools and is stored ``complete`` (the request for tools was), but the
turn never answered. Ordinary turns keep their reply's status."""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import DEADLINE

from cm_notebook.errors import PermanentProviderError
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool

NewSession = Callable[..., ContextSession]


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def _until(check: Callable[[], object]) -> None:
    # Poll for ``check()``, with a deadline.
    deadline = time.monotonic() + DEADLINE
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_turn_stopped_at_its_tool_round_limit_is_stopped_not_complete(
    new_session: NewSession, tmp_path: Path
) -> None:
    fake = ScriptedProvider(strict=True).reply("Hello.")
    for _ in range(2):  # the turn, then the sweep's
        fake.tool_call("add", {"a": 1, "b": 2}).tool_call("add", {"a": 3, "b": 3})
    session = new_session(provider=fake, tools=[add], approval="auto", max_tool_rounds=1)
    session.send("Hi").result(DEADLINE)
    with pytest.raises(PermanentProviderError, match="max_tool_rounds"):
        session.send("Add twice").result(DEADLINE)
    # The turn ended on a reply that only asks for tools, stored complete.
    asked = [m for m in session.history() if m.role == "assistant"][-1]
    assert (asked.status.value, len(asked.tool_calls)) == ("complete", 1)

    rows = session.to_records()
    assert [(row["output"], row["status"]) for row in rows] == [
        ("Hello.", "complete"),
        ("", "stopped"),
    ]
    assert rows[1]["tool_calls"] == 2  # both steps' calls, the last never run
    assert rows[1]["message_id"] == asked.id
    # CSV and DataFrame carry the same word.
    session.to_csv(tmp_path / "rows.csv")
    with (tmp_path / "rows.csv").open(encoding="utf-8", newline="") as file:
        assert [line["status"] for line in csv.DictReader(file)] == ["complete", "stopped"]
    sweep = session.sweep("Add twice", [{}], name="limit", progress=False).run(DEADLINE)
    [row] = sweep.to_records()
    assert row["status"] == "stopped"
    assert "at its tool round limit" in row["failure"]


def test_a_turn_stopped_while_its_calls_wait_for_approval_is_stopped(
    new_session: NewSession,
) -> None:
    fake = ScriptedProvider(strict=True).tool_call("add", {"a": 1, "b": 2})
    session = new_session(provider=fake, tools=[add], approval="ask")
    handle = session.send("Add 1 and 2")
    _until(lambda: session.pending_tool_calls)
    # While the call waits for a decision the turn goes on: not complete either.
    [waiting] = session.to_records()
    assert (waiting["status"], waiting["tool_calls"]) == ("running", 1)

    session.stop()
    _until(handle.done)
    [row] = session.to_records()
    assert row["message_id"] == waiting["message_id"]
    assert session.get(row["message_id"]).status.value == "complete"
    assert (row["status"], row["tool_calls"]) == ("stopped", 1)
