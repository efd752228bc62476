"""Generation parameters: a name the provider does not accept is refused with the close
match before anything is written or sent; ordinary names are never taken for secrets."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_server import FaultServer, Reply

from cm_notebook.errors import InvalidInputError
from cm_notebook.params import COMMON_PARAMETERS, GenerationParams, accepted_parameters
from cm_notebook.providers.anthropic import AnthropicProvider
from cm_notebook.providers.local import LocalProvider
from cm_notebook.providers.openai import OpenAIProvider
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

DEADLINE = 10.0


@pytest.fixture
def session(data_dir: Path) -> Iterator[ContextSession]:
    made = ContextSession.create(provider=ScriptedProvider(["first"]), data_dir=data_dir)
    # The title taken from the first message is announced on the session's loop, maybe
    # after the reply: wait for it, or its signal would land inside a test's "nothing
    # was written" window.
    titled = threading.Event()
    made.subscribe(lambda event: titled.set(), kinds={"ContextUpdated"})
    made.send("Hi").result(DEADLINE)
    assert titled.wait(DEADLINE)
    yield made
    made.close()


def files(data_dir: Path) -> dict[Path, bytes]:
    # Lock files are how readers and writers take turns, not data: they hold nothing.
    return {
        p: p.read_bytes()
        for p in sorted(data_dir.rglob("*"))
        if p.is_file() and not p.name.endswith(".lock")
    }


def refused(data_dir: Path, action: Any) -> str:
    """Run ``action``, expect InvalidInputError, check nothing was written; its text."""
    before = files(data_dir)
    with pytest.raises(InvalidInputError) as caught:
        action()
    assert files(data_dir) == before
    return str(caught.value)


def test_max_token_is_a_typo_not_a_secret(session: ContextSession, data_dir: Path) -> None:
    text = refused(data_dir, lambda: session.send("hi", max_token=10))
    assert "secret" not in text
    assert "unknown generation parameter 'max_token'" in text
    assert "did you mean 'max_tokens'?" in text
    assert "ScriptedProvider.parameters" in text  # where to find the list


def test_temprature_is_refused_with_the_close_match(
    session: ContextSession, data_dir: Path
) -> None:
    text = refused(data_dir, lambda: session.send("hi", temprature=0.5))
    assert "'temprature'" in text
    assert "did you mean 'temperature'?" in text
    assert "It accepts: max_tokens, model, seed, stop, temperature, top_k, top_p." in text


@pytest.mark.parametrize("name", ["max_tokens", "top_k", "top_p", "seed", "temperature"])
def test_ordinary_names_are_accepted(session: ContextSession, name: str) -> None:
    value: Any = 1 if name != "top_p" else 0.5
    reply = session.send("hi", **{name: value}).result(DEADLINE)
    assert reply.metadata.parameters == {name: value}


def test_every_path_that_takes_parameters_checks_them(
    session: ContextSession, data_dir: Path
) -> None:
    first_user = session.history()[0].id
    for action in (
        lambda: session.regenerate(temprature=1.0),
        lambda: session.edit(first_user, "Hello", temprature=1.0),
        lambda: session.fan_out("q", [{"temperature": 0}, {"temprature": 1}]),
        lambda: session.send("hi", provider=ScriptedProvider(), max_token=3),
    ):
        assert "did you mean" in refused(data_dir, action)
    assert list(session.branches) == ["main"]


def test_a_provider_declares_what_it_accepts(session: ContextSession) -> None:
    custom = ScriptedProvider(["ok"], parameters={"temperature", "mirostat"})
    reply = session.send("hi", provider=custom, mirostat=2).result(DEADLINE)
    assert custom.requests[-1].params == {"mirostat": 2}
    assert reply.metadata.parameters == {"mirostat": 2}
    with pytest.raises(InvalidInputError, match="'seed' for provider 'scripted'\\. It accepts"):
        session.send("hi", provider=custom, seed=1)


def test_built_in_providers_declare_their_parameters() -> None:
    openai = OpenAIProvider("gpt-test", base_url="http://127.0.0.1:9/v1")
    anthropic = AnthropicProvider("claude-test", api_key="not-used")
    for provider in (openai, anthropic):
        accepted = accepted_parameters(provider)
        assert accepted is not None
        assert {"temperature", "max_tokens", "top_p", "stop", "model"} <= accepted
    assert accepted_parameters(LocalProvider) is not None
    assert "model" not in LocalProvider.parameters  # the bundled file: nothing to choose
    assert "seed" not in AnthropicProvider.parameters  # the API has none
    with pytest.raises(InvalidInputError, match="'seed' for provider 'anthropic'"):
        GenerationParams.check({"seed": 1}, anthropic)
    with pytest.raises(InvalidInputError, match="did you mean 'top_p'"):
        GenerationParams.check({"top_pp": 0.5}, openai)
    assert COMMON_PARAMETERS - {"model"} <= LocalProvider.parameters


@pytest.fixture
def openai_session(data_dir: Path, fault_server: FaultServer) -> Iterator[ContextSession]:
    made = ContextSession.create(
        provider="openai:fault-model",
        provider_options={"base_url": fault_server.url, "timeout": 2.0},
        data_dir=data_dir,
    )
    yield made
    made.close()


def test_openai_refuses_a_typo_before_any_request(
    openai_session: ContextSession, fault_server: FaultServer, data_dir: Path
) -> None:
    text = refused(data_dir, lambda: openai_session.send("hi", temprature=0.5))
    assert "for provider 'openai'; did you mean 'temperature'?" in text
    assert fault_server.requests == []


def test_openai_server_knobs_and_extra_body_reach_the_server(
    openai_session: ContextSession, fault_server: FaultServer
) -> None:
    fault_server.script([Reply("ok")])
    openai_session.send("hi", top_k=3, extra_body={"cache_prompt": True}).result(DEADLINE)
    body = fault_server.requests[-1]
    assert body["top_k"] == 3
    assert body["cache_prompt"] is True
    assert "extra_body" not in body


@pytest.mark.parametrize(
    ("name", "value", "words"),
    [
        ("max_tokens", 10**12, "less than or equal to 2147483647"),
        ("seed", -1, "greater than or equal to 0"),
        ("seed", 5 + 2**32, "less than or equal to 4294967294"),
        ("seed", 2**32 - 1, "less than or equal to 4294967294"),  # -1 as unsigned
    ],
)
def test_values_a_provider_would_wrap_or_read_as_random_are_refused(
    name: str, value: int, words: str
) -> None:
    # A seed of -1 means "random" to llama.cpp and larger ones are cut to 32 bits: the
    # seed recorded with the reply would not be the one that sampled it.
    with pytest.raises(InvalidInputError, match=words):
        GenerationParams.check({name: value})
    assert GenerationParams.check({name: 7}) == {name: 7}


@pytest.mark.parametrize("stop", ["", ["END", ""]])
def test_an_empty_stop_sequence_is_refused(session: ContextSession, stop: object) -> None:
    # It would end every reply at once: an empty "complete" answer, counted by scores
    # and stability as a real one.
    with pytest.raises(InvalidInputError, match="an empty stop sequence would end every reply"):
        session.send("hi", stop=stop)
    assert GenerationParams.check({"stop": ["END"]}) == {"stop": ["END"]}


@pytest.mark.parametrize("value", [float("nan"), float("inf"), [1.0, float("-inf")]])
def test_a_value_json_cannot_record_is_refused(
    session: ContextSession, data_dir: Path, value: object
) -> None:
    # Sent as it is, but recorded with the reply as null: the record would not say how
    # the reply was sampled.
    words = refused(data_dir, lambda: session.send("again", top_k=value))
    assert words.startswith("generation parameter top_k")
    assert "NaN or an infinity" in words
    refused(data_dir, lambda: session.sweep("Q", [{"top_k": value}], progress=False))
