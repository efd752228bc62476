"""Approval choices across real processes and over the real server: edited arguments
reach the process running the call (and are checked there), a context allowance holds
in every process, and the audit log records who decided from where."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jupyter_server_proc import JupyterServer
from server_client import create_context, read_events
from test_signal_follow import DEADLINE, Recorder, _wait_for
from tool_writer import start_tool_writer

from cm_notebook.errors import ToolArgumentsError
from cm_notebook.events import ErrorReported, ToolApprovalRequested, ToolCallResolved
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def _kernel(data_dir: Path, context_id: str) -> subprocess.Popen[bytes]:
    # Another process with the tool: it asks for ``add`` and prints what the tool returned.
    return start_tool_writer(data_dir, context_id, reply="done", print_tool_result=True)


@pytest.fixture
def here(tmp_path: Path) -> Iterator[tuple[ContextSession, Recorder]]:
    # This process has no tools: it decides calls that run elsewhere.
    session = ContextSession.create(data_dir=tmp_path, provider=ScriptedProvider())
    yield session, Recorder(session)
    session.close()


def _finish(child: subprocess.Popen[bytes]) -> str:
    try:
        out, _ = child.communicate(timeout=DEADLINE)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(DEADLINE)
    return out.decode().strip()


def _asked(seen: Recorder) -> str:
    _wait_for(
        lambda: any(isinstance(e, ToolApprovalRequested) for e in list(seen.events)),
        "the other process to ask for approval",
    )
    [asked] = [e for e in seen.events if isinstance(e, ToolApprovalRequested)]
    return asked.tool_call_ids[0]


def test_edited_arguments_reach_the_process_running_the_call(
    tmp_path: Path, here: tuple[ContextSession, Recorder]
) -> None:
    session, seen = here
    child = _kernel(tmp_path, session.id)
    call_id = _asked(seen)
    [call] = session.approve(call_id, arguments={"a": 20, "b": 22}, by="grace")
    assert call.name == "add"
    assert _finish(child) == "42"
    [record] = session.approval_log()
    assert record.edited_arguments == {"a": 20, "b": 22}
    assert record.arguments == {"a": 1, "b": 2}
    assert (record.by, record.remote) == ("grace", True)
    assert record.pid not in (0, child.pid)  # this process decided; the child applied it
    # The waiting process's signal carries the same record here.
    _wait_for(
        lambda: any(isinstance(e, ToolCallResolved) and e.decision for e in list(seen.events)),
        "the decision's signal",
    )
    [signalled] = [e for e in seen.events if isinstance(e, ToolCallResolved) and e.decision]
    assert signalled.decision == record


def test_arguments_the_running_process_refuses_leave_the_call_waiting(
    tmp_path: Path, here: tuple[ContextSession, Recorder]
) -> None:
    session, seen = here
    child = _kernel(tmp_path, session.id)
    call_id = _asked(seen)
    # This process does not have the tool, so only the other one can check the schema;
    # approve() waits for its answer and raises the refusal.
    with pytest.raises(ToolArgumentsError, match=f"tool call '{call_id}' still waits"):
        session.approve(call_id, arguments={"a": "not a number"})
    _wait_for(
        lambda: any(isinstance(e, ErrorReported) for e in list(seen.events)),
        "the refusal",
    )
    [error] = [e for e in seen.events if isinstance(e, ErrorReported)]
    assert call_id in error.message
    assert error.kind == "tool"
    assert child.poll() is None
    assert session.approval_log() == []
    session.approve(call_id, arguments={"a": 2, "b": 3})
    assert _finish(child) == "5"


def test_a_process_that_has_the_tool_refuses_bad_arguments_at_once(
    tmp_path: Path, here: tuple[ContextSession, Recorder]
) -> None:
    session, seen = here

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    session.tools.add(add)
    child = _kernel(tmp_path, session.id)
    call_id = _asked(seen)
    with pytest.raises(ToolArgumentsError):
        session.approve(call_id, arguments={"a": "x", "b": 1})
    assert child.poll() is None  # nothing was posted: the call still waits there
    session.approve(call_id, arguments='{"a": 7, "b": 7}')
    assert _finish(child) == "14"


def test_a_context_allowance_holds_in_another_process(
    tmp_path: Path, here: tuple[ContextSession, Recorder]
) -> None:
    session, _seen = here
    session.allow("add", scope="context")
    assert _finish(_kernel(tmp_path, session.id)) == "3"  # nobody was asked
    [record] = session.approval_log()
    assert (record.by, record.remember, record.remote) == ("allow-list", "context", False)
    # Revoked here, asked again there: the other process's call waits for a decision.
    assert session.revoke("add") is True
    seen = Recorder(session)
    child = _kernel(tmp_path, session.id)
    session.deny(_asked(seen), reason="not today")
    assert "not today" in _finish(child)  # what the model was told
    denied = session.approval_log()[-1]
    assert (denied.approved, denied.reason, denied.remote) == (False, "not today", True)


def test_edited_arguments_and_an_allowance_over_http(tmp_path: Path) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, [])
        kernel: list[subprocess.Popen[bytes]] = []
        url = f"contexts/{context_id}/events"
        asked = read_events(
            client,
            url,
            lambda e: e.event == "ToolApprovalRequested",
            started=lambda: kernel.append(_kernel(server.data_dir, context_id)),
        )
        call_id = json.loads(asked[-1].data)["tool_call_ids"][0]
        bad = client.post(
            f"contexts/{context_id}/tools/approve",
            json={"tool_call_id": call_id, "remember": "always"},
        )
        assert bad.status_code == 400, bad.text
        approved = client.post(
            f"contexts/{context_id}/tools/approve",
            json={"tool_call_id": call_id, "arguments": {"a": 4, "b": 5}, "remember": "context"},
        )
        assert approved.status_code == 200, approved.text
        assert _finish(kernel[0]) == "9"
        resolved = read_events(
            client,
            f"{url}?since={asked[-1].id}",
            lambda e: e.event == "ToolCallResolved" and json.loads(e.data)["decision"] is not None,
        )
        decision = json.loads(resolved[-1].data)["decision"]
        assert decision["by"] == "http"
        assert decision["remote"] is True
        assert decision["edited_arguments"] == {"a": 4, "b": 5}
        assert decision["remember"] == "context"
        logged = client.get(f"contexts/{context_id}/tools/decisions", params={"branch": "main"})
        assert logged.status_code == 200, logged.text
        assert logged.json()["decisions"] == [decision]
        other = client.get(f"contexts/{context_id}/tools/decisions?branch=other")
        assert other.status_code == 404  # no such branch, as for every other endpoint
        assert other.json()["reason"] == "BranchNotFoundError"
        bad = client.get(f"contexts/{context_id}/tools/decisions?branch=..%2Fx")
        assert bad.status_code == 400, bad.text
        # The allowance is the context's: this process honours it too.
        with ContextSession.open(context_id, data_dir=server.data_dir) as session:
            assert session.allowed_tools()["context"] == ["add"]
            assert [r.by for r in session.approval_log()] == ["http"]


def test_the_arguments_asked_for_sent_back_from_elsewhere_are_not_an_edit(
    tmp_path: Path, here: tuple[ContextSession, Recorder]
) -> None:
    session, seen = here
    child = _kernel(tmp_path, session.id)
    call_id = _asked(seen)
    session.approve(call_id, arguments='{"b": 2, "a": 1}')
    assert _finish(child) == "3"
    [record] = session.approval_log()
    assert (record.edited_arguments, record.reason, record.remote) == (None, None, True)
