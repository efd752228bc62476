"""Which server answered is recorded with each reply.

A spec naming another model of the session's provider is built with the session's
provider options, its base_url included: an arm ``openai:gpt-4o-mini`` of a session on
a local OpenAI-compatible server is answered by that server. The reply records it
(``metadata.endpoint``, on disk), and the comparison header, the records and the
message view name it beside the model; a reply from a provider's own API records none.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cm_notebook.errors import ProviderError
from cm_notebook.provenance import endpoint_of, provenance_of
from cm_notebook.providers.local import LocalServer, serve_openai_compatible
from cm_notebook.providers.openai import OpenAIProvider
from cm_notebook.render import message_html
from cm_notebook.retry import RetryPolicy
from cm_notebook.session import ContextSession
from cm_notebook.widgets._messages import stats_of

TIMEOUT = 300  # generous: replies on a busy two-core machine
GREEDY = {"max_tokens": 4, "temperature": 0}


@pytest.fixture(scope="module")
def llama_server() -> Iterator[LocalServer]:
    """llama.cpp's HTTP server with the bundled model (no key: a local server)."""
    pytest.importorskip("xllamacpp")
    _base_url, server = serve_openai_compatible(n_ctx=2048)
    with server:
        yield server


def stored(data_dir: Path, context_id: str, message_id: str) -> dict[str, Any]:
    """A message's metadata as it is on disk."""
    path = data_dir / "contexts" / context_id / "messages" / f"{message_id}.json"
    metadata: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))["metadata"]
    return metadata


@pytest.mark.local_model
@pytest.mark.usefixtures("no_provider_env")
def test_an_arm_of_another_model_records_the_server_that_answered(
    llama_server: LocalServer, data_dir: Path, closing: list[ContextSession]
) -> None:
    base_url = llama_server.base_url
    session = ContextSession.create(
        "Over HTTP",
        provider=f"openai:{llama_server.model}",
        provider_options={"base_url": base_url},
        data_dir=data_dir,
    )
    closing.append(session)
    both = session.fan_out(
        "Name a fruit. One word.", [{**GREEDY}, {"provider": "openai:gpt-4o-mini", **GREEDY}]
    ).result(TIMEOUT)
    for result in both.results:
        assert result.state == "complete"
        assert result.endpoint == base_url
    arm = both.results[1]
    assert arm.model == "gpt-4o-mini"  # what was asked for, and now where it was asked
    assert arm.message_id is not None
    metadata = stored(data_dir, session.id, arm.message_id)
    assert (metadata["model"], metadata["endpoint"]) == ("gpt-4o-mini", base_url)
    # Shown where the model is named: the comparison's header and text, the records,
    # the message view, the provenance of a cell's output.
    assert f"gpt-4o-mini via {base_url}" in both._repr_html_()
    assert f"gpt-4o-mini via {base_url}" in str(both)
    rows = {row["branch"]: row for row in session.to_records()}
    assert rows[arm.branch]["endpoint"] == base_url
    reply = session.history(arm.branch)[-1]
    assert f"gpt-4o-mini via {base_url}" in message_html(reply)
    assert provenance_of(reply)["endpoint"] == base_url
    assert stats_of(reply)["model"] == f"gpt-4o-mini via {base_url}"  # the widgets' label
    # A send naming another model goes there too, and says so.
    sent = session.send("Hello", provider="openai:gpt-4o", **GREEDY).result(TIMEOUT)
    assert (sent.metadata.model, sent.metadata.endpoint) == ("gpt-4o", base_url)
    assert stored(data_dir, session.id, sent.id)["endpoint"] == base_url


@pytest.mark.local_model
@pytest.mark.usefixtures("no_provider_env")
def test_a_base_url_with_credentials_is_recorded_without_them(
    llama_server: LocalServer, data_dir: Path, closing: list[ContextSession]
) -> None:
    # A provider object may carry credentials in its base_url (options that are stored
    # may not): the server it names is recorded, its credentials never are.
    password = "pw-9f3c2a7e1b"
    url = f"http://reader:{password}@127.0.0.1:{llama_server.port}/v1"
    provider = OpenAIProvider(llama_server.model, base_url=url, timeout=60.0)
    session = ContextSession.create("Signed", provider=provider, data_dir=data_dir)
    closing.append(session)
    reply = session.send("Hi", **GREEDY).result(TIMEOUT)
    assert reply.status.value == "complete"
    assert reply.metadata.endpoint == f"http://[REDACTED]@127.0.0.1:{llama_server.port}/v1"
    text = (data_dir / "contexts" / session.id / "messages" / f"{reply.id}.json").read_text()
    assert password not in text
    assert "reader" not in text
    assert f"127.0.0.1:{llama_server.port}/v1" in text
    # A signed query (an Azure-style ?sig=) is redacted alike.
    signed = OpenAIProvider("m", base_url="https://gw.example/v1?sig=s1g-4b7d2e9c0a&v=2")
    assert endpoint_of(signed) == "https://gw.example/v1?sig=[REDACTED]&v=2"


