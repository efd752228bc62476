"""A provider's ``base_url`` with credentials in it (``user:password@``) reports an
HTTP error as itself, against a real local server."""

from __future__ import annotations

import uuid

import pytest
from fault_server import FaultServer, Status
from provider_streams import run

from cm_notebook.errors import PermanentProviderError, TransientProviderError
from cm_notebook.providers.openai import OpenAIProvider

pytestmark = pytest.mark.anyio


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
