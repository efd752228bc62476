"""Tool calls waiting in another process are listed and decided like one's own: a
session (and so the server, over HTTP) lists them in ``pending_tool_calls``, and
approve/deny with no call id decide them too."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jupyter_server_proc import JupyterServer
from server_client import create_context, read_events
from test_signal_follow import DEADLINE, _wait_for
from tool_writer import start_tool_writer

from cm_notebook.errors import ToolCallNotFoundError
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


@pytest.fixture
def context(tmp_path: Path) -> str:
    session = ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider())
    context_id = session.id
    session.close()
    return context_id


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for child in started:
        if child.poll() is None:
            child.kill()
        child.communicate(timeout=DEADLINE)  # reaped, its pipe closed


def _finish(child: subprocess.Popen[bytes]) -> str:
    out, _ = child.communicate(timeout=DEADLINE)
    return out.decode().strip()


def _asking(data_dir: Path, context_id: str, children: list[subprocess.Popen[bytes]]) -> None:
    # A kernel's turn on ``main`` waiting for approval of add(1, 2); returns once asked.
    children.append(start_tool_writer(data_dir, context_id, print_tool_result=True))
    with ContextSession.open(context_id, data_dir=data_dir) as watcher:
        _wait_for(lambda: bool(watcher.pending_tool_calls), "the other process to ask")


def test_a_call_asked_before_opening_is_listed_and_approved_with_all(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    _asking(tmp_path, context, children)
    # Opened after the call was asked for: found in the log read when following starts.
    with ContextSession.open(context, data_dir=tmp_path) as session:
        [call] = session.pending_tool_calls
        assert (call.name, call.arguments, call.status) == ("add", {"a": 1, "b": 2}, "pending")
        with pytest.raises(ToolCallNotFoundError, match="on branch 'other'"):
            session.approve(branch="other")  # none there; the one on main stays waiting
        assert [c.id for c in session.pending_tool_calls] == [call.id]
        [approved] = session.approve(by="ada")
        assert approved.id == call.id
        assert _finish(children[0]) == "3"
        _wait_for(lambda: not session.pending_tool_calls, "the decided call to leave the list")
        [record] = session.approval_log()
        assert (record.tool_call_id, record.by, record.remote) == (call.id, "ada", True)


def test_deny_all_reaches_the_waiting_process(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    _asking(tmp_path, context, children)
    with ContextSession.open(context, data_dir=tmp_path) as session:
        [denied] = session.deny(reason="not now", branch="main")
        assert denied.name == "add"
        assert "not now" in _finish(children[0])
        _wait_for(lambda: not session.pending_tool_calls, "the denied call to leave the list")
        with pytest.raises(ToolCallNotFoundError):
            session.deny()


def test_a_dead_process_s_call_is_not_listed(
    tmp_path: Path, context: str, children: list[subprocess.Popen[bytes]]
) -> None:
    _asking(tmp_path, context, children)
    children[0].kill()
    children[0].communicate(timeout=DEADLINE)
    with ContextSession.open(context, data_dir=tmp_path) as session:
        # Nobody is left to pick a decision up: nothing to list or approve.
        assert session.pending_tool_calls == []
        with pytest.raises(ToolCallNotFoundError):
            session.approve()


def test_the_server_lists_and_approves_a_kernel_s_call(
    tmp_path: Path, children: list[subprocess.Popen[bytes]]
) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, [])
        url = f"contexts/{context_id}"
        asked = read_events(
            client,
            f"{url}/events",
            lambda e: e.event == "ToolApprovalRequested",
            started=lambda: children.append(
                start_tool_writer(server.data_dir, context_id, print_tool_result=True)
            ),
        )
        [call_id] = json.loads(asked[-1].data)["tool_call_ids"]
        detail = client.get(url).json()
        assert [c["id"] for c in detail["pending_tool_calls"]] == [call_id]
        assert detail["states"]["main"] == "AwaitingToolApproval"
        assert detail["running"]["main"]  # the kernel's turn, by its id
        listed = client.get(f"{url}/tools").json()["tool_calls"]
        assert [(c["id"], c["status"]) for c in listed] == [(call_id, "pending")]
        approved = client.post(f"{url}/tools/approve", json={})
        assert approved.status_code == 200, approved.text
        assert [c["id"] for c in approved.json()["tool_calls"]] == [call_id]
        assert _finish(children[0]) == "3"
        read_events(
            client,
            f"{url}/events?since={asked[-1].id}",
            lambda e: e.event == "StateChanged" and json.loads(e.data)["new"] == "Idle",
        )
        detail = client.get(url).json()
        assert detail["pending_tool_calls"] == []
        assert detail["running"] == {}
        nothing = client.post(f"{url}/tools/approve", json={})
        assert nothing.status_code == 409, nothing.text
