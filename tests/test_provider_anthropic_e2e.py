"""The Anthropic provider end to end: the official SDK's real HTTP client, SSE parser
and error handling, against a local server on 127.0.0.1 that speaks Anthropic's
Messages API (``POST /v1/messages`` with server-sent events) and replays recordings
from ``tests/fixtures/anthropic``. No mocks: only the far end of the socket is fake."""

from __future__ import annotations

import json
import socket
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import anthropic
import anyio
import pytest

from cm_notebook.errors import PermanentProviderError, TransientProviderError
from cm_notebook.model import Message
from cm_notebook.providers import (
    ChatRequest,
    Finish,
    StreamChunk,
    TextDelta,
    ToolCallRequest,
    ToolSpec,
    Usage,
)
from cm_notebook.providers.anthropic import AnthropicProvider

FIXTURES = Path(__file__).parent / "fixtures" / "anthropic"
_KINDS: dict[str, Any] = {
    "text": TextDelta,
    "tool_call": ToolCallRequest,
    "usage": Usage,
    "finish": Finish,
}


def wire_events(name: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = json.loads((FIXTURES / f"{name}.json").read_text())["events"]
    return events


def expected(name: str) -> list[StreamChunk]:
    """The provider events the recording must produce (before its error, if any)."""
    data = json.loads((FIXTURES / f"{name}.json").read_text())
    return [_KINDS[e.pop("type")](**e) for e in data["expected"]]


def body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


@dataclass
class Reply:
    """What the fake server answers to the next POST /v1/messages."""

    events: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    end: Literal["complete", "reset", "hang"] = "complete"
    delay: float = 0.0
    raw: bytes = b""  # sent as it is after the events (say, bytes that are not UTF-8)
    prefix: bytes = b""  # sent as it is before the first event (say, a byte-order mark)


class FakeAnthropic(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.replies: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.release = threading.Event()  # set at teardown to end hangs and delays

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-stream (cancellation tests) is expected


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: FakeAnthropic

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        payload = json.loads(self.rfile.read(length))
        self.server.requests.append(
            {
                "path": self.path,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": payload,
            }
        )
        reply = self.server.replies.popleft()
        if reply.delay:
            self.server.release.wait(reply.delay)
        self.close_connection = True
        if reply.status != 200:
            data = json.dumps(reply.error).encode()
            self.send_response(reply.status)
            for key, value in {**reply.headers, "content-type": "application/json"}.items():
                self.send_header(key, value)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        prefix = reply.prefix
        for event in reply.events:
            chunk = prefix + f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
            prefix = b""
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        if reply.raw:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(reply.raw), reply.raw))
        if reply.end == "complete":
            self.wfile.write(b"0\r\n\r\n")
        elif reply.end == "reset":
            self.wfile.write(b"400\r\nevent: content_block_del")  # a chunk that never ends
        else:
            self.server.release.wait(10)


@pytest.fixture
def server() -> Iterator[FakeAnthropic]:
    httpd = FakeAnthropic()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@asynccontextmanager
async def claude(base_url: str, **options: Any) -> AsyncIterator[AnthropicProvider]:
    provider = AnthropicProvider(
        "claude-haiku-4-5",
        api_key=options.pop("api_key", "test-key"),
        base_url=base_url,
        **options,
    )
    try:
        yield provider
    finally:
        await provider.aclose()


def sent_key(headers: dict[str, str]) -> str | None:
    # The API takes the key as x-api-key; recent SDK releases send it as a bearer token.
    if "x-api-key" in headers:
        return headers["x-api-key"]
    return headers.get("authorization", "").removeprefix("Bearer ") or None


HELLO = ChatRequest(
    messages=[Message(role="system", content="Be brief."), Message(role="user", content="Hi")],
    tools=[ToolSpec("add", "Add two numbers", {"type": "object", "properties": {}})],
)


async def drain(provider: AnthropicProvider, seen: list[StreamChunk]) -> None:
    async for event in provider.stream(HELLO):
        seen.append(event)


