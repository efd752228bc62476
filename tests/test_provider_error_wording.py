"""What the OpenAI and Anthropic providers say when a request fails, against a real local
server sending what the real APIs send: each message says what went wrong and what to
do, reads as sentences, and holds no key."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from provider_streams import run
from wire_server import Behaviour, WireHandler, WireServer

from cm_notebook.errors import (
    PermanentProviderError,
    ProviderSetupError,
    TransientProviderError,
)
from cm_notebook.providers.anthropic import AnthropicProvider
from cm_notebook.providers.openai import OpenAIProvider
from cm_notebook.retry import RetryPolicy
from cm_notebook.session import ContextSession

pytestmark = [pytest.mark.anyio, pytest.mark.usefixtures("no_provider_env")]

KEY = "sk-ant-api03-wordingtestkey0123456789abcdef"
RETRIES = RetryPolicy(initial_delay=0.01, multiplier=1.0, max_attempts=3, jitter=0.0)


def status(code: int, body: dict[str, Any]) -> Behaviour:
    def behave(handler: WireHandler, request: dict[str, Any]) -> None:
        handler.send_body(code, "application/json", json.dumps(body).encode())

    return behave


def claude(server: WireServer) -> AnthropicProvider:
    return AnthropicProvider("claude-test", api_key=KEY, base_url=server.url, timeout=5)


def gpt(server: WireServer) -> OpenAIProvider:
    return OpenAIProvider("m", api_key=KEY, base_url=f"{server.url}/v1", timeout=5)


HINT = "The conversation no longer fits the model's context window"


async def test_anthropics_prompt_is_too_long_says_the_conversation_no_longer_fits(
    wire: WireServer,
) -> None:
    error = {
        "type": "invalid_request_error",
        "message": "prompt is too long: 208310 tokens > 200000 maximum",
    }
    wire.default = status(400, {"type": "error", "error": error})
    _, failure = await run(claude(wire))
    assert isinstance(failure, PermanentProviderError)
    text = str(failure)
    assert "prompt is too long: 208310 tokens > 200000 maximum. " + HINT in text
    assert "branch from an earlier message or edit one" in text
    assert KEY not in text


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (
            400,
            "This model's maximum context length is 128000 tokens. However, your messages "
            "resulted in 130000 tokens.",
            "resulted in 130000 tokens. " + HINT,
        ),
        (401, "Incorrect API key provided.", "Incorrect API key provided. To fix: set"),
        (403, "Not allowed.", "Not allowed. To fix: check the key"),
        (404, "The model `m` does not exist.", "The model `m` does not exist. "),
        (400, "Wait for it...", "Wait for it..."),  # an ellipsis is the server's own
    ],
)
async def test_a_message_ending_in_a_period_gets_no_second_one(
    wire: WireServer, code: int, message: str, expected: str
) -> None:
    body = {"error": {"message": message, "type": "invalid_request_error", "code": None}}
    wire.default = status(code, body)
    _, failure = await run(gpt(wire))
    assert isinstance(failure, PermanentProviderError)
    text = str(failure)
    assert expected in text
    assert ".." not in text.replace("...", "")
    assert KEY not in text


def refused_port() -> int:
    # A port nothing listens on: bound, then closed.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.mark.parametrize("how", ["base_url", "environment"])
async def test_an_anthropic_connection_failure_names_where_without_credentials(
    monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    port = refused_port()
    url = f"http://user:hunter2secretpw@127.0.0.1:{port}?sig=abcdefghijk123"
    if how == "environment":
        monkeypatch.setenv("ANTHROPIC_BASE_URL", url)
        provider = AnthropicProvider("claude-test", api_key=KEY, timeout=2)
    else:
        provider = AnthropicProvider("claude-test", api_key=KEY, base_url=url, timeout=2)
    _, failure = await run(provider)
    assert isinstance(failure, TransientProviderError)
    text = str(failure)
    assert text.startswith("anthropic: connection failed: http://")
    assert f"127.0.0.1:{port}" in text
    for secret in ("hunter2secretpw", "abcdefghijk123", KEY):
        assert secret not in text


@pytest.mark.parametrize(
    ("message", "advice"),
    [
        (  # vLLM
            "'max_tokens' or 'max_completion_tokens' is too large: 8192. This model's maximum "
            "context length is 4096 tokens and your request has 12 input tokens "
            "(8192 > 4096 - 12). None",
            "max_tokens at most 4084",
        ),
        (  # older vLLM releases, and OpenAI
            "This model's maximum context length is 4096 tokens. However, you requested 8204 "
            "tokens (12 in the messages, 8192 in the completion). Please reduce the length "
            "of the messages or completion.",
            "max_tokens at most 4084",
        ),
        (
            "This model's maximum context length is 4097 tokens. However, you requested 4200 "
            "tokens (200 in the messages, 100 in the functions, 3900 in the completion).",
            "max_tokens at most 3797",
        ),
    ],
)
async def test_a_max_tokens_too_large_for_the_window_says_to_lower_it_not_to_branch(
    wire: WireServer, message: str, advice: str
) -> None:
    body = {"object": "error", "message": message, "type": "BadRequestError", "code": 400}
    wire.default = status(400, body)
    _, failure = await run(gpt(wire))
    assert isinstance(failure, PermanentProviderError)
    text = str(failure)
    assert HINT not in text
    assert "branch from" not in text
    assert advice in text
    assert "To fix: send again with max_tokens" in text


async def test_anthropics_input_plus_max_tokens_over_the_limit_says_to_lower_max_tokens(
    wire: WireServer,
) -> None:
    error = {
        "type": "invalid_request_error",
        "message": "input length and `max_tokens` exceed context limit: 197000 + 8192 > "
        "200000, decrease input length or `max_tokens` and try again",
    }
    wire.default = status(400, {"type": "error", "error": error})
    _, failure = await run(claude(wire))
    assert isinstance(failure, PermanentProviderError)
    assert "max_tokens at most 3000" in str(failure)


async def test_a_conversation_that_alone_fills_the_window_still_says_to_branch(
    wire: WireServer,
) -> None:
    message = (
        "This model's maximum context length is 4096 tokens. However, you requested 5100 "
        "tokens (5000 in the messages, 100 in the completion)."
    )
    wire.default = status(400, {"error": {"message": message, "type": "invalid_request_error"}})
    _, failure = await run(gpt(wire))
    assert isinstance(failure, PermanentProviderError)
    assert HINT in str(failure)


QUOTA = {
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "type": "insufficient_quota",
    "param": None,
    "code": "insufficient_quota",
}
BALANCE = {  # DeepSeek
    "message": "Insufficient Balance",
    "type": "unknown_error",
    "param": None,
    "code": "invalid_request_error",
}


@pytest.mark.parametrize(("code", "error"), [(429, QUOTA), (402, BALANCE)])
async def test_an_account_out_of_credit_is_a_setup_error_not_a_rate_limit(
    wire: WireServer, data_dir: Path, code: int, error: dict[str, Any]
) -> None:
    wire.default = status(code, {"error": error})
    _, failure = await run(gpt(wire))
    assert isinstance(failure, ProviderSetupError)
    text = str(failure)
    assert error["message"] in text
    assert "To fix: add credit to the account, or check its plan and billing" in text
    assert "rate limited" not in text
    # Not retried: every request would get the same answer.
    provider = gpt(wire)
    session = ContextSession.create(provider=provider, data_dir=data_dir, retry=RETRIES)
    try:
        with pytest.raises(ProviderSetupError):
            await session.send("Hi")
    finally:
        await session.aclose()
        await provider.aclose()
    assert len(wire.requests) == 2  # one for run(), one for the session


async def test_a_rate_limit_is_still_a_rate_limit(wire: WireServer) -> None:
    error = {
        "message": "Rate limit reached for m.",
        "type": "requests",
        "code": "rate_limit_exceeded",
    }
    wire.default = status(429, {"error": error})
    _, failure = await run(gpt(wire))
    assert isinstance(failure, TransientProviderError)
    assert "rate limited (HTTP 429)" in str(failure)


async def test_anthropics_credit_balance_too_low_is_a_setup_error(wire: WireServer) -> None:
    error = {
        "type": "invalid_request_error",
        "message": "Your credit balance is too low to access the Anthropic API. Please go to "
        "Plans & Billing to upgrade or purchase credits.",
    }
    wire.default = status(400, {"type": "error", "error": error})
    _, failure = await run(claude(wire))
    assert isinstance(failure, ProviderSetupError)
    assert "add credit to the account" in str(failure)
