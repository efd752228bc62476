"""Deciding a tool call on a real full disk (a small tmpfs), and a torn decision record.

The decision cannot be recorded: the package's StorageFullError says so, nothing is
left in the decisions folder, the call still waits, and once there is space it is
decided as usual. A claim file left empty (by an older version killed between making
it and writing it) is no decision: it does not refuse every later one."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from full_disk import Filler, small_disk  # noqa: F401 (the fixture)

from cm_notebook import tool
from cm_notebook._remote_decisions import TORN_AFTER_SECONDS, DecisionBox
from cm_notebook.errors import StorageFullError
from cm_notebook.model import ToolCallStatus
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

DEADLINE = 20.0


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


@pytest.fixture
def asking(small_disk: Path) -> Iterator[ContextSession]:  # noqa: F811 (the fixture)
    fake = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("three")
    session = ContextSession.create(
        "full", data_dir=small_disk / "data", provider=fake, tools=[add]
    )
    try:
        yield session
    finally:
        session.close()


def _wait_for_call(session: ContextSession) -> str:
    end = time.monotonic() + DEADLINE
    while not session.pending_tool_calls:
        assert time.monotonic() < end, "the tool call never waited for approval"
        time.sleep(0.01)
    return session.pending_tool_calls[0].id


def _decisions(session: ContextSession, disk: Path) -> list[str]:
    folder = disk / "data" / "contexts" / session.id / "decisions"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.parametrize("remember", ["once", "context"])
def test_approving_on_a_full_disk_leaves_the_call_waiting(
    small_disk: Path,  # noqa: F811 (the fixture)
    asking: ContextSession,
    remember: str,
) -> None:
    turn = asking.send("add one and two")
    call_id = _wait_for_call(asking)
    filler = Filler(small_disk)
    filler.fill()
    with pytest.raises(StorageFullError) as raised:
        asking.approve(remember=remember)  # type: ignore[arg-type]
    message = str(raised.value)
    assert call_id in message
    assert "decisions" in message
    assert "still waiting" in message
    assert "free some space" in message.lower()
    assert raised.value.path is not None
    # Nothing half-written, nothing decided.
    assert _decisions(asking, small_disk) == []
    assert [c.id for c in asking.pending_tool_calls] == [call_id]
    assert asking.pending_tool_calls[0].status is ToolCallStatus.PENDING
    assert not turn.done()

    filler.empty()
    [approved] = asking.approve(remember=remember)  # type: ignore[arg-type]
    assert approved.id == call_id
    assert turn.result(DEADLINE).content == "three"


def test_denying_on_a_full_disk_leaves_the_call_waiting(
    small_disk: Path,  # noqa: F811 (the fixture)
    asking: ContextSession,
) -> None:
    turn = asking.send("add one and two")
    _wait_for_call(asking)
    filler = Filler(small_disk)
    filler.fill()
    with pytest.raises(StorageFullError, match="still waiting"):
        asking.deny(reason="not now")
    assert _decisions(asking, small_disk) == []
    filler.empty()
    [denied] = asking.deny(reason="not now")
    assert denied.status is ToolCallStatus.DENIED
    turn.result(DEADLINE)


def _age(path: Path) -> None:
    old = time.time() - TORN_AFTER_SECONDS - 5
    os.utime(path, (old, old))


def test_a_torn_claim_does_not_refuse_later_decisions(tmp_path: Path) -> None:
    fake = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("three")
    with ContextSession.create(
        "torn", data_dir=tmp_path / "data", provider=fake, tools=[add]
    ) as session:
        turn = session.send("add one and two")
        call_id = _wait_for_call(session)
        message_id = session.history()[-1].id
        box = DecisionBox(tmp_path / "data" / "contexts" / session.id)
        # What an older version's claim left when killed between making and writing it.
        box.folder.mkdir(exist_ok=True)
        torn = box._path(call_id, message_id)
        torn.write_bytes(b"")
        _age(torn)
        [approved] = session.approve(call_id)
        assert approved.status is ToolCallStatus.APPROVED
        assert turn.result(DEADLINE).content == "three"
        assert torn.read_bytes() != b""  # this decision's claim took its place


def test_a_torn_record_gives_way_to_another_process_s_decision(tmp_path: Path) -> None:
    box = DecisionBox(tmp_path)
    box.folder.mkdir()
    path = box._path("call_1", "m1")
    path.write_bytes(b'{"tool_call_id": "ca')  # cut short
    # Young: it may be an older version's claim being written this moment.
    assert not box.post("call_1", "m1", approved=True, reason=None)
    _age(path)
    assert box.post("call_1", "m1", approved=True, reason=None)
    decision = box.read("call_1", "m1")
    assert decision is not None
    assert decision.approved
    # A whole record is a decision made: a second one is refused, however old.
    _age(path)
    assert not box.post("call_1", "m1", approved=False, reason="late")
    assert not box.claim("call_1", "m1")
    assert path.exists()
    assert [p.name for p in box.folder.iterdir() if p.name.endswith(".tmp")] == []


def test_deciders_racing_over_a_torn_record_decide_once(tmp_path: Path) -> None:
    # Each round: eight deciders at once over a torn record (posts and local claims);
    # one is told it decided, and the record is its own.
    for round_ in range(20):
        box = DecisionBox(tmp_path / f"context{round_}")
        box.folder.mkdir(parents=True)
        path = box._path("call_1", "m1")
        path.write_bytes(b"")
        _age(path)
        told = _race(box, 8)
        [winner] = [n for n, decided in told.items() if decided]
        record = json.loads(path.read_bytes())
        assert record.get("reason", "claimed") == (f"d{winner}" if winner % 4 != 3 else "claimed")


def _race(box: DecisionBox, deciders: int) -> dict[int, bool]:
    # Whether each decider was told it decided: every fourth claims, the others post.
    start = threading.Barrier(deciders)
    told: dict[int, bool] = {}

    def decide(n: int) -> None:
        start.wait()
        if n % 4 == 3:
            told[n] = box.claim("call_1", "m1")
        else:
            told[n] = box.post("call_1", "m1", approved=n % 2 == 0, reason=f"d{n}")

    threads = [threading.Thread(target=decide, args=(n,)) for n in range(deciders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return told


def test_an_approval_applied_whose_allowance_cannot_be_saved_says_so(
    small_disk: Path,  # noqa: F811 (the fixture)
) -> None:
    # With 0, 1, 2, ... pages free: the decision's claim fits before the allowance
    # (approvals/allowed.json) does at some count. There the call is approved and
    # runs, and the error must not ask for the approval to be made again.
    filler = Filler(small_disk)
    applied = []
    for pages in range(8):
        fake = ScriptedProvider().tool_call("add", {"a": 1, "b": 2}).reply("three")
        data_dir = small_disk / f"data{pages}"
        with ContextSession.create("ctx", data_dir=data_dir, provider=fake, tools=[add]) as s:
            turn = s.send("add one and two")
            call_id = _wait_for_call(s)
            filler.fill(leave=pages)
            try:
                s.approve(remember="context")
            except StorageFullError as exc:
                error: StorageFullError | None = exc
            else:
                error = None
            if error is not None and s.pending_tool_calls:
                assert "Nothing was decided" in str(error)  # the claim did not fit
            elif error is not None:
                applied.append(pages)
                message = str(error)
                assert f"tool call {call_id!r} was approved and runs" in message
                assert "do not approve it again" in message
                assert "allowed.json" in message
                assert "allow('add', scope='context')" in message
                assert "try again" not in message
                assert s.allowed_tools()["context"] == []
            filler.empty()
            if s.pending_tool_calls:
                s.approve()  # the claim did not fit: decided now
            with contextlib.suppress(StorageFullError):  # its own writes may not have fit
                turn.result(DEADLINE)
            if applied and applied[-1] == pages:
                s.allow("add", scope="context")  # what the error says to do
                assert s.allowed_tools()["context"] == ["add"]
    assert applied, "no free-page count had the claim fit and the allowance not"
