"""A reply read over REST while it streams, then followed on the events stream from the
context's number: the two join without a gap (the recovery docs/server.md describes)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from jupyter_server_proc import JupyterServer
from server_client import create_context, read_events

TEXT = " ".join(f"w{i}" for i in range(600))


def _joined(shown: str, events: list[Any], message_id: str) -> str:
    # What a client does: each delta lands at its offset; text it already has is skipped.
    for event in events:
        if event.event != "ContentDelta":
            continue
        delta = json.loads(event.data)
        if delta["message_id"] != message_id:
            continue
        offset, piece = delta["offset"], delta["delta"]
        if offset > len(shown):
            pytest.fail(f"text {len(shown)}..{offset} never arrived")
        assert shown[offset : offset + len(piece)] == piece[: len(shown) - offset]
        shown = shown[:offset] + piece if offset + len(piece) > len(shown) else shown
    return shown


@pytest.mark.parametrize("read", ["page", "message"])
def test_a_streaming_reply_read_then_followed_misses_no_text(tmp_path: Path, read: str) -> None:
    script = [{"reply": TEXT, "chunks": "words", "delay": 0.01}]
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, script)
        assert client.post(f"contexts/{context_id}/messages", json={"text": "go"}).is_success
        deadline = time.monotonic() + 30
        while client.get(f"contexts/{context_id}/messages").json()["messages"][-1]["role"] != (
            "assistant"
        ):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(1.3)  # past the first checkpoint, while the reply streams
        last_seq = client.get(f"contexts/{context_id}").json()["last_seq"]
        page = client.get(f"contexts/{context_id}/messages").json()["messages"]
        reply = page[-1]
        if read == "message":
            reply = client.get(f"contexts/{context_id}/messages/{reply['id']}").json()
        assert reply["status"] == "streaming"
        events = read_events(
            client,
            f"contexts/{context_id}/events?since={last_seq}",
            lambda e: e.event == "MessageCompleted",
        )
        assert _joined(reply["content"], events, reply["id"]) == TEXT
