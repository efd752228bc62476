"""Credentials inside a provider's ``base_url`` (``user:password@``, ``?sig=...``) are
used to reach the server but never stored, shown or logged, even when the server
echoes them alone, and they do not change how an HTTP error is reported.

The far end is a real HTTP server on 127.0.0.1 that answers every POST 401 with a body
quoting what it got: the Basic credentials, decoded and as sent, and the path it was
asked for, query included (as proxies and gateways do). Each test's secret is new and has no
known key shape: remembered secrets last the process, and only remembering can find it.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import traceback
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fault_server import FaultServer, Status
from provider_streams import run

from cm_notebook._url_secrets import redact_url, remember_url_secrets
from cm_notebook.errors import CMError, PermanentProviderError, TransientProviderError
from cm_notebook.providers.anthropic import AnthropicProvider
from cm_notebook.providers.openai import OpenAIProvider
from cm_notebook.redact import REDACTED, redact_text
from cm_notebook.retry import RetryPolicy
from cm_notebook.session import ContextSession

pytestmark = pytest.mark.anyio

FAST = RetryPolicy(initial_delay=0.01, multiplier=1.0, max_attempts=2, jitter=0.0)


class EchoServer(ThreadingHTTPServer):
    """Answers every POST 401, quoting the Basic credentials (decoded, and the token
    as sent) and the path it received."""

    daemon_threads = True
    block_on_close = False

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.received: list[str] = []  # what each request's echo quoted

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EchoServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        basic = base64.b64decode(token).decode() if scheme.lower() == "basic" else ""
        quoted = (
            f"Access denied for {basic or 'nobody'} (token {token or 'none'}, path {self.path})"
        )
        self.server.received.append(quoted)
        data = json.dumps({"type": "error", "error": {"message": quoted, "type": "auth"}})
        self.send_response(401)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def _no_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


def new_secret() -> str:
    # Letters and digits in no known key shape, and no version or date.
    return f"pw{uuid.uuid4().hex[:18]}"


def with_secret(url: str, where: str, secret: str, path: str) -> str:
    if where == "userinfo":
        return url.replace("http://", f"http://me:{secret}@") + path
    return f"{url}{path}?api-version=2024-02-15-preview&sig={secret}"


def provider_for(kind: str, base_url: str) -> OpenAIProvider | AnthropicProvider:
    if kind == "openai":
        return OpenAIProvider("m", base_url=base_url, timeout=5.0)
    return AnthropicProvider("claude-test", api_key="test-key", base_url=base_url, timeout=5.0)


def files_holding(folder: Path, secret: str) -> list[Path]:
    # Paths only: a failing assertion must not print the secret.
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# -- 1. remembered, so an echo of them is stored and shown nowhere ------------------------


@pytest.mark.parametrize("where", ["userinfo", "query"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_credentials_in_the_base_url_echoed_by_the_server_are_kept_nowhere(
    echo: EchoServer, data_dir: Path, kind: str, where: str
) -> None:
    secret = new_secret()
    path = "/v1" if kind == "openai" else ""
    provider = provider_for(kind, with_secret(echo.url, where, secret, path))
    session = ContextSession.create(provider=provider, data_dir=data_dir, retry=FAST)
    try:
        with pytest.raises(CMError, match="authentication failed") as caught:
            await session.send("Hi")
        history = json.dumps([m.model_dump(mode="json") for m in session.history()])
        events = repr(list(session.events()))
        shown = repr(session) + session._repr_html_() + repr(provider)
    finally:
        await session.aclose()
        await provider.aclose()
    # Booleans, not the texts: a failing assertion must not print the secret.
    quoted = secret in echo.received[0]
    assert quoted, "the server did not get the credential, or did not quote it"
    in_error = secret in "".join(traceback.format_exception(caught.value))
    assert not in_error, "the credential is in the error or its chained causes"
    message = str(caught.value)
    marked = f"me:{REDACTED}" in message or f"sig={REDACTED}" in message
    assert marked, "the quoted credential is not marked as redacted"
    in_history = secret in history
    assert not in_history, "the credential is in the history"
    in_events = secret in events
    assert not in_events, "the credential is in the events"
    in_repr = secret in shown
    assert not in_repr, "the credential is in a repr"
    assert files_holding(data_dir, secret) == []


async def test_a_base_url_from_the_environment_is_remembered_too(
    echo: EchoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = new_secret()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", with_secret(echo.url, "userinfo", secret, ""))
    _, error = await run(AnthropicProvider("claude-test", api_key="test-key", timeout=5.0))
    quoted = secret in echo.received[0]
    assert quoted, "the server did not get the credential, or did not quote it"
    assert isinstance(error, PermanentProviderError)
    in_error = secret in "".join(traceback.format_exception(error))
    assert not in_error, "the credential is in the error or its chained causes"


async def echoed_failure(provider: OpenAIProvider | AnthropicProvider, data_dir: Path) -> str:
    """Send once through ``provider`` to the echo server (which refuses it); the error's
    message, after checking the error is an authentication failure. The provider is
    closed after."""
    session = ContextSession.create(provider=provider, data_dir=data_dir, retry=FAST)
    try:
        with pytest.raises(CMError, match="authentication failed") as caught:
            await session.send("Hi")
    finally:
        await session.aclose()
        await provider.aclose()
    return "".join(traceback.format_exception(caught.value))


def kept_in(data_dir: Path, shown: str, secret: str) -> list[str]:
    """Where ``secret`` is: "the error" and the files under ``data_dir`` (their paths
    only: a failing assertion must not print it)."""
    return (["the error"] if secret in shown else []) + [
        str(path.relative_to(data_dir)) for path in files_holding(data_dir, secret)
    ]


@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_the_basic_token_a_base_url_is_sent_with_is_kept_nowhere_when_echoed(
    echo: EchoServer, data_dir: Path, kind: str
) -> None:
    # The HTTP client sends user:password@ as "Authorization: Basic <token>", the
    # base64 of the pair percent-decoded, and a gateway may quote that token alone:
    # it decodes to the password. The password holds characters a URL must encode.
    secret = f"{new_secret()}/@%"
    path = "/v1" if kind == "openai" else ""
    base_url = echo.url.replace("http://", f"http://me:{quote(secret, safe='')}@") + path
    token = base64.b64encode(f"me:{secret}".encode()).decode()
    shown = await echoed_failure(provider_for(kind, base_url), data_dir)
    quoted = f"token {token}," in echo.received[0]
    assert quoted, "the server did not get the token, or did not quote it"
    assert f"(token {REDACTED}," in shown
    assert kept_in(data_dir, shown, token) == []
    assert kept_in(data_dir, shown, secret) == []


@pytest.mark.parametrize("password", ["long", "short"])
async def test_the_user_and_password_of_a_basic_header_are_kept_nowhere_when_echoed(
    echo: EchoServer, data_dir: Path, password: str
) -> None:
    # default_headers={"Authorization": "Basic <token>"}: the server decodes the token
    # and quotes "user:password". A long password goes, the user name stays readable; a
    # password too short to redact wherever it appears goes with its user name.
    user = f"u{uuid.uuid4().hex[:10]}"
    secret = new_secret() if password == "long" else "pw1"
    header = "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()
    provider = OpenAIProvider(
        "m", base_url=f"{echo.url}/v1", default_headers={"Authorization": header}, timeout=5.0
    )
    shown = await echoed_failure(provider, data_dir)
    quoted = f"for {user}:{secret} " in echo.received[0]
    assert quoted, "the server did not get the credentials, or did not quote them"
    if password == "long":
        assert f"for {user}:{REDACTED} " in shown
        assert kept_in(data_dir, shown, secret) == []
    else:
        assert f"for {REDACTED} " in shown
        assert kept_in(data_dir, shown, f"{user}:{secret}") == []
    assert kept_in(data_dir, shown, header.removeprefix("Basic ")) == []


def test_the_url_secrets_are_remembered_in_every_form_and_versions_are_kept() -> None:
    token, password, sig = new_secret(), new_secret(), f"{new_secret()}+/="
    remember_url_secrets(
        f"https://acct{token}:{password}@x.example/v1"
        f"?api-version=2024-02-15-preview&se=2024-12-31T23:59:59Z&sig={sig.replace('/', '%2F')}"
    )
    echoed = f"user acct{token} pass {password} sig {sig} api-version 2024-02-15-preview"
    assert redact_text(echoed) == (
        f"user {REDACTED} pass {REDACTED} sig {REDACTED} api-version 2024-02-15-preview"
    )
    bare = new_secret()
    # A token as the whole userinfo; a plain word is no secret.
    remember_url_secrets(f"https://{bare}@host/v1?tenant=research-team")
    assert redact_text(f"token {bare} for research-team") == (f"token {REDACTED} for research-team")


def test_names_and_ids_in_a_query_are_no_secrets(data_dir: Path) -> None:
    # A deployment or model name looks like a token (long, letters and digits) but is
    # none: taken for one, it was redacted everywhere after, and a context whose spec or
    # settings held it could no longer be made or opened in that process.
    model = f"gpt-4o-{uuid.uuid4().hex[:8]}-2024-08-06"
    url = f"https://gw.example.com/v1?deployment={model}&country_code=US&user=me"
    provider = OpenAIProvider(model, base_url=url)
    assert redact_text(f"model {model}") == f"model {model}"
    assert repr(provider) == f"OpenAIProvider(model={model!r}, base_url={url!r})"
    session = ContextSession.create(
        provider=f"openai:{model}", provider_options={"base_url": url}, data_dir=data_dir
    )
    session.close()
    ContextSession.open(session.id, data_dir=data_dir).close()


def test_a_url_is_shown_without_its_credentials_however_short() -> None:
    assert redact_url("http://me:pw@host:8080/v1?api-version=2024-02-01&code=ab12&x=y") == (
        f"http://{REDACTED}@host:8080/v1?api-version=2024-02-01&code={REDACTED}&x=y"
    )
    provider = OpenAIProvider("m", base_url="http://host/v1?code=ab12")
    assert repr(provider) == f"OpenAIProvider(model='m', base_url='http://host/v1?code={REDACTED}')"


@pytest.mark.parametrize("query", ["sig={}", "code={}", "api-version=2024-02-01&sig={}"])
def test_stored_settings_refuse_a_base_url_carrying_credentials(data_dir: Path, query: str) -> None:
    # Stored redacted, a reopened session would send "[REDACTED]": refused, with the way
    # that keeps the credential out of the files (a provider object, never stored).
    secret = new_secret()
    url = f"http://127.0.0.1:9/v1?{query.format(secret)}"
    with pytest.raises(CMError, match="base_url carries credentials") as info:
        ContextSession.create(
            provider="openai:m", provider_options={"base_url": url}, data_dir=data_dir
        )
    assert secret not in str(info.value)
    assert "provider=OpenAIProvider(model, base_url=...)" in str(info.value)
    assert not list(data_dir.glob("contexts/*"))
    plain = "http://127.0.0.1:9/v1?api-version=2024-02-01&tenant=research-team"
    session = ContextSession.create(
        provider="openai:m", provider_options={"base_url": plain}, data_dir=data_dir
    )
    session.close()


# -- 2. an HTTP error from a base_url with user:password@ is reported as itself ------------


async def test_a_rate_limit_from_a_base_url_with_userinfo_is_transient(
    fault_server: FaultServer,
) -> None:
    fault_server.script([Status(429, "slow down", retry_after="1")])
    secret = new_secret()
    provider = OpenAIProvider("m", base_url=with_secret(fault_server.url, "userinfo", secret, ""))
    _, error = await run(provider)
    assert isinstance(error, TransientProviderError)
    assert "rate limited (HTTP 429): slow down" in str(error)
    assert error.retry_after == 1.0


async def test_an_unknown_model_behind_userinfo_says_where_to_list_models(
    fault_server: FaultServer,
) -> None:
    fault_server.script([Status.unknown_model("nope")])
    secret = new_secret()
    base_url = with_secret(fault_server.url, "userinfo", secret, "")
    _, error = await run(OpenAIProvider("nope", base_url=base_url))
    assert isinstance(error, PermanentProviderError)
    # The hint's URL without the credentials (not "[REDACTED]@": no one can paste that).
    assert f"List the models this server offers at {fault_server.url}/models." in str(error)
    in_error = secret in str(error)
    assert not in_error, "the credential is in the error"


async def test_an_unknown_model_hint_hides_a_short_query_credential(
    fault_server: FaultServer,
) -> None:
    # Too short to be remembered (under 8 characters), still hidden in the hint, which
    # is stored with the reply's error. (This server quotes the path it was asked for,
    # which no redaction of short values could tell from text.)
    fault_server.script([Status.unknown_model("nope")])
    _, error = await run(OpenAIProvider("nope", base_url=f"{fault_server.url}?code=Ab3_x9"))
    assert f"offers at {fault_server.url}/models?code={REDACTED}." in str(error)


# -- 3. the HTTP library's log of the request -----------------------------------------------


@pytest.mark.parametrize("where", ["userinfo", "query"])
@pytest.mark.parametrize("kind", ["openai", "anthropic"])
async def test_the_request_logged_by_the_http_library_shows_no_credentials(
    echo: EchoServer, caplog: pytest.LogCaptureFixture, kind: str, where: str
) -> None:
    secret = new_secret()
    path = "/v1" if kind == "openai" else ""
    with caplog.at_level(logging.DEBUG):
        _, error = await run(provider_for(kind, with_secret(echo.url, where, secret, path)))
    assert isinstance(error, PermanentProviderError)
    requests = [r for r in caplog.records if r.getMessage().startswith("HTTP Request: POST")]
    assert requests, "the library logged no request: the test sees nothing"
    logged = secret in caplog.text
    assert not logged, "the credential is in the log"
    marked = REDACTED in requests[0].getMessage()
    assert marked, "the request's URL is not marked as redacted"
