"""A write that waits for the disk holds up only its own request.

Another process (a kernel, a script) holds a context's lock while it writes; the
server's write to that context must then wait, and the server's other requests must
not wait with it. Each test holds the lock a server write needs, starts that write,
and asks for another context meanwhile: the answer comes while the write still waits,
and the write succeeds once the lock is let go.

A real Jupyter server in a child process, real HTTP, real OS locks. That the server
has reached the write is read from the outside: the files the server process has
open (``/proc/<pid>/fd``), so these tests run on Linux only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from jupyter_server_proc import JupyterServer
from server_client import create_context, read_events, wait_for

from cm_notebook import ContextSession

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the server's open files in /proc"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    with JupyterServer(tmp_path_factory.mktemp("jupyter-loop")) as running:
        yield running
    assert "Traceback" not in running.log(), running.log()


def _client(server: JupyterServer) -> httpx.Client:
    # Long enough for a write that waits out the store's lock timeout (10 s), so a
    # server that stalls shows as a wrong answer rather than a client timeout.
    return httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=60)


def _open_files(server: JupyterServer) -> list[str]:
    """The paths of the files the server process has open now."""
    assert server.process is not None
    found = []
    for fd in Path(f"/proc/{server.process.pid}/fd").iterdir():
        with contextlib.suppress(OSError):  # closed while we looked
            found.append(os.readlink(fd))
    return found


@contextlib.contextmanager
def _holding(lock_file: Path) -> Iterator[None]:
    """Hold the OS lock on ``lock_file`` as another process's writer would."""
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing lets the lock go


