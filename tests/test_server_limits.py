"""What the API refuses, end to end: oversized prompts, tags and branch descriptions,
unprintable titles, booleans that are not booleans, unknown branches and malformed
``Last-Event-ID``s.

A real Jupyter server in a child process, real HTTP; every refusal is a 400 or 404
with a JSON body that says what was wrong, and changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from jupyter_server_proc import JupyterServer
from server_client import create_context

from cm_notebook.params import MAX_MESSAGE_CHARS
from cm_notebook.server.bodies import MAX_DESCRIPTION_CHARS


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    with JupyterServer(tmp_path_factory.mktemp("jupyter")) as running:
        yield running
    # Every refusal was an answer, not a crash.
    assert "Traceback" not in running.log(), running.log()


@pytest.fixture
def client(server: JupyterServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.api("/"), headers=server.auth, timeout=60) as http:
        yield http


def _refused(response: httpx.Response, status: int, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.text[:300])
    message: str = response.json()["message"]
    for word in words:
        assert word in message, message
    return message


def test_a_system_prompt_is_no_longer_than_a_message(client: httpx.Client) -> None:
    too_long = "s" * (MAX_MESSAGE_CHARS + 1)
    _refused(
        client.post("contexts", json={"provider": "scripted", "system": too_long}),
        400,
        "system",
        "2000000",
    )
    context_id = create_context(client, [], system="Be brief.")
    _refused(
        client.post(f"contexts/{context_id}/branches", json={"name": "long", "system": too_long}),
        400,
        "system",
    )
    _refused(
        client.put(f"contexts/{context_id}/branches/main", json={"system": too_long}), 400, "system"
    )
    detail = client.get(f"contexts/{context_id}").json()["context"]
    assert list(detail["branches"]) == ["main"]
    assert detail["branches"]["main"].get("system_prompt") is None
    assert detail["system_prompt"] == "Be brief."


def test_tags_are_bounded_in_number_and_length(client: httpx.Client) -> None:
    _refused(client.post("contexts", json={"tags": ["t"] * 51}), 400, "tags", "50")
    _refused(client.post("contexts", json={"tags": ["x" * 101]}), 400, "tags", "100")
    _refused(client.post("contexts", json={"tags": [""]}), 400, "tags")
    largest = [f"{n:03d}" + "x" * 97 for n in range(50)]
    context_id = create_context(client, [], tags=largest)
    assert client.get(f"contexts/{context_id}").json()["context"]["tags"] == largest


def test_a_branch_description_is_bounded(client: httpx.Client) -> None:
    context_id = create_context(client, [])
    too_long = "d" * (MAX_DESCRIPTION_CHARS + 1)
    _refused(
        client.post(
            f"contexts/{context_id}/branches", json={"name": "long", "description": too_long}
        ),
        400,
        "description",
        str(MAX_DESCRIPTION_CHARS),
    )
    longest = "d" * MAX_DESCRIPTION_CHARS
    created = client.post(
        f"contexts/{context_id}/branches", json={"name": "full", "description": longest}
    )
    assert created.status_code == 201, created.text
    assert created.json()["description"] == longest
    branches = client.get(f"contexts/{context_id}/branches").json()["branches"]
    assert sorted(b["name"] for b in branches) == ["full", "main"]


@pytest.mark.parametrize("title", ["\u0000", "red\x1b[31m", "bell\u0007", "del\u007f"])
def test_a_title_with_control_characters_is_refused(client: httpx.Client, title: str) -> None:
    _refused(client.post("contexts", json={"title": title}), 400, "control characters")
    context_id = create_context(client, [], title="Capitals")
    _refused(
        client.patch(f"contexts/{context_id}", json={"title": title}), 400, "control characters"
    )
    assert client.get(f"contexts/{context_id}").json()["context"]["title"] == "Capitals"
    # Line breaks and tabs are only spacing: folded into spaces, as before.
    renamed = client.patch(f"contexts/{context_id}", json={"title": "Rivers\n\tof Europe"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["context"]["title"] == "Rivers of Europe"


@pytest.mark.parametrize("value", ["yes", "true", 1, "1"])
def test_booleans_must_be_json_booleans(client: httpx.Client, value: object) -> None:
    context_id = create_context(client, [])
    client.post(f"contexts/{context_id}/branches", json={"name": "other"}).raise_for_status()
    _refused(
        client.put(f"contexts/{context_id}/branches/other", json={"active": value}), 400, "active"
    )
    _refused(
        client.post(f"contexts/{context_id}/branches", json={"name": "b", "switch": value}),
        400,
        "switch",
    )
    branches = client.get(f"contexts/{context_id}/branches").json()
    assert branches["active"] == "main"
    assert sorted(b["name"] for b in branches["branches"]) == ["main", "other"]
    switched = client.put(f"contexts/{context_id}/branches/other", json={"active": True})
    assert switched.status_code == 200, switched.text
    assert client.get(f"contexts/{context_id}/branches").json()["active"] == "other"


def test_the_decisions_of_an_unknown_branch_are_404(client: httpx.Client) -> None:
    context_id = create_context(client, [])
    _refused(
        client.get(f"contexts/{context_id}/tools/decisions", params={"branch": "nope"}),
        404,
        "nope",
        "main",
    )
    _refused(client.get(f"contexts/{context_id}/tools/decisions", params={"branch": "../x"}), 400)
    known = client.get(f"contexts/{context_id}/tools/decisions", params={"branch": "main"})
    assert known.status_code == 200, known.text
    assert known.json() == {"decisions": []}


@pytest.mark.parametrize("raw", [b"\xb2", b"1\xb9", b"\xb3\xb3", b"12a"])
def test_a_last_event_id_that_is_not_ascii_digits_is_400(client: httpx.Client, raw: bytes) -> None:
    # Superscript digits are digits to str.isdigit(), not to int().
    context_id = create_context(client, [])
    _refused(
        client.get(f"contexts/{context_id}/events", headers={"Last-Event-ID": raw}),
        400,
        "Last-Event-ID",
    )


def test_a_utf8_last_event_id_is_echoed_as_sent(client: httpx.Client) -> None:
    # HTTP headers reach the server as Latin-1; the client wrote UTF-8.
    context_id = create_context(client, [])
    message = _refused(
        client.get(f"contexts/{context_id}/events", headers={"Last-Event-ID": "é42".encode()}),
        400,
        "'é42'",
    )
    assert "Ã" not in message


def test_params_that_name_the_request_own_arguments_are_400(client: httpx.Client) -> None:
    context_id = create_context(client, [])
    for name in ("metadata", "branch", "text"):
        _refused(
            client.post(
                f"contexts/{context_id}/messages",
                json={"text": "Hi", "params": {name: -1.5}},
            ),
            400,
            name,
            "not generation parameters",
        )
    assert client.get(f"contexts/{context_id}/messages").json()["messages"] == []


def test_a_tag_or_description_with_control_characters_is_refused(client: httpx.Client) -> None:
    _refused(client.post("contexts", json={"tags": ["red\x1b[31m"]}), 400, "control characters")
    context_id = create_context(client, [], title="Tagged")
    _refused(
        client.post(f"contexts/{context_id}/branches", json={"name": "b", "description": "\x00"}),
        400,
        "control characters",
    )
    branches = client.get(f"contexts/{context_id}/branches").json()["branches"]
    assert [b["name"] for b in branches] == ["main"]
    created = client.post(
        f"contexts/{context_id}/branches", json={"name": "c", "description": "one\n\ttwo"}
    )
    assert created.status_code == 201, created.text


def test_megabytes_of_parameters_or_provider_options_are_400(client: httpx.Client) -> None:
    from cm_notebook.params import MAX_PARAMETERS_CHARS, MAX_PROVIDER_OPTIONS_CHARS

    script = [{"reply": "y" * MAX_PROVIDER_OPTIONS_CHARS}]
    body = {"provider": "scripted", "provider_options": {"script": script}}
    _refused(client.post("contexts", json=body), 400, "provider_options take", "at most")
    context_id = create_context(client, [{"reply": "fine"}])
    stop = ["x" * MAX_PARAMETERS_CHARS]
    sent = client.post(
        f"contexts/{context_id}/messages", json={"text": "hi", "params": {"stop": stop}}
    )
    _refused(sent, 400, "generation parameters take")
    forked = client.post(
        f"contexts/{context_id}/branches", json={"name": "b", "params": {"stop": stop}}
    )
    _refused(forked, 400, "generation parameters take")
    assert client.get(f"contexts/{context_id}/messages").json()["messages"] == []
