"""What a REST client is told, and may choose: errors worded for HTTP, contexts removed
on disk, control characters in queries, providers' endpoints and model files.

A real Jupyter server in a child process, as in ``test_server_api.py``.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from jupyter_server_proc import BASE_URL, JupyterServer
from server_client import create_context, read_events, wait_for

API = f"{BASE_URL}cm/api"
#: A Python call in an error's text: the remedy of a notebook, not of an HTTP client.
PYTHON_CALL = re.compile(r"\w\((\.\.\.)?\)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    # Idle sessions close after a second: the sweeper looks every half second.
    root = tmp_path_factory.mktemp("jupyter")
    with JupyterServer(root, extra=["--CMNotebookApp.session_idle_timeout=1"]) as running:
        yield running
    assert "Traceback" not in running.log(), running.log()


@pytest.fixture
def client(server: JupyterServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=30) as http:
        yield http


def _error(response: httpx.Response, status: int, server: JupyterServer) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    message: str = response.json()["message"]
    assert str(server.root) not in message, message  # no path of the server's machine
    assert not PYTHON_CALL.search(message), message  # no remedy a client cannot follow
    return message


# -- errors worded for HTTP ----------------------------------------------------------------


def test_errors_name_the_http_request_that_helps_and_no_server_path(
    server: JupyterServer, client: httpx.Client
) -> None:
    unknown = _error(client.get("contexts/c0nothere"), 404, server)
    assert f"GET {API}/contexts lists" in unknown

    context_id = create_context(client, [{"hang": True}])
    here = f"{API}/contexts/{context_id}"
    assert client.post(f"contexts/{context_id}/messages", json={"text": "go"}).status_code == 202
    busy = _error(client.post(f"contexts/{context_id}/messages", json={"text": "x"}), 409, server)
    assert f"POST {here}/stop" in busy
    assert client.post(f"contexts/{context_id}/stop", json={}).status_code == 202

    exists = _error(
        client.post(f"contexts/{context_id}/branches", json={"name": "main"}), 409, server
    )
    assert "pick another name" in exists
    wait_for(lambda: client.get(f"contexts/{context_id}").json()["state"] == "Idle")
    messages = client.get(f"contexts/{context_id}/messages").json()["messages"]
    reply = [m["id"] for m in messages if m["role"] == "assistant"][-1]
    edit = client.post(f"contexts/{context_id}/messages/{reply}/edit", json={"text": "x"})
    assert f"(POST {here}/regenerate for a new reply)" in _error(edit, 400, server)
    active = _error(client.delete(f"contexts/{context_id}/branches/main"), 409, server)
    assert (
        f'switch to another one first (PUT {here}/branches/{{name}} with {{"active": true}})'
        in active
    )
    hostile = _error(client.get(f"contexts/{context_id}/messages/..%2F.."), 400, server)
    assert f"GET {here}/messages lists" in hostile

    nowhere = _error(client.get("no/such/path"), 404, server)
    assert f"see {API}/openapi.json" in nowhere  # under the server's base URL
    # A wrong method: which ones the path takes, in the message and the Allow header.
    wrong = client.put(f"contexts/{context_id}", json={})
    assert "GET, HEAD, DELETE, PATCH" in _error(wrong, 405, server)
    assert wrong.headers["Allow"].split(", ")[:4] == ["GET", "HEAD", "DELETE", "PATCH"]
    assert client.get(f"contexts/{context_id}/stop").headers["Allow"].startswith("POST")

    metadata = server.data_dir / "contexts" / context_id / "metadata.json"
    metadata.write_text("{garbage")
    damaged = _error(client.get(f"contexts/{context_id}"), 500, server)
    assert f"contexts/{context_id}/metadata.json is not valid JSON" in damaged
    assert f"DELETE {here} removes the whole context" in damaged
    assert str(metadata) in server.log()  # the administrator still learns where it is
    assert client.delete(f"contexts/{context_id}").status_code == 204


def test_the_stop_a_busy_branch_is_told_of_stops_that_branch_and_no_other(
    server: JupyterServer, client: httpx.Client
) -> None:
    # A reply streams on the active branch and one on another: what a request refused on
    # the other branch says to do must stop that branch's reply, not the active one's.
    context_id = create_context(client, [{"hang": True}, {"hang": True}])
    url = f"contexts/{context_id}"
    assert client.post(f"{url}/branches", json={"name": "b1"}).status_code == 201
    assert client.post(f"{url}/messages", json={"text": "on main"}).status_code == 202
    sent = client.post(f"{url}/messages", json={"text": "on b1", "branch": "b1"})
    assert sent.status_code == 202, sent.text
    wait_for(lambda: set(client.get(url).json()["running"]) == {"main", "b1"})
    refusals = [
        client.post(f"{url}/messages", json={"text": "again", "branch": "b1"}),
        client.post(f"{url}/regenerate", json={"branch": "b1"}),
        client.put(f"{url}/branches/b1", json={"system": "Be brief."}),
        client.delete(f"{url}/branches/b1"),
    ]
    stop = f"POST {API}/contexts/{context_id}/stop"
    for refused in refusals:
        message = _error(refused, 409, server)
        assert stop in message, message
        assert 'stop and {"branch": "b1"}' in message or 'stop with {"branch": "b1"}' in message
    # Doing as told (the body the message names) stops b1's reply; main's goes on.
    said = _error(refusals[0], 409, server)
    body = json.loads(said[said.index(stop) + len(stop) :].removeprefix(" and "))
    stopped = client.post(f"{url}/stop", json=body)
    assert stopped.status_code == 202, stopped.text
    assert stopped.json()["branch"] == "b1"
    wait_for(lambda: list(client.get(url).json()["running"]) == ["main"])
    assert client.post(f"{url}/stop", json={}).json()["branch"] == "main"


def test_error_signals_are_worded_for_a_client_too(
    server: JupyterServer, client: httpx.Client
) -> None:
    # The package's own error text (here a provider's) may name the server's paths and
    # Python remedies; on the events stream it is worded as HTTP errors are.
    secret_place = server.data_dir / "contexts" / "somewhere" / "file.json"
    message = f"failed reading {secret_place}; await it, or call turn.cancel()"
    context_id = create_context(client, [{"error": "permanent", "message": message}])
    events = read_events(
        client,
        f"contexts/{context_id}/events?since=0",
        lambda event: event.event == "Error",
        started=lambda: client.post(f"contexts/{context_id}/messages", json={"text": "go"}),
    )
    shown = json.loads(events[-1].data)["message"]
    assert str(server.root) not in shown
    assert "contexts/somewhere/file.json" in shown
    assert f"POST {API}/contexts/{context_id}/stop" in shown


def test_a_huge_value_is_not_echoed_back_whole(server: JupyterServer, client: httpx.Client) -> None:
    # An error quoting what the client sent (an unknown tool call id, a provider spec)
    # must not send a megabyte back, nor write it to the server's log.
    context_id = create_context(client, [{"reply": "hi"}])
    huge = "x" * 1_000_000
    before = len(server.log())
    for response in (
        client.post(f"contexts/{context_id}/tools/approve", json={"tool_call_id": huge}),
        client.post("contexts", json={"provider": huge}),
    ):
        assert 400 <= response.status_code < 500, response.status_code
        assert len(response.content) < 2_000
        assert "x" * 300 not in response.text
    assert len(server.log()) - before < 20_000


# -- a context removed on disk -------------------------------------------------------------


def test_a_context_removed_on_disk_ends_its_streams_and_closes_its_session(
    server: JupyterServer, client: httpx.Client
) -> None:
    context_id = create_context(client, [{"reply": "hello"}])
    folder = server.data_dir / "contexts" / context_id
    # Nothing asks for the context after its folder goes: its stream must end by itself,
    # rather than send heartbeats for ever.
    with pytest.raises(AssertionError, match="the stream ended"):
        read_events(
            client,
            f"contexts/{context_id}/events",
            lambda event: False,
            started=lambda: shutil.rmtree(folder),
            timeout=20,
        )
    assert context_id not in client.get("contexts").text
    _error(client.get(f"contexts/{context_id}"), 404, server)


def test_a_request_that_finds_the_context_removed_ends_its_streams_at_once(
    tmp_path: Path,
) -> None:
    # A server with the default idle timeout, whose sweeper looks only every 5 s: the
    # stream must end well before, because a request found the folder gone.
    with (
        JupyterServer(tmp_path) as running,
        httpx.Client(base_url=running.api("/"), headers=running.auth, timeout=30) as http,
    ):
        context_id = create_context(http, [{"reply": "hello"}])
        folder = running.data_dir / "contexts" / context_id

        def remove_then_ask() -> None:
            shutil.rmtree(folder)
            sent = http.post(f"contexts/{context_id}/messages", json={"text": "hi"})
            _error(sent, 404, running)

        with pytest.raises(AssertionError, match="the stream ended"):
            read_events(
                http,
                f"contexts/{context_id}/events",
                lambda event: False,
                started=remove_then_ask,
                timeout=4,
            )
    assert "could not record" not in running.log()
    assert "Traceback" not in running.log()


# -- queries -------------------------------------------------------------------------------


def test_a_url_that_is_not_utf8_is_refused_in_the_apis_own_words(
    server: JupyterServer, client: httpx.Client
) -> None:
    context_id = create_context(client, [{"reply": "hello"}])
    here = f"contexts/{context_id}"
    for path, named in [
        (f"{here}/branches/%FF", "branch name"),
        (f"{here}/branches/a%C3", "branch name"),
        (f"{here}/messages/%FF", "message id"),
        ("contexts/%FF", "context id"),
        (f"{here}/tools/%FF", "tool call id"),
        (f"{here}/messages?branch=%FF", "query parameter 'branch'"),
    ]:
        refused = client.get(path)
        message = _error(refused, 400, server)
        assert f"the {named}" in message, message
        assert "not valid UTF-8" in message, message
        assert "percent-encode" in message, message
        assert refused.json()["reason"] in {"InvalidIdError", "ValidationError"}
    changed = client.put(f"{here}/branches/%FF", json={"active": True})
    assert changed.json()["reason"] == "InvalidIdError"
    assert client.get(f"{here}/branches/%C3%A9").status_code == 404  # valid: "é", unknown


def test_a_control_character_in_a_query_is_refused_as_what_it_is(
    server: JupyterServer, client: httpx.Client
) -> None:
    context_id = create_context(client, [{"reply": "hello"}])
    client.post(f"contexts/{context_id}/branches", json={"name": "b"})
    for query in ("branch=ma%00in", "branch=main&branch=b%01"):
        message = _error(client.get(f"contexts/{context_id}/compare?{query}"), 400, server)
        assert "is not allowed" in message
        assert "white space" not in message
    message = _error(client.get(f"contexts/{context_id}/messages?branch=ma%00in"), 400, server)
    assert "'\\x00' is not allowed" in message
    # A backslash in the id is quoted in the wording, never read as a pattern's escape.
    odd = _error(client.get("contexts/c%5Ce%C2%93/compare?branch=main"), 400, server)
    assert "is not a valid context id" in odd or "context id" in odd
    both = client.get(f"contexts/{context_id}/compare?branch=main&branch=b")
    assert [row["branch"] for row in both.json()["results"]] == ["main", "b"]


# -- what a client may choose about providers ----------------------------------------------


@pytest.mark.parametrize(
    ("provider", "options", "named"),
    [
        ("openai:gpt-4o-mini", {"base_url": "http://attacker.example/v1"}, "base_url"),
        ("local", {"model_path": "/etc/passwd"}, "model_path"),
        ("local:/etc/passwd", {}, "model file"),
    ],
)
def test_a_client_cannot_choose_where_a_provider_connects_or_which_file_it_reads(
    server: JupyterServer, client: httpx.Client, provider: str, options: dict[str, str], named: str
) -> None:
    before = client.get("contexts").json()["contexts"]
    body = {"provider": provider, "provider_options": options}
    message = _error(client.post("contexts", json=body), 400, server)
    assert named in message
    assert "client_endpoints=True" in message
    assert client.get("contexts").json()["contexts"] == before  # nothing created
    context_id = create_context(client, [])
    fork = {"name": "elsewhere", "provider": provider}
    if provider.startswith("local:"):
        _error(client.post(f"contexts/{context_id}/branches", json=fork), 400, server)
    # The bundled model may be named: it is no file of the client's choosing.
    assert client.post("contexts", json={"provider": "local:smollm2"}).status_code == 201


def test_a_server_whose_clients_are_trusted_lets_them_choose(tmp_path: Path) -> None:
    with (
        JupyterServer(tmp_path, extra=["--CMNotebookApp.client_endpoints=True"]) as running,
        httpx.Client(base_url=running.api("/"), headers=running.auth, timeout=30) as http,
    ):
        body = {"provider": "openai:m", "provider_options": {"base_url": "http://127.0.0.1:9/v1"}}
        assert http.post("contexts", json=body).status_code == 201
        model = tmp_path / "model.gguf"
        model.write_bytes(b"GGUF" + bytes(60))  # a file the server has, named by the client
        created = http.post("contexts", json={"provider": f"local:{model}"})
        assert created.status_code == 201, created.text
        # One that is not there is refused as any spec every send would fail with.
        missing = http.post("contexts", json={"provider": "local:/no/such/model.gguf"})
        assert missing.status_code == 400
        assert "does not exist" in missing.json()["message"]


def test_a_lock_timeout_is_worded_as_something_to_try_again(tmp_path: Path) -> None:
    # The store's own text names FileStore(lock_timeout=...), a knob a client has not.
    import fcntl
    import os

    import anyio

    from cm_notebook.errors import StoreLockTimeoutError
    from cm_notebook.model import ContextMetadata
    from cm_notebook.server.wording import for_http
    from cm_notebook.store import FileStore

    async def timed_out() -> str:
        async with FileStore(tmp_path, lock_timeout=0.2) as store:
            await store.create_context(ContextMetadata(id="c1"))
            held = os.open(tmp_path / "contexts" / "c1" / ".lock", os.O_RDWR | os.O_CREAT)
            try:
                fcntl.flock(held, fcntl.LOCK_EX)
                with pytest.raises(StoreLockTimeoutError) as info:
                    await store.update_metadata("c1", title="t")
            finally:
                os.close(held)
            return str(info.value)

    message = for_http(anyio.run(timed_out), data_dir=tmp_path, api=API, context_id="c1")
    assert message.endswith("is writing to it. Try again.")
    assert "FileStore" not in message
    assert str(tmp_path) not in message