class _Request:
    """One request sent on a thread of its own, so the test can go on meanwhile."""

    def __init__(self, server: JupyterServer, method: str, url: str, body: Any) -> None:
        self.outcome: list[httpx.Response | BaseException] = []
        self._thread = threading.Thread(target=self._send, args=(server, method, url, body))
        self._thread.start()

    def _send(self, server: JupyterServer, method: str, url: str, body: Any) -> None:
        with _client(server) as client:
            try:
                self.outcome.append(client.request(method, url, json=body))
            except BaseException as exc:  # reported by response()
                self.outcome.append(exc)

    def waiting(self) -> bool:
        return self._thread.is_alive() and not self.outcome

    def response(self) -> httpx.Response:
        self._thread.join(timeout=120)
        assert self.outcome, "the request did not end"
        answer = self.outcome[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _stored_context(data_dir: Path) -> tuple[str, str]:
    """A context written by this process, as by a notebook: one exchange on ``main``
    and a second branch ``other``. The server has never opened it. Returns its id and
    the id of its user message."""
    script = [{"reply": "First."}, {"reply": "Second."}]
    with ContextSession.create(
        "Before", data_dir=data_dir, provider="scripted", provider_options={"script": script}
    ) as session:
        session.send("Hello").result(timeout=30)
        session.branch("other", switch=False)
        return session.id, session.history()[0].id


Landed = Callable[[dict[str, Any]], bool]

# What each write sends, answers, and leaves in the context's metadata.
WRITES: dict[str, tuple[str, str, dict[str, Any] | None, int, Landed]] = {
    "rename": ("PATCH", "", {"title": "Renamed"}, 200, lambda c: c["title"] == "Renamed"),
    "fork": ("POST", "/branches", {"name": "side"}, 201, lambda c: "side" in c["branches"]),
    "switch": (
        "PUT",
        "/branches/other",
        {"active": True},
        200,
        lambda c: c["active_branch"] == "other",
    ),
    "system prompt": (
        "PUT",
        "/branches/other",
        {"system": "Be brief."},
        200,
        # In place: ``other`` has no reply of its own (main's is shared, not its own).
        lambda c: c["branches"]["other"].get("system_prompt") == "Be brief.",
    ),
    "delete branch": (
        "DELETE",
        "/branches/other",
        None,
        204,
        lambda c: "other" not in c["branches"],
    ),
    "edit": (
        "POST",
        "/messages/{user}/edit",
        {"text": "Hello again"},
        202,
        lambda c: c["active_branch"] == "main-edit-1",
    ),
    # ``other`` still points at the first reply; ``main`` at the new one.
    "regenerate": (
        "POST",
        "/regenerate",
        {},
        202,
        lambda c: c["branches"]["main"]["head"] != c["branches"]["other"]["head"],
    ),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_a_write_waiting_for_the_context_lock_holds_up_no_other_request(
    server: JupyterServer, write: str
) -> None:
    method, path, body, status, landed = WRITES[write]
    context_id, user_id = _stored_context(server.data_dir)
    folder = (server.data_dir / "contexts" / context_id).resolve()
    url = f"contexts/{context_id}{path.format(user=user_id)}"
    with _client(server) as client:
        other = create_context(client, [])
        with _holding(folder / ".lock"):  # another process is writing to the context
            request = _Request(server, method, url, body)
            # The server opens the context for this request, then writes at once.
            wait_for(lambda: any(p.startswith(f"{folder}{os.sep}") for p in _open_files(server)))
            answered = client.get(f"contexts/{other}")
            assert answered.status_code == 200, answered.text
            assert request.waiting(), request.outcome  # still waiting for the lock
        response = request.response()
        assert response.status_code == status, response.text
        # Replies started by an edit or a regenerate run to their end.
        wait_for(lambda: not client.get(f"contexts/{context_id}").json()["running"])
        detail = client.get(f"contexts/{context_id}").json()
        assert landed(detail["context"]), detail["context"]


def test_an_approval_waiting_for_the_allow_list_lock_holds_up_no_other_request(
    server: JupyterServer,
) -> None:
    script = [
        {"tool_call": "get_weather", "arguments": {"city": "Paris"}, "id": "w1"},
        {"reply": "Sunny in Paris."},
    ]
    with _client(server) as client:
        context_id = create_context(client, script)
        other = create_context(client, [])
        url = f"contexts/{context_id}/events"
        asked = read_events(
            client,
            url,
            lambda e: e.event == "ToolApprovalRequested",
            started=lambda: client.post(f"contexts/{context_id}/messages", json={"text": "?"}),
        )
        approvals = (server.data_dir / "contexts" / context_id / "approvals").resolve()
        approvals.mkdir(exist_ok=True)
        lock = approvals / "allowed.lock"
        # Another process is changing the context's allow-list (the server waits for it
        # up to its store's lock timeout).
        with _holding(lock):
            request = _Request(
                server,
                "POST",
                f"contexts/{context_id}/tools/approve",
                {"tool_call_id": "w1", "remember": "context"},
            )
            wait_for(lambda: str(lock) in _open_files(server))  # the server waits for it
            answered = client.get(f"contexts/{other}", timeout=30)
            assert answered.status_code == 200, answered.text
            assert request.waiting(), request.outcome
        response = request.response()
        assert response.status_code == 200, response.text
        assert [call["id"] for call in response.json()["tool_calls"]] == ["w1"]
        done = read_events(
            client,
            url,
            lambda e: e.event == "StateChanged" and json.loads(e.data)["new"] == "Idle",
            headers={"Last-Event-ID": asked[-1].id},
        )
        assert "ToolCallResolved" in [e.event for e in done]
        assert json.loads((approvals / "allowed.json").read_text()) == {"tools": ["get_weather"]}


def test_a_creation_waiting_for_another_process_holds_up_no_other_request(
    server: JupyterServer,
) -> None:
    # Another process is creating a context (creations take turns under one lock).
    lock = (server.data_dir / ".creating.lock").resolve()
    with _client(server) as client:
        other = create_context(client, [])
        with _holding(lock):
            request = _Request(server, "POST", "contexts", {"title": "Made later"})
            wait_for(lambda: str(lock) in _open_files(server))  # the server waits for it
            answered = client.get(f"contexts/{other}")
            assert answered.status_code == 200, answered.text
            assert request.waiting(), request.outcome
        response = request.response()
        assert response.status_code == 201, response.text
        made = response.json()["context"]["id"]
        assert client.get(f"contexts/{made}").json()["context"]["title"] == "Made later"
