"""The server's sessions over their lifetime: deleting a context while requests for it
keep coming, closing idle sessions, and reopening them with nothing lost.

A real Jupyter server in a child process, real HTTP. Which contexts the server holds
open is read from the outside: the files of a context folder that the server process
has open (``/proc/<pid>/fd``, so these tests run on Linux only).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from httpx_sse import ServerSentEvent
from jupyter_server_proc import JupyterServer
from server_client import create_context, read_events, wait_for

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads the server's open files in /proc"
)


def open_contexts(server: JupyterServer) -> set[str]:
    """The ids of the contexts of which the server process has files open."""
    assert server.process is not None
    root = str((server.data_dir / "contexts").resolve()) + os.sep
    found = set()
    fds = Path(f"/proc/{server.process.pid}/fd")
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed while we looked
        if target.startswith(root):
            found.add(target[len(root) :].split(os.sep)[0])
    return found


def _client(server: JupyterServer) -> httpx.Client:
    return httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30)


# -- deleting a context --------------------------------------------------------------


def test_requests_racing_a_delete_never_bring_the_context_back(tmp_path: Path) -> None:
    with JupyterServer(tmp_path) as server:
        with _client(server) as client:
            # Many replies running: stopping them keeps the DELETE busy for a while.
            slow = {"reply": "w " * 200, "chunks": "words", "delay": 0.05}
            context_id = create_context(client, [slow] * 40)
            for n in range(12):
                client.post(f"contexts/{context_id}/branches", json={"name": f"b{n}"})
                sent = client.post(
                    f"contexts/{context_id}/messages", json={"text": "busy", "branch": f"b{n}"}
                )
                assert sent.status_code == 202, sent.text
            client.post(f"contexts/{context_id}/branches", json={"name": "free"})
        statuses = asyncio.run(_delete_while_hammering(server, context_id))
        assert statuses["DELETE"] == [204]
        # Before and during the deletion requests are served or refused: never a 500.
        assert set(statuses["send"]) <= {202, 404, 409}, statuses
        assert set(statuses["tools"]) <= {200, 404}, statuses
        with _client(server) as client:
            for path in ("", "/tools", "/messages", "/branches", "/events"):
                gone = client.get(f"contexts/{context_id}{path}", timeout=5)
                assert gone.status_code == 404, (path, gone.status_code, gone.text[:200])
            time.sleep(1.0)  # a reopened session would now be writing its turns' signals
            assert not (server.data_dir / "contexts" / context_id).exists()
            assert context_id not in open_contexts(server)
            assert client.get(f"contexts/{context_id}").status_code == 404
        log = server.log()
    assert "could not record" not in log, log
    assert "Traceback" not in log, log


async def _delete_while_hammering(server: JupyterServer, context_id: str) -> dict[str, list[int]]:
    statuses: dict[str, list[int]] = {"DELETE": [], "send": [], "tools": []}
    done = asyncio.Event()
    async with httpx.AsyncClient(
        base_url=server.api("/"), headers=server.auth, timeout=30
    ) as client:

        async def send() -> None:
            while not done.is_set():
                response = await client.post(
                    f"contexts/{context_id}/messages", json={"text": "hi", "branch": "free"}
                )
                statuses["send"].append(response.status_code)

        async def tools() -> None:
            while not done.is_set():
                response = await client.get(f"contexts/{context_id}/tools")
                statuses["tools"].append(response.status_code)

        async def delete() -> None:
            await asyncio.sleep(0.1)
            response = await client.delete(f"contexts/{context_id}")
            statuses["DELETE"].append(response.status_code)
            done.set()

        await asyncio.gather(delete(), send(), send(), tools(), tools())
    return statuses


def test_a_delete_ends_a_stream_and_refuses_new_ones(tmp_path: Path) -> None:
    with JupyterServer(tmp_path) as server, _client(server) as client:
        slow = {"reply": "w " * 100, "chunks": "words", "delay": 0.05}
        context_id = create_context(client, [slow])
        url = f"contexts/{context_id}/events"

        def delete() -> None:
            assert client.delete(f"contexts/{context_id}").status_code == 204

        started = client.post(f"contexts/{context_id}/messages", json={"text": "go"})
        assert started.status_code == 202
        with pytest.raises(AssertionError, match="stream ended"):
            read_events(client, url, lambda e: False, started=delete, timeout=20)
        assert client.get(url, timeout=5).status_code == 404


def test_a_delete_another_process_refuses_leaves_the_servers_replies_and_streams(
    tmp_path: Path,
) -> None:
    # A kernel streams on main; the server generates its own reply on srv. A DELETE is
    # refused (409, the kernel writes): the server's reply must go on, the streams stay
    # open, and the context stays.
    with JupyterServer(tmp_path) as server, _client(server) as client:
        context_id = create_context(client, [{"hang": True}])
        assert client.post(f"contexts/{context_id}/branches", json={"name": "srv"}).is_success
        kernel_code = textwrap.dedent(
            f"""
            from cm_notebook.session import ContextSession
            from cm_notebook.testing import ScriptedProvider

            session = ContextSession.open(
                {context_id!r}, data_dir={str(server.data_dir)!r},
                provider=ScriptedProvider().hang(after_chunks=1, text="kernel"),
            )
            session.send("from the kernel", branch="main").result(120)
            """
        )
        kernel = subprocess.Popen([sys.executable, "-c", kernel_code])
        try:
            state = f"contexts/{context_id}"
            wait_for(lambda: "main" in client.get(state).json()["running"], 60)
            sent = client.post(f"{state}/messages", json={"text": "go", "branch": "srv"})
            assert sent.status_code == 202, sent.text
            wait_for(lambda: "srv" in client.get(state).json()["running"])

            def refused_delete_then_stop() -> None:
                refused = client.delete(state)
                assert refused.status_code == 409, refused.text
                assert "being written by a live process" in refused.json()["message"]
                assert "srv" in client.get(state).json()["running"]  # not cancelled
                assert client.post(f"{state}/stop", json={"branch": "srv"}).status_code == 202

            # The stream opened before the DELETE still carries the reply's end.
            events = read_events(
                client,
                f"{state}/events",
                lambda e: e.event == "MessageCompleted" and json.loads(e.data)["branch"] == "srv",
                started=refused_delete_then_stop,
            )
            assert json.loads(events[-1].data)["status"] == "interrupted"
            replies = client.get(f"{state}/messages?branch=srv").json()["messages"]
            assert replies[-1]["metadata"]["error"] == "cancelled by the user"
        finally:
            kernel.kill()
            kernel.wait(30)
        assert client.delete(f"contexts/{context_id}").status_code == 204  # now it may


def test_a_delete_being_refused_answers_no_other_request_gone(tmp_path: Path) -> None:
    # While a DELETE that ends refused (a kernel writes) is decided, the context is still
    # there: requests meanwhile (a reconnecting event source, a second DELETE) must not
    # be told it is gone (404), or a browser's stream would never reconnect.
    with JupyterServer(tmp_path) as server, _client(server) as client:
        context_id = create_context(client, [{"hang": True}])
        kernel_code = textwrap.dedent(
            f"""
            from cm_notebook.session import ContextSession
            from cm_notebook.testing import ScriptedProvider

            session = ContextSession.open(
                {context_id!r}, data_dir={str(server.data_dir)!r},
                provider=ScriptedProvider().hang(after_chunks=1, text="kernel"),
            )
            session.send("from the kernel", branch="main").result(120)
            """
        )
        kernel = subprocess.Popen([sys.executable, "-c", kernel_code])
        try:
            state = f"contexts/{context_id}"
            wait_for(lambda: "main" in client.get(state).json()["running"], 60)
            statuses = asyncio.run(_refused_deletes_among_requests(server, context_id))
        finally:
            kernel.kill()
            kernel.wait(30)
        assert set(statuses["DELETE"]) == {409}, statuses
        assert set(statuses["GET"]) == {200}, statuses
        assert set(statuses["events"]) == {200}, statuses
        assert client.get(state).status_code == 200


async def _refused_deletes_among_requests(
    server: JupyterServer, context_id: str
) -> dict[str, list[int]]:
    statuses: dict[str, list[int]] = {"DELETE": [], "GET": [], "events": []}
    done = asyncio.Event()
    url = f"contexts/{context_id}"
    async with httpx.AsyncClient(
        base_url=server.api("/"), headers=server.auth, timeout=30
    ) as client:

        async def delete() -> None:
            for _ in range(15):
                statuses["DELETE"].append((await client.delete(url)).status_code)
            done.set()

        async def get() -> None:
            while not done.is_set():
                statuses["GET"].append((await client.get(url)).status_code)

        async def events() -> None:
            while not done.is_set():
                async with client.stream("GET", f"{url}/events") as response:
                    statuses["events"].append(response.status_code)

        await asyncio.gather(delete(), delete(), get(), get(), events())
    return statuses


def test_a_reply_cut_by_stopping_the_server_says_so(tmp_path: Path) -> None:
    # A clean stop (SIGTERM) cuts the reply short: stored with why, not as the user's
    # doing (the text the model and the views read).
    with JupyterServer(tmp_path) as server, _client(server) as client:
        context_id = create_context(client, [{"hang": True}])
        sent = client.post(f"contexts/{context_id}/messages", json={"text": "go"})
        assert sent.status_code == 202, sent.text
        wait_for(lambda: "main" in client.get(f"contexts/{context_id}").json()["running"])
        server.stop()
    with JupyterServer(tmp_path) as again, _client(again) as client:
        reply = client.get(f"contexts/{context_id}/messages").json()["messages"][-1]
    assert reply["status"] == "interrupted"
    assert reply["metadata"]["error"] == "the Jupyter server stopped"


# -- closing idle sessions -------------------------------------------------------------


def _weather_script() -> list[dict[str, object]]:
    return [
        {"tool_call": "get_weather", "arguments": {"city": "Paris"}, "id": "w1"},
        {"reply": "Sunny in Paris."},
        {"tool_call": "get_weather", "arguments": {"city": "Lyon"}, "id": "w2"},
        {"reply": "Sunny in Lyon."},
    ]


def _idle(event: ServerSentEvent) -> bool:
    return event.event == "StateChanged" and json.loads(event.data)["new"] == "Idle"


def test_idle_sessions_are_closed_and_reopen_with_nothing_lost(tmp_path: Path) -> None:
    options = ["--CMNotebookApp.max_sessions=2", "--CMNotebookApp.session_idle_timeout=2"]
    with JupyterServer(tmp_path, extra=options) as server, _client(server) as client:
        context_id = create_context(client, _weather_script())
        url = f"contexts/{context_id}/events"
        asked = read_events(
            client,
            url,
            lambda e: e.event == "ToolApprovalRequested",
            started=lambda: client.post(url.replace("events", "messages"), json={"text": "1"}),
        )
        approved = client.post(f"contexts/{context_id}/tools/approve", json={"remember": "session"})
        assert approved.status_code == 200, approved.text
        read_events(client, url, _idle, headers={"Last-Event-ID": asked[-1].id})
        assert context_id in open_contexts(server)

        # More contexts than max_sessions: the least recently used idle one is closed.
        others = [create_context(client, []) for _ in range(3)]
        wait_for(lambda: context_id not in open_contexts(server), timeout=10)
        wait_for(lambda: len(open_contexts(server)) <= 2, timeout=10)  # closed in the background

        # It reopens on its next request, with its messages and its session's allowance:
        # the second weather call runs without asking. (A reopened scripted provider
        # plays its script from the start again.)
        page = client.get(f"contexts/{context_id}/messages").json()
        assert [m["content"] for m in page["messages"]][-1] == "Sunny in Paris."
        events = read_events(
            client,
            url,
            _idle,
            started=lambda: client.post(url.replace("events", "messages"), json={"text": "2"}),
        )
        assert "ToolApprovalRequested" not in [e.event for e in events]
        page = client.get(f"contexts/{context_id}/messages").json()
        replies = [m["content"] for m in page["messages"] if m["role"] == "assistant"]
        assert replies.count("Sunny in Paris.") == 2, page

        # Idle for session_idle_timeout: every session is closed, none is lost.
        wait_for(lambda: not open_contexts(server), timeout=15)
        # Listing the contexts reads every one of them, and keeps none open.
        listed = client.get("contexts").json()["contexts"]
        assert {c["id"] for c in listed} == {context_id, *others}
        assert not open_contexts(server)
        for other in [context_id, *others]:
            assert client.get(f"contexts/{other}").status_code == 200
        log = server.log()
    assert "Traceback" not in log, log


def test_a_busy_session_is_never_closed(tmp_path: Path) -> None:
    options = ["--CMNotebookApp.max_sessions=1", "--CMNotebookApp.session_idle_timeout=0.2"]
    with JupyterServer(tmp_path, extra=options) as server, _client(server) as client:
        words = " ".join(f"w{n}" for n in range(80))  # 4 s of reply
        streaming = create_context(client, [{"reply": words, "chunks": "words", "delay": 0.05}])
        waiting = create_context(client, _weather_script())
        url = f"contexts/{waiting}/events"
        read_events(
            client,
            url,
            lambda e: e.event == "ToolApprovalRequested",
            started=lambda: client.post(url.replace("events", "messages"), json={"text": "?"}),
        )
        sent = client.post(f"contexts/{streaming}/messages", json={"text": "go"})
        assert sent.status_code == 202
        # Over the limit and past the idle timeout while one replies and one waits.
        for _ in range(3):
            create_context(client, [])
        time.sleep(1.0)
        assert {streaming, waiting} <= open_contexts(server)

        def replied() -> bool:
            page = client.get(f"contexts/{streaming}/messages", params={"limit": 1}).json()
            return bool(page["messages"][-1]["status"] == "complete")

        wait_for(replied, timeout=20)
        last = client.get(f"contexts/{streaming}/messages", params={"limit": 1}).json()
        assert last["messages"][-1]["content"] == words
        approved = client.post(f"contexts/{waiting}/tools/approve", json={})
        assert approved.status_code == 200, approved.text
        assert [c["id"] for c in approved.json()["tool_calls"]] == ["w1"]
        log = server.log()
    assert "Traceback" not in log, log