@pytest.mark.anyio
async def test_e2e_replays_a_recorded_stream(server: FakeAnthropic) -> None:
    events = wire_events("text_and_tool_use")
    events.insert(2, {"type": "ping"})
    server.replies.append(Reply(events))
    seen: list[StreamChunk] = []
    async with claude(server.url) as provider:
        await drain(provider, seen)
    assert seen == expected("text_and_tool_use")
    [sent] = server.requests
    assert sent["path"] == "/v1/messages"
    assert sent_key(sent["headers"]) == "test-key"
    assert "anthropic-version" in sent["headers"]
    assert sent["body"]["stream"] is True
    assert sent["body"]["system"] == "Be brief."
    assert sent["body"]["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]}
    ]
    assert sent["body"]["tools"][0]["name"] == "add"
    assert sent["body"]["max_tokens"] == 1024


@pytest.mark.anyio
async def test_e2e_an_event_type_newer_than_the_code_is_skipped(server: FakeAnthropic) -> None:
    # The API may add event types: through the SDK's parser one was an internal error
    # that failed the turn for good.
    events = wire_events("text_only")
    events.insert(3, {"type": "a_future_event", "payload": 1})
    server.replies.append(Reply(events))
    seen: list[StreamChunk] = []
    async with claude(server.url) as provider:
        await drain(provider, seen)
    assert seen == expected("text_only")


@pytest.mark.anyio
async def test_e2e_a_stream_that_begins_with_a_byte_order_mark_keeps_message_start(
    server: FakeAnthropic,
) -> None:
    # Read as part of the first line, the mark made it "\ufeffevent": message_start was
    # lost, and with it the input token count and the message id.
    server.replies.append(Reply(wire_events("text_only"), prefix="\ufeff".encode()))
    seen: list[StreamChunk] = []
    async with claude(server.url) as provider:
        await drain(provider, seen)
    assert seen == expected("text_only")
    assert Usage(input_tokens=21, output_tokens=12) in seen


@pytest.mark.anyio
async def test_e2e_an_event_that_is_not_utf8_is_malformed_and_retried(
    server: FakeAnthropic,
) -> None:
    # One bad byte failed the turn for good as an internal error.
    events = wire_events("text_only")[:3]
    delta = b'"delta": {"type": "text_delta", "text": "\xff"}'
    bad = b'{"type": "content_block_delta", "index": 0, ' + delta + b"}"
    server.replies.append(Reply(events, raw=b"event: content_block_delta\ndata: " + bad + b"\n\n"))
    seen: list[StreamChunk] = []
    async with claude(server.url) as provider:
        with pytest.raises(TransientProviderError, match="an event is not valid UTF-8"):
            await drain(provider, seen)


@pytest.mark.anyio
async def test_e2e_error_event_mid_stream(server: FakeAnthropic) -> None:
    server.replies.append(Reply(wire_events("overloaded_error")))
    seen: list[StreamChunk] = []
    async with claude(server.url) as provider:
        with pytest.raises(TransientProviderError, match="overloaded_error") as info:
            await drain(provider, seen)
    assert seen == expected("overloaded_error")
    assert isinstance(info.value.__cause__, anthropic.APIStatusError)


@pytest.mark.anyio
async def test_e2e_rate_limit_once_without_sdk_retries(server: FakeAnthropic) -> None:
    server.replies.append(
        Reply(status=429, error=body("rate_limit_error", "slow"), headers={"retry-after": "3"})
    )
    async with claude(server.url) as provider:
        with pytest.raises(TransientProviderError) as info:
            await drain(provider, [])
    assert (info.value.status_code, info.value.retry_after) == (429, 3.0)
    assert len(server.requests) == 1  # the SDK did not retry behind our back


@pytest.mark.anyio
async def test_e2e_bad_key(server: FakeAnthropic) -> None:
    server.replies.append(
        Reply(status=401, error=body("authentication_error", "invalid x-api-key"))
    )
    async with claude(server.url, api_key="sk-ant-wrong") as provider:
        with pytest.raises(PermanentProviderError, match="ANTHROPIC_API_KEY") as info:
            await drain(provider, [])
    assert "sk-ant-wrong" not in str(info.value)
    assert isinstance(info.value.__cause__, anthropic.AuthenticationError)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("end", "message"),
    [
        ("complete", "stream cut mid-reply"),  # the body ends cleanly, without message_stop
        ("reset", "the stream broke"),  # the connection drops in the middle of a chunk
    ],
)
async def test_e2e_stream_cut(
    server: FakeAnthropic, end: Literal["complete", "reset"], message: str
) -> None:
    server.replies.append(Reply(wire_events("cut_stream"), end=end))
    seen: list[StreamChunk] = []
    async with claude(server.url) as provider:
        with pytest.raises(TransientProviderError, match=message):
            await drain(provider, seen)
    assert seen == expected("cut_stream")


