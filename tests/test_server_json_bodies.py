"""How the API reads JSON bodies: half of a surrogate pair is kept as U+FFFD, as the
Python API keeps it; JSON past the package's limits, and text that is not JSON, are
refused as before.

JavaScript's ``JSON.stringify`` writes half an emoji as ``"\\ud83d"``: valid JSON, a
string UTF-8 cannot hold. A real Jupyter server in a child process, real HTTP; each
body is sent as the exact bytes a browser would send.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from jupyter_server_proc import JupyterServer
from pydantic import ValidationError
from server_client import create_context, wait_for

from cm_notebook._json import MAX_DEPTH
from cm_notebook._unicode import REPLACEMENT
from cm_notebook.server.bodies import SendMessage


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    with JupyterServer(tmp_path_factory.mktemp("jupyter-json")) as running:
        yield running
    assert "Traceback" not in running.log(), running.log()


@pytest.fixture
def client(server: JupyterServer) -> Iterator[httpx.Client]:
    headers = {**server.auth, "Content-Type": "application/json"}
    with httpx.Client(base_url=server.api("/"), headers=headers, timeout=60) as http:
        yield http


def _send(client: httpx.Client, method: str, url: str, raw: str) -> httpx.Response:
    # The body as written, escapes and all: httpx's json= would write it itself.
    return client.request(method, url, content=raw.encode("ascii"))


def test_a_lone_half_of_a_surrogate_pair_is_kept_as_a_replacement_character(
    client: httpx.Client,
) -> None:
    created = _send(
        client,
        "POST",
        "contexts",
        '{"title": "Trip \\udc00", "system": "Be brief \\udc00", "provider": "scripted",'
        ' "provider_options": {"script": [{"reply": "Sure."}]}}',
    )
    assert created.status_code == 201, created.text
    context: dict[str, Any] = created.json()["context"]
    assert context["title"] == f"Trip {REPLACEMENT}"
    context_id = context["id"]

    sent = _send(
        client,
        "POST",
        f"contexts/{context_id}/messages",
        '{"text": "Tell me about \\ud83d please, and \\ud83d\\ude00"}',
    )
    assert sent.status_code == 202, sent.text
    wait_for(lambda: client.get(f"contexts/{context_id}").json()["running"] == {})
    asked, answered = client.get(f"contexts/{context_id}/messages").json()["messages"]
    assert asked["content"] == f"Tell me about {REPLACEMENT} please, and \U0001f600"
    assert answered["content"] == "Sure."
    assert answered["metadata"]["system_prompt"] == f"Be brief {REPLACEMENT}"

    renamed = _send(client, "PATCH", f"contexts/{context_id}", '{"title": "Rome \\ud83d"}')
    assert renamed.status_code == 200, renamed.text
    assert client.get(f"contexts/{context_id}").json()["context"]["title"] == f"Rome {REPLACEMENT}"


def test_a_body_past_the_depth_limit_is_refused_as_json_past_it(client: httpx.Client) -> None:
    context_id = create_context(client, [])
    deep = "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5)
    refused = _send(
        client, "POST", f"contexts/{context_id}/messages", f'{{"text": "hi", "params": {deep}}}'
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["message"] == (
        f"invalid request: body: Invalid JSON: nested deeper than {MAX_DEPTH} levels"
    )
    assert refused.json()["errors"][0]["type"] == "json_invalid"
    assert client.get(f"contexts/{context_id}/messages").json()["messages"] == []


@pytest.mark.parametrize(
    "raw",
    [
        "nope",
        '{"text": "unfinished',
        '{"text": "a\\ud83d',
        '{"text": "\\ud83x"}',
        '\ufeff{"text": "a byte order mark"}',
        '{"text": "a raw control character \x01"}',
    ],
)
def test_text_that_is_not_json_is_refused_in_the_same_words_as_ever(
    client: httpx.Client, raw: str
) -> None:
    context_id = create_context(client, [])
    refused = client.post(f"contexts/{context_id}/messages", content=raw.encode("utf-8"))
    assert refused.status_code == 400, refused.text
    with pytest.raises(ValidationError) as expected:
        SendMessage.model_validate_json(raw.encode("utf-8"))
    (error,) = expected.value.errors()
    assert refused.json()["message"] == f"invalid request: body: {error['msg']}"


@pytest.mark.parametrize("raw", ['["\\ud83d"]', '{"text": "x", "params": ["\\ud83d"]}'])
def test_a_body_of_the_wrong_shape_is_told_in_json_terms(client: httpx.Client, raw: str) -> None:
    context_id = create_context(client, [])
    refused = _send(client, "POST", f"contexts/{context_id}/messages", raw)
    assert refused.status_code == 400, refused.text
    assert "Input should be an object" in refused.json()["message"]
