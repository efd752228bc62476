"""SSE over the durable signal log: ids survive a server restart."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from httpx_sse import ServerSentEvent
from jupyter_server_proc import JupyterServer
from server_client import create_context, read_events
from tool_writer import start_tool_writer


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


def test_a_tool_call_waiting_in_a_kernel_is_approved_over_http(tmp_path: Path) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, [])
        kernel: list[subprocess.Popen[bytes]] = []
        try:
            asked = read_events(
                client,
                f"contexts/{context_id}/events",
                lambda e: e.event == "ToolApprovalRequested",
                started=lambda: kernel.append(start_tool_writer(server.data_dir, context_id)),
            )
            call_id = json.loads(asked[-1].data)["tool_call_ids"][0]
            approved = client.post(
                f"contexts/{context_id}/tools/approve", json={"tool_call_id": call_id}
            )
            assert approved.status_code == 200, approved.text
            assert [c["name"] for c in approved.json()["tool_calls"]] == ["add"]
            out, _ = kernel[0].communicate(timeout=60)
            assert out.decode().strip() == "It is 3."
            again = client.post(
                f"contexts/{context_id}/tools/approve", json={"tool_call_id": call_id}
            )
            assert again.status_code == 409, again.text
        finally:
            for process in kernel:
                if process.poll() is None:
                    process.kill()
                    process.wait(30)


def test_a_reply_streaming_in_a_kernel_is_stopped_over_http(tmp_path: Path) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, [])
        nothing = client.post(f"contexts/{context_id}/stop", json={})
        assert nothing.status_code == 409, nothing.text
        code = textwrap.dedent(
            f"""
            from cm_notebook.session import ContextSession
            from cm_notebook.testing import ScriptedProvider

            provider = ScriptedProvider().hang(after_chunks=3, text="Once upon a time")
            session = ContextSession.open({context_id!r}, data_dir={str(server.data_dir)!r},
                                          provider=provider)
            print(session.send("Tell me a story").result(60).status.value, flush=True)
            session.close()
            """
        )
        kernel: list[subprocess.Popen[bytes]] = []
        texts: list[str] = []

        def all_three_chunks(event: ServerSentEvent) -> bool:
            # The chunks may come one delta each or merged: wait for their whole text.
            if event.event == "ContentDelta":
                texts.append(json.loads(event.data)["delta"])
            return "".join(texts) == "Once upon a time"

        try:
            streamed = read_events(
                client,
                f"contexts/{context_id}/events",
                all_three_chunks,
                started=lambda: kernel.append(
                    subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
                ),
            )
            stopped = client.post(f"contexts/{context_id}/stop", json={"branch": "main"})
            assert stopped.status_code == 202, stopped.text
            assert stopped.json()["branch"] == "main"
            turn_ids = {json.loads(e.data).get("turn_id") for e in streamed}
            assert stopped.json()["turn_id"] in turn_ids  # the kernel's turn
            # The stream shows the kernel's reply end as interrupted.
            since = streamed[-1].id
            ended = read_events(
                client,
                f"contexts/{context_id}/events?since={since}",
                lambda e: e.event == "MessageCompleted",
            )
            assert json.loads(ended[-1].data)["status"] == "interrupted"
            out, _ = kernel[0].communicate(timeout=60)
            assert out.decode().strip() == "interrupted"
        finally:
            for process in kernel:
                if process.poll() is None:
                    process.kill()
                    process.wait(30)


def test_without_file_notification_the_stream_polls_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CM_NOTEBOOK_FILE_EVENTS", "0")  # inherited by the server
    text = "polled word by word"
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, [{"reply": text, "chunks": "words"}])
        events = read_events(
            client,
            f"contexts/{context_id}/events",
            lambda e: e.event == "MessageCompleted",
            started=lambda: client.post(f"contexts/{context_id}/messages", json={"text": "go"}),
        )
    deltas = [json.loads(e.data)["delta"] for e in events if e.event == "ContentDelta"]
    assert "".join(deltas) == text