@pytest.mark.anyio
async def test_e2e_a_connection_dropped_after_message_stop_keeps_the_reply(
    server: FakeAnthropic,
) -> None:
    # The reply is whole (message_stop came); only the end of the HTTP body is lost.
    server.replies.append(Reply(wire_events("text_only"), end="reset"))
    seen: list[StreamChunk] = []
    async with claude(server.url) as provider:
        await drain(provider, seen)
    assert seen == expected("text_only")
    assert isinstance(seen[-1], Finish)


@pytest.mark.anyio
async def test_e2e_cancellation_closes_the_stream(server: FakeAnthropic) -> None:
    server.replies.append(Reply(wire_events("cut_stream"), end="hang"))
    seen: list[StreamChunk] = []
    async with claude(server.url) as provider:
        with anyio.move_on_after(0.3) as scope:
            await drain(provider, seen)
    assert scope.cancelled_caught
    assert seen == expected("cut_stream")


@pytest.mark.anyio
async def test_e2e_timeout(server: FakeAnthropic) -> None:
    server.replies.append(Reply(wire_events("text_only"), delay=5.0))
    async with claude(server.url, timeout=0.2) as provider:
        with pytest.raises(TransientProviderError, match=r"timed out after 0\.2 s"):
            await drain(provider, [])


@pytest.mark.anyio
async def test_e2e_connection_refused() -> None:
    with socket.socket() as sock:  # a port nobody listens on once the socket closes
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with claude(f"http://127.0.0.1:{port}") as provider:
        with pytest.raises(TransientProviderError, match="connection failed"):
            await drain(provider, [])


@pytest.mark.anyio
async def test_e2e_key_from_environment(
    server: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "env-key")
    server.replies.append(Reply(wire_events("text_only")))
    provider = AnthropicProvider("claude-haiku-4-5", base_url=server.url)
    try:
        await drain(provider, [])
    finally:
        await provider.aclose()
    assert sent_key(server.requests[0]["headers"]) == "env-key"


# Everything the SDK reads to find credentials when no key is given.
CREDENTIAL_ENV = (
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_AUTH_TOKEN",
    "ANTHROPIC_PROFILE",
    "ANTHROPIC_CONFIG_DIR",
    "ANTHROPIC_FEDERATION_RULE_ID",
    "ANTHROPIC_ORGANIZATION_ID",
    "ANTHROPIC_IDENTITY_TOKEN",
    "ANTHROPIC_IDENTITY_TOKEN_FILE",
)


@pytest.fixture
def no_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A machine with no key in the environment and no credential profiles on disk."""
    for name in CREDENTIAL_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.mark.anyio
@pytest.mark.usefixtures("no_credentials")
async def test_missing_key_fails_before_any_request(server: FakeAnthropic) -> None:
    provider = AnthropicProvider("claude-haiku-4-5", base_url=server.url)
    try:
        with pytest.raises(PermanentProviderError, match="set ANTHROPIC_API_KEY"):
            await drain(provider, [])
    finally:
        await provider.aclose()
    assert server.requests == []


@pytest.mark.anyio
async def test_a_key_set_after_the_provider_was_made_is_used(
    server: FakeAnthropic, no_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A notebook: the session (and its provider) first, the key set in a later cell,
    # then a retry: it must not keep saying the key is missing.
    provider = AnthropicProvider("claude-haiku-4-5", base_url=server.url)
    try:
        with pytest.raises(PermanentProviderError, match="set ANTHROPIC_API_KEY"):
            await drain(provider, [])
        monkeypatch.setenv("ANTHROPIC_API_KEY", "set-later")
        server.replies.append(Reply(wire_events("text_only")))
        await drain(provider, [])
    finally:
        await provider.aclose()
    assert sent_key(server.requests[0]["headers"]) == "set-later"


def test_unreadable_credential_profile_is_permanent(
    no_credentials: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The user pointed the SDK at a config directory that has no profile in it.
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(no_credentials))
    with pytest.raises(PermanentProviderError, match="could not load credentials") as info:
        AnthropicProvider("claude-haiku-4-5")
    assert isinstance(info.value.__cause__, anthropic.AnthropicError)
