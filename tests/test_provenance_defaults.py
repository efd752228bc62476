"""A reply records the generation parameters its request was sent with, the provider's
defaults included, so two requests the model sees alike record and hash alike."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
from test_session_support import DEADLINE

from cm_notebook.providers.anthropic import AnthropicProvider
from cm_notebook.providers.base import complete_params
from cm_notebook.providers.local import LocalProvider
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

DEFAULTS = {"max_tokens": 256, "seed": 0, "temperature": 0.0}


class Defaulting(ScriptedProvider):
    """A scripted model whose requests carry defaults the user did not type."""

    def complete_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {**DEFAULTS, **params}


def test_a_reply_records_the_defaults_it_was_sampled_with(
    new_session: Callable[..., ContextSession],
) -> None:
    provider = Defaulting(["Hello."])
    session = new_session(provider=provider)
    reply = session.send("Hi").result(DEADLINE)
    assert reply.metadata.parameters == DEFAULTS
    assert reply.metadata.seed == 0
    assert provider.last_request.params == DEFAULTS  # what was hashed is what was sent


def test_typed_defaults_and_left_out_ones_hash_alike(
    new_session: Callable[..., ContextSession],
) -> None:
    left_out = new_session(provider=Defaulting(["Hello."])).send("Hi").result(DEADLINE)
    typed = new_session(provider=Defaulting(["Hello."])).send("Hi", **DEFAULTS).result(DEADLINE)
    assert left_out.metadata.request_hash == typed.metadata.request_hash
    assert left_out.metadata.parameters == typed.metadata.parameters
    other = new_session(provider=Defaulting(["Hello."])).send("Hi", seed=1).result(DEADLINE)
    assert other.metadata.request_hash != left_out.metadata.request_hash
    assert other.metadata.seed == 1


def test_a_provider_without_defaults_records_what_was_given(
    new_session: Callable[..., ContextSession],
) -> None:
    reply = new_session(provider=ScriptedProvider(["ok"])).send("Hi", top_k=3).result(DEADLINE)
    assert reply.metadata.parameters == {"top_k": 3}
    assert reply.metadata.seed is None


def test_complete_params_that_are_not_a_dict_are_refused() -> None:
    class Broken(ScriptedProvider):
        def complete_params(self, params: Mapping[str, Any]) -> Any:
            return list(params)

    with pytest.raises(TypeError, match=r"Broken\.complete_params\(\) returned list"):
        complete_params(Broken(), {"seed": 1})


def test_the_bundled_model_fills_in_greedy_decoding_and_its_seed() -> None:
    pytest.importorskip("xllamacpp")
    local = LocalProvider(n_ctx=2048)
    greedy = {"max_tokens": 256, "seed": 0, "temperature": 0.0, "top_k": 1}
    assert local.complete_params({}) == greedy
    # A temperature given means sampling: no top_k is forced, the seed still is.
    assert local.complete_params({"temperature": 0.7}) == {
        "max_tokens": 256,
        "seed": 0,
        "temperature": 0.7,
    }
    assert local.complete_params({"seed": 5, "max_tokens": 9, "stop": None}) == {
        **greedy,
        "seed": 5,
        "max_tokens": 9,
    }


def test_anthropic_records_the_max_tokens_it_must_send() -> None:
    pytest.importorskip("anthropic")
    claude = AnthropicProvider("claude-test", api_key="sk-ant-test", max_tokens=512)
    assert claude.complete_params({}) == {"max_tokens": 512}
    assert claude.complete_params({"max_tokens": 7, "temperature": 1}) == {
        "max_tokens": 7,
        "temperature": 1,
    }
