"""SSE over the durable signal log: ids survive a server restart."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from jupyter_server_proc import JupyterServer
from server_client import create_context, read_events


def test_a_client_reconnecting_after_a_server_restart_misses_nothing(tmp_path: Path) -> None:
    text = " ".join(f"word{i}" for i in range(10))
    script = [{"reply": text, "chunks": "words"}, {"reply": "again"}]
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, script)
        url = f"contexts/{context_id}/events"
        before = read_events(
            client,
            url,
            lambda e: e.event == "MessageCompleted",
            started=lambda: client.post(f"contexts/{context_id}/messages", json={"text": "go"}),
        )
    first_delta = next(e for e in before if e.event == "ContentDelta")

    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        # The browser comes back with the id of the first delta it had read.
        after = read_events(
            client,
            f"contexts/{context_id}/events",
            lambda e: e.event == "MessageCompleted",
            headers={"Last-Event-ID": first_delta.id},
        )
        assert [e.event for e in after].count("Resync") == 0
        assert json.loads(after[-1].data)["status"] == "complete"
        expected = [e for e in before if int(e.id) > int(first_delta.id)]
        assert [(e.id, e.event, e.data) for e in after] == [
            (e.id, e.event, e.data) for e in expected
        ]
        # New signals go on from the old numbers.
        more = read_events(
            client,
            f"contexts/{context_id}/events",
            lambda e: e.event == "MessageCompleted",
            started=lambda: client.post(f"contexts/{context_id}/messages", json={"text": "more"}),
        )
        assert int(more[0].id) > int(before[-1].id)
        assert [int(e.id) for e in more] == sorted(int(e.id) for e in more)
