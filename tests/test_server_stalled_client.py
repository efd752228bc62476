"""A client that stopped reading its events stream (its TCP window full) does not keep a
deleted context's stream, and so its signal log's file, open on the server."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
from jupyter_server_proc import TOKEN, JupyterServer
from server_client import create_context


def _deleted_files_open(pid: int) -> list[str]:
    folder = f"/proc/{pid}/fd"
    names = []
    for fd in os.listdir(folder):
        try:
            target = os.readlink(f"{folder}/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.endswith("(deleted)"):
            names.append(target)
    return names


def test_deleting_a_context_ends_the_stream_of_a_client_that_stopped_reading(
    tmp_path: Path,
) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=60) as client,
    ):
        assert server.process is not None
        context_id = create_context(client, [])  # the scripted model echoes
        url = urlsplit(server.api(f"/contexts/{context_id}/events"))
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((url.hostname, url.port))
        stalled.sendall(
            f"GET {url.path}?since=0 HTTP/1.1\r\nHost: {url.hostname}\r\n"
            f"Authorization: token {TOKEN}\r\n\r\n".encode()
        )
        try:
            for _ in range(2):  # more than the client's window and socket buffers hold
                sent = client.post(f"contexts/{context_id}/messages", json={"text": "z " * 500_000})
                assert sent.status_code == 202, sent.text
                deadline = time.monotonic() + 60
                while client.get(f"contexts/{context_id}").json()["running"]:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
            assert client.get(f"contexts/{context_id}").json()["streams"] == 1
            assert client.delete(f"contexts/{context_id}").status_code == 204
            deadline = time.monotonic() + 10
            while _deleted_files_open(server.process.pid):
                assert time.monotonic() < deadline, _deleted_files_open(server.process.pid)
                time.sleep(0.1)
        finally:
            stalled.close()
        # The server goes on serving, and cut the connection without an error.
        assert client.get("contexts").status_code == 200
        assert "Traceback" not in server.log(), server.log()
