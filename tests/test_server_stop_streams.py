"""A server that stops (SIGTERM) in the middle of a reply: its events streams send the
reply's last signals before they end, and the stop never waits long for them.

A real Jupyter server in a child process, real HTTP and SSE clients; the bound is
checked on the server's own session registry, with a stream that never lets go.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path

import httpx
from httpx_sse import ServerSentEvent, connect_sse
from jupyter_server_proc import JupyterServer
from server_client import create_context, wait_for

from cm_notebook.server.sessions import SessionRegistry

#: A reply that streams for about ten seconds, one word at a time.
SLOW = {"reply": " ".join(f"w{i}" for i in range(200)), "chunks": "words", "delay": 0.05}


class StreamReader(threading.Thread):
    """Reads a context's events stream to its end (the server ends it)."""

    def __init__(self, server: JupyterServer, context_id: str) -> None:
        super().__init__(daemon=True)
        self.url = server.api(f"/contexts/{context_id}/events")
        self.headers = server.auth
        self.events: list[ServerSentEvent] = []
        self.opened = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            with (
                httpx.Client(headers=self.headers, timeout=60) as client,
                connect_sse(client, "GET", self.url) as source,
            ):
                assert source.response.status_code == 200
                self.opened.set()
                self.events.extend(event for event in source.iter_sse() if event.data)
        except BaseException as exc:  # reported by the test
            self.failure = exc
            self.opened.set()


def test_a_stream_sends_the_last_signals_of_a_reply_the_stop_cut_short(tmp_path: Path) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, [SLOW])
        reader = StreamReader(server, context_id)
        reader.start()
        assert reader.opened.wait(30)
        sent = client.post(f"contexts/{context_id}/messages", json={"text": "go"})
        assert sent.status_code == 202, sent.text
        wait_for(lambda: sum(e.event == "ContentDelta" for e in reader.events) >= 10)
        started = time.monotonic()
        assert server.stop() == 0
        stopping = time.monotonic() - started
        reader.join(30)
        assert not reader.is_alive(), "the stream did not end with the server"
        assert reader.failure is None, reader.failure
        log = server.log()
    assert "Traceback" not in log, log
    assert stopping < 20, stopping
    # The client ends as the stored reply does: interrupted, the branch Idle.
    last = [(event.event, json.loads(event.data)) for event in reader.events[-2:]]
    assert last[0][0] == "MessageCompleted", reader.events[-3:]
    assert last[0][1]["status"] == "interrupted"
    assert last[1][0] == "StateChanged"
    assert last[1][1]["new"] == "Idle"
    streamed = "".join(
        json.loads(e.data)["delta"] for e in reader.events if e.event == "ContentDelta"
    )
    with (
        JupyterServer(tmp_path) as again,
        httpx.Client(base_url=again.api("/"), headers=again.auth, timeout=30) as client,
    ):
        reply = client.get(f"contexts/{context_id}/messages").json()["messages"][-1]
        last_seq = client.get(f"contexts/{context_id}").json()["last_seq"]
    assert reply["status"] == "interrupted"
    assert reply["content"] == streamed
    assert last_seq == int(reader.events[-1].id)  # nothing stored that the client missed


def test_a_stream_that_never_ends_does_not_hold_the_stop_up(tmp_path: Path) -> None:
    async def stop_with_a_stream_held() -> float:
        registry = SessionRegistry(tmp_path, default_provider="scripted")
        session = await registry.create(
            title=None, provider=None, provider_options={}, system=None, tags=[]
        )
        await registry.acquire(session.id, stream=True)  # never released
        started = time.monotonic()
        await asyncio.wait_for(registry.aclose(stream_grace=0.5), 20)
        return time.monotonic() - started

    assert asyncio.run(stop_with_a_stream_held()) < 5
