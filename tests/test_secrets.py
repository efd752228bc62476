"""Secrets never reach settings, stored metadata, exports, exception text or logs.

A secret is recognised by the name it is stored under, by its shape, and by its value
(equal to a key in the environment). Settings that would be written refuse it with an
error that never quotes it; everything else that leaves the process redacts it. Each
test looks for the secret in every file under the data dir, not only where it expects
it.
"""

from __future__ import annotations

import json
import logging
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from fault_server import FaultServer, Status

from cm_notebook.errors import (
    CMError,
    InvalidInputError,
    PermanentProviderError,
    TransientProviderError,
)
from cm_notebook.events import ErrorReported
from cm_notebook.export import export_context, import_document, parse_export, to_json, to_markdown
from cm_notebook.model import ContextMetadata, Message, MessageMetadata, ProviderSettings
from cm_notebook.providers.openai import OpenAIProvider
from cm_notebook.redact import REDACTED, find_secret, is_secret_name, redact, redact_text
from cm_notebook.retry import RetryPolicy
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider

# Not shaped like any known key format: found by the name it is stored under.
PLAIN = "plain0secret9value8xyz"
# Shaped like a key, and found by that shape.
SHAPED = "sk-ant-api03-abcdefghijklmnop0123456789"
FAST = RetryPolicy(initial_delay=0.01, multiplier=1.0, max_attempts=3, jitter=0.0)
DEADLINE = 10.0


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def files_holding(data_dir: Path, secret: str) -> list[Path]:
    """Every file under ``data_dir`` whose bytes contain ``secret``."""
    return [
        path
        for path in data_dir.rglob("*")
        if path.is_file() and secret.encode() in path.read_bytes()
    ]


def full_text(exc: BaseException) -> str:
    """What a notebook shows for ``exc``: the whole traceback, chained causes included."""
    return "".join(traceback.format_exception(exc))


@pytest.fixture
def session(data_dir: Path) -> Iterator[ContextSession]:
    made = ContextSession.create(provider=ScriptedProvider(), data_dir=data_dir, retry=FAST)
    yield made
    made.close()


# -- names ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "api_key",
        "apiKey",
        "X-Api-Key",
        "X-Auth-Token",
        "x-auth-token",
        "X-Api-Token",
        "Ocp-Apim-Subscription-Key",
        "Cookie",
        "Set-Cookie",
        "Authorization",
        "proxy-authorization",
        "key",
        "private_key",
        "credentials",
        "auth",
        "access_token",
        "client_secret",
        "password",
    ],
)
def test_credential_names_are_secret(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "max_tokens",
        "max_token",
        "max_completion_tokens",
        "top_k",
        "token_limit",
        "stop_token",
        "prompt_cache_key",
        "temperature",
        "base_url",
        "default_headers",
        "extra_headers",
    ],
)
def test_ordinary_parameter_names_are_not_secret(name: str) -> None:
    assert not is_secret_name(name)


# -- settings: refused, never echoed ------------------------------------------------------

SECRET_OPTIONS: list[dict[str, Any]] = [
    {"api_key": PLAIN},
    {"default_headers": {"X-Auth-Token": PLAIN}},
    {"default_headers": {"X-Api-Token": PLAIN}},
    {"default_headers": {"Ocp-Apim-Subscription-Key": PLAIN}},
    # Credentials as header names only: "Vault" or "Functions" qualify no parameter.
    {"default_headers": {"X-Vault-Token": PLAIN}},
    {"default_headers": [["X-Functions-Key", PLAIN]]},
    {"default_headers": {"Cookie": f"session={PLAIN}"}},
    {"default_headers": {"authorization": f"Token {PLAIN}"}},
    {"default_headers": [["X-Auth-Token", PLAIN]]},
    {"default_headers": [("Cookie", PLAIN)]},
    {"default_headers": {"X-Trace": [["nested", "ok"], ["Authorization", PLAIN]]}},
    {"key": PLAIN},
    {"private_key": PLAIN},
    {"credentials": {"user": "me", "value": PLAIN}},
    {"auth": ["me", PLAIN]},
    {"base_url": f"https://me:{PLAIN}@llm.example.com/v1"},
    {"base_url": f"https://llm.example.com/v1?api_key={PLAIN}"},
    {"base_url": f"https://llm.example.com/v1?model=x&key={PLAIN}"},
    {"default_headers": {"X-Custom": f"Bearer {PLAIN}"}},
    {"organization": SHAPED},
]


