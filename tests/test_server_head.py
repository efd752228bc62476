"""HEAD on the API's read routes answers as GET does, without the body.

A real Jupyter server in a child process; HEAD and GET are made with real HTTP.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from jupyter_server_proc import BASE_URL, JupyterServer
from server_client import create_context, wait_for

API = f"{BASE_URL}cm/api"


def _same_but_the_body(head: httpx.Response, get: httpx.Response) -> None:
    assert head.status_code == get.status_code, (head.status_code, get.text)
    assert head.content == b""
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.headers["content-length"] == str(len(get.content))


def test_head_answers_every_read_route_as_get_without_the_body(tmp_path: Path) -> None:
    with (
        JupyterServer(tmp_path) as server,
        httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as client,
    ):
        context_id = create_context(client, [{"reply": "hi"}])
        sent = client.post(f"contexts/{context_id}/messages", json={"text": "hello"})
        assert sent.status_code == 202, sent.text
        wait_for(lambda: not client.get(f"contexts/{context_id}").json()["running"])
        messages = client.get(f"contexts/{context_id}/messages").json()["messages"]
        here = f"contexts/{context_id}"
        reads = [
            "contexts",
            here,
            f"{here}/messages",
            f"{here}/messages?limit=1",
            f"{here}/messages/{messages[0]['id']}",
            f"{here}/branches",
            f"{here}/branches/main",
            f"{here}/tools",
            f"{here}/tools/decisions",
            f"{here}/compare?branch=main&branch=main",
            "openapi.json",
            # Errors too: the status and headers of the error GET answers.
            "contexts/no-such-context",
            f"{here}/messages/no-such-message",
            f"{here}/messages?limit=0",
            "no/such/path",
        ]
        for path in reads:
            _same_but_the_body(client.head(path), client.get(path))

        # The events stream: its headers, then the end (a HEAD never streams).
        head = client.head(f"{here}/events", timeout=10)
        assert head.status_code == 200, head.text
        assert head.headers["content-type"].startswith("text/event-stream")
        assert head.content == b""
        assert client.head("contexts/no-such-context/events").status_code == 404
        assert client.head(f"{here}/events", headers={"Last-Event-ID": "x"}).status_code == 400

        # A route without GET takes no HEAD either, and says what it takes.
        stop = client.head(f"{here}/stop")
        assert stop.status_code == 405
        assert stop.headers["Allow"].split(", ")[0] == "POST"
        assert "HEAD" not in stop.headers["Allow"]
        # Where GET is allowed, HEAD is too.
        assert client.put(here, json={}).headers["Allow"].startswith("GET, HEAD, ")

        # Without the token: refused as GET is.
        assert httpx.head(server.api("/contexts"), timeout=30).status_code == 403

        # The OpenAPI document lists HEAD beside each GET, with GET's parameters.
        paths = client.get("openapi.json").json()["paths"]
        for template, item in paths.items():
            assert ("head" in item) == ("get" in item), template
            if "get" in item:
                assert item["head"]["parameters"] == item["get"]["parameters"], template
                assert set(item["head"]["responses"]) == set(item["get"]["responses"])
        log = server.log()
    assert "Traceback" not in log, log