@pytest.mark.usefixtures("no_provider_env")
def test_a_reply_of_the_providers_own_endpoint_records_none(
    data_dir: Path, closing: list[ContextSession]
) -> None:
    # Files of replies without an endpoint stay as they were: no key at all.
    session = ContextSession.create("Scripted", provider="scripted", data_dir=data_dir)
    closing.append(session)
    reply = session.send("Hi").result(TIMEOUT)
    assert reply.metadata.endpoint is None
    assert "endpoint" not in stored(data_dir, session.id, reply.id)
    assert session.to_records()[0]["endpoint"] is None
    assert " via " not in message_html(reply)
    # OpenAI's own API (no base_url given, none in the environment) is no endpoint to name.
    assert endpoint_of(OpenAIProvider("gpt-4o-mini", api_key="not-a-real-key")) is None


def test_an_environment_base_url_is_an_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://gateway.internal:8000/v1")
    provider = OpenAIProvider("gpt-4o-mini", api_key="not-a-real-key")
    assert endpoint_of(provider) == "http://gateway.internal:8000/v1"
    anthropic = pytest.importorskip("cm_notebook.providers.anthropic")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://proxy.internal:9000")
    made = anthropic.AnthropicProvider("claude-haiku-4-5", api_key="not-a-real-key")
    assert endpoint_of(made) == "http://proxy.internal:9000"


#: A gateway key in the path: 32 hex digits, a base64-like run, an ``sk-`` key.
PATH_KEYS = [
    "0123456789abcdef0123456789abcdef",
    "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5",
    "sk-proj-a1b2c3d4e5f6g7h8i9j0k1l2",
]


@pytest.mark.usefixtures("no_provider_env")
@pytest.mark.parametrize("key", PATH_KEYS)
def test_a_key_in_the_base_url_path_is_never_written(
    key: str, data_dir: Path, closing: list[ContextSession]
) -> None:
    # A gateway that takes its key in the path: the reply (it fails: nothing listens
    # there) records the server, never the key, in its endpoint and its errors.
    url = f"http://127.0.0.1:9/gw/{key}/v1"
    provider = OpenAIProvider("gpt-4o-mini", base_url=url, api_key="not-a-real-key")
    session = ContextSession.create(
        "Gateway",
        provider=provider,
        data_dir=data_dir,
        retry=RetryPolicy(initial_delay=0.01, max_attempts=2, jitter=0.0),
    )
    closing.append(session)
    with pytest.raises(ProviderError):  # nothing listens there
        session.send("Hi").result(TIMEOUT)
    (reply,) = [m for m in session.history() if m.role == "assistant"]
    assert reply.metadata.failed_attempts  # an error of each try is written too
    assert reply.metadata.endpoint == "http://127.0.0.1:9/gw/[REDACTED]/v1"
    for file in data_dir.rglob("*"):
        if file.is_file():
            assert key not in file.read_text(errors="replace"), file


@pytest.mark.parametrize(
    ("url", "recorded"),
    [
        ("https://gw.example/v1", "https://gw.example/v1"),
        (
            "https://gw.example/openai/deployments/gpt-4o",
            "https://gw.example/openai/deployments/gpt-4o",
        ),
        ("https://gw.example/m/gpt-4o-2024-08-06/v1", "https://gw.example/m/gpt-4o-2024-08-06/v1"),
        ("http://localhost:8080/v1/", "http://localhost:8080/v1/"),
        *(
            (f"https://gw.example/{key}/v1", "https://gw.example/[REDACTED]/v1")
            for key in PATH_KEYS
        ),
        ("https://gw.example/key/hunter2hunter2/v1", "https://gw.example/key/[REDACTED]/v1"),
        (
            "https://gw.example/v1?api-version=2024-06-01&t=0123456789abcdef0123",
            "https://gw.example/v1?api-version=2024-06-01&t=[REDACTED]",
        ),
    ],
)
def test_the_recorded_endpoint_keeps_the_path_but_its_keys(url: str, recorded: str) -> None:
    provider = OpenAIProvider("m", base_url=url, api_key="not-a-real-key")
    assert endpoint_of(provider) == recorded


@pytest.mark.parametrize(
    "url",
    ["https://api.openai.com/v1", "https://api.openai.com/v1/", "HTTPS://API.OpenAI.com:443/v1"],
)
def test_the_providers_own_api_given_explicitly_records_none(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", url)
    assert endpoint_of(OpenAIProvider("gpt-4o-mini", api_key="not-a-real-key")) is None
    assert endpoint_of(OpenAIProvider("m", base_url=url, api_key="not-a-real-key")) is None
    anthropic = pytest.importorskip("cm_notebook.providers.anthropic")
    for own in ("https://api.anthropic.com", "https://API.anthropic.com/"):
        monkeypatch.setenv("ANTHROPIC_BASE_URL", own)
        made = anthropic.AnthropicProvider("claude-haiku-4-5", api_key="not-a-real-key")
        assert endpoint_of(made) is None


@pytest.mark.parametrize(
    "url",
    ["https://api.openai.com/v2", "https://api.openai.com:8443/v1", "http://api.openai.com/v1"],
)
def test_another_path_or_port_of_the_providers_host_is_recorded(url: str) -> None:
    assert endpoint_of(OpenAIProvider("m", base_url=url, api_key="not-a-real-key")) == url