@pytest.mark.parametrize("options", SECRET_OPTIONS)
def test_provider_options_with_a_secret_are_refused_without_echo(
    data_dir: Path, options: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInputError, match="looks like a secret") as caught:
        ContextSession.create(
            provider=ScriptedProvider(), provider_options=options, data_dir=data_dir
        )
    for secret in (PLAIN, SHAPED):
        assert secret not in full_text(caught.value)
        assert files_holding(data_dir, secret) == []
    assert ContextSession.list(data_dir) == []


def test_a_value_equal_to_a_key_in_the_environment_is_refused(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_SERVICE_API_KEY", PLAIN)
    options = {"default_headers": {"X-Custom": PLAIN}}
    with pytest.raises(InvalidInputError, match="environment") as caught:
        ContextSession.create(
            provider=ScriptedProvider(), provider_options=options, data_dir=data_dir
        )
    assert PLAIN not in full_text(caught.value)
    assert files_holding(data_dir, PLAIN) == []


def test_pydantic_does_not_print_the_refused_settings() -> None:
    for build in (
        lambda: ProviderSettings(params={"api_key": PLAIN}),
        lambda: ContextMetadata.model_validate({"provider": {"params": {"key": PLAIN}}}),
    ):
        with pytest.raises(ValueError) as caught:
            build()
        assert PLAIN not in full_text(caught.value)
        assert "looks like a secret" in str(caught.value)


@pytest.mark.anyio
async def test_updating_the_stored_settings_refuses_a_secret(data_dir: Path) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        with pytest.raises(InvalidInputError) as caught:
            await store.update_metadata(
                "c1", provider_params={"default_headers": [["Cookie", PLAIN]]}
            )
    assert PLAIN not in full_text(caught.value)
    assert files_holding(data_dir, PLAIN) == []


def written_names(data_dir: Path) -> list[str]:
    # Files only: the session's follower makes the folders it watches (decisions/,
    # signals/) on its own thread, whenever it gets to it. Lock files are how readers
    # and writers take turns (the store opens a context under its lock), not data: they
    # hold nothing.
    return sorted(
        p.name for p in data_dir.rglob("*") if p.is_file() and not p.name.endswith(".lock")
    )


@pytest.mark.parametrize(
    "params",
    [
        {"extra_headers": {"X-Auth-Token": PLAIN}},
        {"extra_headers": {"X-Vault-Token": PLAIN}},
        {"headers": {"Authorization": f"Bearer {PLAIN}"}},
        {"headers": [["Ocp-Apim-Subscription-Key", PLAIN]]},
        {"api_key": PLAIN},
    ],
)
def test_generation_parameters_with_a_secret_are_refused_without_echo(
    session: ContextSession, data_dir: Path, params: dict[str, Any]
) -> None:
    before = written_names(data_dir)
    with pytest.raises(InvalidInputError, match="looks like a secret") as caught:
        session.send("Hi", **params)
    assert PLAIN not in full_text(caught.value)
    assert files_holding(data_dir, PLAIN) == []
    assert written_names(data_dir) == before  # nothing written


@pytest.mark.anyio
@pytest.mark.parametrize("header", ["X-Vault-Token", "X-Functions-Key"])
async def test_a_header_named_like_a_credential_is_refused_in_stored_settings(
    data_dir: Path, fault_server: FaultServer, header: str
) -> None:
    # Accepted, it was stored as "[REDACTED]" (the provider built to check the settings
    # had remembered it), and a reopened session sent that to the server instead. A new
    # secret: one a provider remembered (PLAIN, in other tests) is refused by value.
    secret = f"vault{uuid.uuid4().hex}"
    options = {"base_url": fault_server.url, "default_headers": {header: secret}}
    with pytest.raises(InvalidInputError, match="looks like a secret") as caught:
        ContextSession.create(
            provider="openai:fault-model", provider_options=options, data_dir=data_dir
        )
    said = full_text(caught.value)
    assert f"default_headers[{header!r}] ({header!r} names a credential)" in said
    assert "provider=OpenAIProvider(model, base_url=..., default_headers=...)" in said
    assert secret not in said
    assert ContextSession.list(data_dir) == []
    assert fault_server.requests == []
    # The way the error points to: a provider object, which sends the header as given.
    provider = OpenAIProvider(
        "fault-model", base_url=fault_server.url, default_headers={header: secret}, timeout=2.0
    )
    session = ContextSession.create(provider=provider, data_dir=data_dir)
    try:
        await session.send("Hi")
    finally:
        await session.aclose()
        await provider.aclose()
    sent = {k.lower(): v for k, v in fault_server.headers[-1].items()}
    assert sent[header.lower()] == secret
    assert files_holding(data_dir, secret) == []


# -- provider errors: redacted where they are stored and shown ---------------------------


def test_a_server_echoing_the_key_leaves_it_nowhere(
    data_dir: Path, fault_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The key is the environment's, not shaped like a key: found by its value.
    monkeypatch.setenv("OPENAI_API_KEY", PLAIN)
    fault_server.script(
        [
            Status(500, f"upstream rejected key {PLAIN}"),
            Status(401, f"Incorrect API key provided: {PLAIN}", error_type="auth"),
        ]
    )
    session = ContextSession.create(
        provider="openai:fault-model",
        provider_options={"base_url": fault_server.url, "timeout": 2.0},
        data_dir=data_dir,
        retry=FAST,
    )
    try:
        turn = session.send("Hi")
        with pytest.raises(PermanentProviderError) as caught:
            turn.result(DEADLINE)
        reply = session.history()[-1]
        shown = [e.message for e in session.events() if isinstance(e, ErrorReported)]
        document = anyio.run(export_context, FileStore(data_dir), session.id)
    finally:
        session.close()
    assert PLAIN not in full_text(caught.value)
    assert REDACTED in str(caught.value)
    assert reply.metadata.error is not None
    assert REDACTED in reply.metadata.error
    attempts = reply.metadata.failed_attempts
    assert REDACTED in attempts[0]["error"]
    assert shown
    assert all(PLAIN not in text for text in shown)
    assert PLAIN not in to_json(document)
    assert PLAIN not in to_markdown(document)
    assert files_holding(data_dir, PLAIN) == []


def test_a_provider_error_with_a_bearer_token_is_redacted(
    session: ContextSession, data_dir: Path
) -> None:
    provider = ScriptedProvider(
        [
            TransientProviderError(f"busy; sent Authorization: Bearer {PLAIN}"),
            PermanentProviderError(f"rejected {SHAPED}"),
        ]
    )
    turn = session.send("Hi", provider=provider)
    with pytest.raises(PermanentProviderError) as caught:
        turn.result(DEADLINE)
    assert SHAPED not in full_text(caught.value)
    for secret in (PLAIN, SHAPED):
        assert files_holding(data_dir, secret) == []


@pytest.mark.anyio
async def test_an_import_with_secrets_in_extra_fields_stores_and_exports_none(
    data_dir: Path,
) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1", extra={"token": PLAIN}))
        document = await export_context(store, "c1")
    raw = document.model_dump(mode="json")
    raw["metadata"]["id"] = "c2"
    raw["metadata"]["extra"] = {"auth": {"headers": [["Cookie", PLAIN]]}, "note": "kept"}
    async with FileStore(data_dir) as store:
        await import_document(store, parse_export(raw))
        exported = to_json(await export_context(store, "c2"))
    assert PLAIN not in exported
    assert "kept" in exported
    assert files_holding(data_dir, PLAIN) == []


@pytest.mark.anyio
async def test_an_import_refuses_a_credential_header_in_provider_settings_and_redacts_one_in_extra(
    data_dir: Path,
) -> None:
    # "X-Vault-Token" names a credential as a header only; imported, it was stored as
    # it came: in the settings (which refuse secrets) and in the extra fields. A new
    # secret: one a provider remembered (PLAIN, in other tests) is found by value.
    secret = f"vault{uuid.uuid4().hex}"
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        raw = (await export_context(store, "c1")).model_dump(mode="json")
    raw["metadata"]["id"] = "c2"
    raw["metadata"]["provider"]["params"] = {"default_headers": {"X-Vault-Token": secret}}
    with pytest.raises(InvalidInputError, match="looks like a secret") as caught:
        parse_export(raw)
    assert "default_headers['X-Vault-Token'] ('X-Vault-Token' names a" in str(caught.value)
    assert secret not in full_text(caught.value)
    raw["metadata"]["provider"]["params"] = {}
    raw["metadata"]["extra"] = {"default_headers": {"X-Vault-Token": secret, "X-Team": "kept"}}
    async with FileStore(data_dir) as store:
        await import_document(store, parse_export(raw))
        exported = to_json(await export_context(store, "c2"))
    assert secret not in exported
    assert "kept" in exported
    assert files_holding(data_dir, secret) == []


# -- logs ---------------------------------------------------------------------------------


def test_logged_errors_are_redacted(
    session: ContextSession, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVICE_TOKEN", PLAIN)

    def broken_view(event: object) -> None:
        raise RuntimeError(f"view failed with {PLAIN} and {SHAPED}")

    session.subscribe(broken_view)
    with caplog.at_level(logging.ERROR, logger="cm_notebook"):
        session.send("Hi").result(DEADLINE)
    assert "view failed" in caplog.text
    assert PLAIN not in caplog.text
    assert SHAPED not in caplog.text


# -- the redaction functions --------------------------------------------------------------


def test_redact_keeps_ordinary_data_and_replaces_secrets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_TOKEN", PLAIN)
    data = {
        "max_tokens": 10,
        "top_k": 5,
        "tokens": 512,  # a count, not a credential
        "usage": {"token": 3},  # a number cannot be a key
        "headers": [["Accept", "text/plain"], ["X-Auth-Token", "abc"]],
        "note": f"url https://u:pw123@host/x?token=zzz&top_k=3 and {PLAIN}",
    }
    assert redact(data) == {
        "max_tokens": 10,
        "top_k": 5,
        "tokens": 512,
        "usage": {"token": 3},
        "headers": [["Accept", "text/plain"], ["X-Auth-Token", REDACTED]],
        "note": f"url https://{REDACTED}@host/x?token={REDACTED}&top_k=3 and {REDACTED}",
    }
    assert (
        redact_text('{"api_key": "abc", "model": "m"}')
        == f'{{"api_key": "{REDACTED}", "model": "m"}}'
    )
    assert find_secret({"max_tokens": 5, "stop": ["\n"]}) is None


@pytest.mark.anyio
async def test_credentials_in_a_provider_object_are_used_but_never_stored_or_shown(
    data_dir: Path, fault_server: FaultServer
) -> None:
    # The way the refusal points to: build the provider with the credentials. Its owner
    # (this test) closes it, on this loop.
    provider = OpenAIProvider(
        "fault-model",
        base_url=fault_server.url.replace("http://", f"http://me:{PLAIN}@"),
        default_headers={"X-Auth-Token": PLAIN},
        timeout=2.0,
    )
    assert PLAIN not in repr(provider)
    session = ContextSession.create(provider=provider, data_dir=data_dir)
    try:
        await session.send("Hi")
        shown = repr(session) + session._repr_html_()
    finally:
        await session.aclose()
        await provider.aclose()
    sent = {k.lower(): v for k, v in fault_server.headers[-1].items()}
    assert sent["x-auth-token"] == PLAIN
    assert PLAIN not in shown
    assert files_holding(data_dir, PLAIN) == []


def test_a_key_given_as_the_model_name_is_refused(data_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="looks like a secret") as caught:
        ContextSession.create(provider=f"openai:{SHAPED}", data_dir=data_dir)
    assert SHAPED not in full_text(caught.value)
    assert files_holding(data_dir, SHAPED) == []


def test_redaction_reads_escaped_quotes_and_scans_hostile_text_once() -> None:
    assert redact_text('{"api_key": "a\\"b", "n": 1}') == f'{{"api_key": "{REDACTED}", "n": 1}}'
    # Shapes that make a backtracking pattern take exponential or quadratic time; here
    # each is one pass (a hang, not an assertion, would show the regression).
    for hostile in ('"key": "' + "\\" * 5000, "a." * 50_000 + "=x", "a-" * 50_000 + "://x"):
        assert redact_text(hostile) == hostile
        assert find_secret(hostile) is None


@pytest.mark.anyio
async def test_a_key_given_in_code_and_echoed_by_the_server_is_never_stored(
    fault_server: FaultServer, tmp_path: Path
) -> None:
    # A local server's key (no recognisable shape, not in the environment), passed as
    # api_key=, that the server quotes back in its 401 body, as OpenAI's API does.
    key = "lm-studio-8f3a9c2e71d44b0b"
    fault_server.script([Status(401, f"Incorrect API key provided: {key}.")])
    provider = OpenAIProvider("local-model", base_url=fault_server.url, api_key=key)
    try:
        with ContextSession.create("keys", data_dir=tmp_path, provider=provider) as session:
            with pytest.raises(CMError, match="authentication failed") as failed:
                await session.send("hello")
            assert key not in str(failed.value)
            history = json.dumps([m.model_dump(mode="json") for m in session.history()])
            assert key not in history
    finally:
        await provider.aclose()
    assert _files_holding(tmp_path, key.encode()) == []


def _files_holding(folder: Path, data: bytes) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and data in p.read_bytes()]


def test_a_key_given_to_the_anthropic_provider_is_redacted_wherever_it_appears() -> None:
    pytest.importorskip("anthropic")
    from cm_notebook.providers.anthropic import AnthropicProvider

    key = "proxy-token-5d1e0c9a3b7f"
    assert redact_text(f"denied: {key}") == f"denied: {key}"  # no known shape
    AnthropicProvider("claude-test", api_key=key)
    assert redact_text(f"denied: {key}") == f"denied: {REDACTED}"


def test_a_context_an_earlier_version_stored_with_a_redacted_header_still_opens(
    data_dir: Path,
) -> None:
    # Earlier versions took {"X-Vault-Token": ...} and stored it as REDACTED; refusing
    # such headers now must not lock the user out of the conversation.
    session = ContextSession.create(
        "old", provider=ScriptedProvider().reply("kept"), data_dir=data_dir
    )
    session.send("hello").result(10)
    session.close()
    path = data_dir / "contexts" / session.id / "metadata.json"
    stored = json.loads(path.read_text())
    stored["provider"] = {
        "spec": "openai:gpt-4o-mini",
        "params": {"default_headers": {"X-Vault-Token": REDACTED}},
    }
    path.write_text(json.dumps(stored))
    assert [meta.id for meta in ContextSession.list(data_dir=data_dir)] == [session.id]
    reopened = ContextSession.open(session.id, data_dir=data_dir)
    try:
        assert [m.content for m in reopened.history()] == ["hello", "kept"]
    finally:
        reopened.close()
    # A real value under that name is still refused.
    with pytest.raises(ValueError, match="X-Vault-Token"):
        ProviderSettings(params={"default_headers": {"X-Vault-Token": "hvs" + uuid.uuid4().hex}})


@pytest.mark.anyio
async def test_what_the_model_wrote_is_stored_and_exported_as_it_wrote_it(
    store: FileStore,
) -> None:
    # Reasoning quoting a secret-shaped phrase is the model's output, like its text: a
    # signed thinking block altered by redaction is refused by the API when sent back.
    thought = f"The user pasted password: {PLAIN}. I should call get_weather."
    block = {"type": "thinking", "thinking": thought, "signature": "EqQBsig=="}
    metadata = MessageMetadata.model_validate(
        {
            "reasoning": thought,
            "reasoning_blocks": [block],
            "error": f"rejected password: {PLAIN}",
            "failed_attempts": [{"error": f"key {SHAPED}", "text": "Hi", "reasoning": thought}],
        }
    )
    user = await store.append_message("c1", Message(role="user", content="Hi"), branch="main")
    reply = Message(role="assistant", content="", parent_id=user.id, metadata=metadata)
    await store.append_message("c1", reply, branch="main")
    document = await export_context(store, "c1")
    for kept in (await store.get_message("c1", reply.id), document.messages[-1]):
        assert kept.metadata.reasoning == thought
        assert kept.metadata.reasoning_blocks == [block]
        attempt = kept.metadata.failed_attempts[0]
        assert attempt["reasoning"] == thought
        assert attempt["text"] == "Hi"
        assert SHAPED not in attempt["error"]
        assert kept.metadata.error is not None
        assert PLAIN not in kept.metadata.error
