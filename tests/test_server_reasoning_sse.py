"""A thinking model's reasoning over SSE, as it streams: a real Jupyter server in a child
process, real HTTP, the scripted provider scripted through its JSON options."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from httpx_sse import ServerSentEvent
from jupyter_server_proc import JupyterServer
from server_client import create_context, read_events

THOUGHT = "".join(f"step{i} " for i in range(40))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    with JupyterServer(tmp_path_factory.mktemp("jupyter-reasoning")) as running:
        yield running
    assert "Traceback" not in running.log(), running.log()


@pytest.fixture
def client(server: JupyterServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as http:
        yield http


def _joined(events: list[ServerSentEvent], kind: str) -> str:
    # The text a client rebuilds from ``delta`` at each ``offset`` (each must continue).
    text = ""
    for event in events:
        if event.event == kind:
            data = json.loads(event.data)
            assert data["type"] == kind
            assert data["offset"] == len(text), "a delta that does not continue the text"
            assert data["delta"] == data["text"]
            text += data["delta"]
    return text


def test_the_reasoning_streams_as_its_own_event_kind_before_the_text(
    client: httpx.Client,
) -> None:
    context_id = create_context(
        client,
        [{"reply": "It is 4.", "reasoning": THOUGHT, "chunks": "words", "delay": 0.01}],
    )
    events = read_events(
        client,
        f"contexts/{context_id}/events",
        lambda e: e.event == "MessageCompleted",
        started=lambda: client.post(f"contexts/{context_id}/messages", json={"text": "2+2?"}),
    )
    kinds = [e.event for e in events]
    assert "ReasoningDelta" in kinds
    # All of the reasoning, then the answer: never mixed into the text.
    assert kinds.index("ContentDelta") > max(
        i for i, kind in enumerate(kinds) if kind == "ReasoningDelta"
    )
    assert _joined(events, "ReasoningDelta") == THOUGHT
    assert _joined(events, "ContentDelta") == "It is 4."
    completed = json.loads(events[-1].data)
    message = client.get(f"contexts/{context_id}/messages/{completed['message_id']}").json()
    assert message["content"] == "It is 4."
    assert message["metadata"]["reasoning"] == THOUGHT


def test_a_model_still_thinking_is_seen_thinking_and_a_late_client_replays_it(
    client: httpx.Client,
) -> None:
    context_id = create_context(
        client, [{"hang": True, "reasoning": "Weighing every option slowly."}]
    )
    url = f"contexts/{context_id}/events"
    events = read_events(
        client,
        url,
        lambda e: e.event == "ReasoningDelta" and json.loads(e.data)["text"].endswith("slowly."),
        started=lambda: client.post(f"contexts/{context_id}/messages", json={"text": "Hard?"}),
    )
    # Seen while the model still thinks: no text yet, the reply not finished.
    assert _joined(events, "ReasoningDelta") == "Weighing every option slowly."
    assert "ContentDelta" not in [e.event for e in events]
    assert "MessageCompleted" not in [e.event for e in events]
    # Read while the model still thinks (no checkpoint yet: nothing else streamed), the
    # reply holds the reasoning so far, as a client following the stream needs it.
    message_id = json.loads(events[-1].data)["message_id"]
    read = client.get(f"contexts/{context_id}/messages/{message_id}").json()
    assert read["status"] == "streaming"
    assert read["metadata"]["reasoning"] == "Weighing every option slowly."
    # A client connecting later replays it from the start of the stream.
    again = read_events(
        client,
        url,
        lambda e: e.event == "ReasoningDelta" and json.loads(e.data)["text"].endswith("slowly."),
        headers={"Last-Event-ID": "0"},
    )
    assert _joined(again, "ReasoningDelta") == "Weighing every option slowly."
    stopped = client.post(f"contexts/{context_id}/stop", json={})
    assert stopped.status_code == 202, stopped.text


def test_the_events_stream_documents_the_reasoning_kind(client: httpx.Client) -> None:
    document = client.get("openapi.json").json()
    schemas = document["components"]["schemas"]
    assert schemas["ReasoningDelta"]["properties"]["type"]["const"] == "ReasoningDelta"
    described = json.dumps(document["paths"])
    assert "ReasoningDelta" in described
