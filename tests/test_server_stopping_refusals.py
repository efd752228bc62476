"""Once the server is stopping, requests that would open or use a session are refused
(503, ServerStopping): no session outlives the stop, and no stream opened late holds
the stop up.

A real Jupyter server stopped (SIGTERM) in the middle of a reply while clients keep
asking; the window itself is checked on the server's own session registry.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest
from jupyter_server_proc import JupyterServer
from server_client import create_context, wait_for

from cm_notebook.server.offloop import ServerStoppingError
from cm_notebook.server.sessions import SessionRegistry
from cm_notebook.session import ContextSession

#: A reply that streams for about ten seconds, one word at a time.
SLOW = {"reply": " ".join(f"w{i}" for i in range(200)), "chunks": "words", "delay": 0.05}


def test_a_stopping_registry_opens_no_session_and_takes_no_stream(tmp_path: Path) -> None:
    async def ask_while_stopping() -> tuple[float, list[str], list[str]]:
        registry = SessionRegistry(tmp_path, default_provider="scripted")
        kept = await registry.create(
            title=None, provider=None, provider_options={}, system=None, tags=[]
        )
        other = await registry.create(
            title=None, provider=None, provider_options={}, system=None, tags=[]
        )
        held = await registry.acquire(kept.id, stream=True)
        started = time.monotonic()
        stopping = asyncio.get_running_loop().create_task(registry.aclose(stream_grace=5))
        await asyncio.sleep(0.2)  # aclose() now waits for the held stream
        assert not stopping.done()
        refused: list[str] = []
        for context_id in (kept.id, other.id):
            for stream in (False, True):
                with pytest.raises(ServerStoppingError) as caught:
                    await registry.acquire(context_id, stream=stream)
                refused.append(str(caught.value))
        with pytest.raises(ServerStoppingError) as caught:
            await registry.create(
                title=None, provider=None, provider_options={}, system=None, tags=[]
            )
        refused.append(str(caught.value))
        held.release()  # the one stream that was open ends: the stop goes on at once
        await asyncio.wait_for(stopping, 20)
        return time.monotonic() - started, registry.open_sessions(), refused

    took, left_open, refused = asyncio.run(ask_while_stopping())
    assert left_open == []
    assert took < 2, took  # not the streams' full grace
    assert all("is stopping (shutting down)" in m and "retry" in m for m in refused), refused


def test_a_context_created_as_the_stop_begins_is_kept_and_its_session_closed(
    tmp_path: Path,
) -> None:
    async def create_while_stopping() -> tuple[str, list[str]]:
        registry = SessionRegistry(tmp_path, default_provider="scripted")
        creating = asyncio.get_running_loop().create_task(
            registry.create(title="late", provider=None, provider_options={}, system=None, tags=[])
        )
        await asyncio.sleep(0)  # its folder is being written off the loop
        assert not creating.done()
        await asyncio.wait_for(registry.aclose(), 20)
        with pytest.raises(ServerStoppingError) as caught:
            await creating
        return str(caught.value), registry.open_sessions()

    message, left_open = asyncio.run(create_while_stopping())
    assert left_open == []
    [folder] = (tmp_path / "contexts").iterdir()
    assert message.startswith(f"context {folder.name!r} was created, but ")
    # Stored whole: the restarted server (here, a notebook) opens it.
    reopened = ContextSession.open(folder.name, data_dir=tmp_path)
    try:
        assert reopened.title == "late"
    finally:
        reopened.close()


class Asker(threading.Thread):
    """Keeps making requests of a context until the server is gone."""

    def __init__(self, server: JupyterServer, context_id: str) -> None:
        super().__init__(daemon=True)
        self.base = server.api("/")
        self.headers = server.auth
        self.context_id = context_id
        self.answers: list[tuple[str, int, dict[str, object]]] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        # One kept-alive connection: requests on it reach a server that is stopping.
        try:
            with httpx.Client(base_url=self.base, headers=self.headers, timeout=20) as client:
                while True:
                    for method, path, body in (
                        ("GET", f"contexts/{self.context_id}", None),
                        ("GET", f"contexts/{self.context_id}/messages", None),
                        ("POST", "contexts", {"provider": "scripted"}),
                    ):
                        try:
                            response = client.request(method, path, json=body)
                        except httpx.TransportError:
                            return  # the server has gone
                        payload = response.json() if response.content else {}
                        self.answers.append((f"{method} {path}", response.status_code, payload))
        except BaseException as exc:  # reported by the test
            self.failure = exc


def test_requests_made_while_the_server_stops_are_answered_or_refused(tmp_path: Path) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, [SLOW])
        idle_id = create_context(client, [{"reply": "hi"}])
        sent = client.post(f"contexts/{context_id}/messages", json={"text": "go"})
        assert sent.status_code == 202, sent.text
        wait_for(lambda: client.get(f"contexts/{context_id}").json()["state"] == "Streaming")
        askers = [Asker(server, cid) for cid in (context_id, idle_id, context_id)]
        for asker in askers:
            asker.start()
        wait_for(lambda: all(len(a.answers) >= 3 for a in askers))
        started = time.monotonic()
        assert server.stop() == 0
        stopping = time.monotonic() - started
        for asker in askers:
            asker.join(30)
            assert not asker.is_alive(), "a request hung while the server stopped"
            assert asker.failure is None, asker.failure
        log = server.log()
    assert "Traceback" not in log, log
    assert "had not sent their last signals" not in log, log
    assert stopping < 15, stopping
    answers = [answer for asker in askers for answer in asker.answers]
    for what, status, payload in answers:
        assert status in (200, 201, 503), (what, status, payload)
        if status == 503:
            assert payload["reason"] == "ServerStopping", (what, payload)
            assert "shutting down" in str(payload["message"]), (what, payload)
