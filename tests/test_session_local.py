"""The built-in offline model end to end through the session (real llama.cpp, real disk)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from cm_notebook.errors import InvalidInputError, PermanentProviderError
from cm_notebook.model import MessageStatus
from cm_notebook.providers.local import LocalProvider, unload_local_models
from cm_notebook.providers.pool import spec_of
from cm_notebook.session import ContextSession

pytestmark = pytest.mark.local_model

pytest.importorskip("xllamacpp")


@pytest.fixture(autouse=True)
def _bundled_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CM_LOCAL_MODEL", raising=False)


def test_local_model_replies_in_a_script(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider="local")
    message = session.send("Say hello", max_tokens=24).result(120)
    assert message.status is MessageStatus.COMPLETE
    assert message.content.strip()
    usage = message.metadata.usage
    assert usage is not None
    assert usage.input_tokens > 0
    assert 0 < usage.output_tokens <= 24
    assert message.metadata.provider == "local"
    # The defaults the bundled model is sent are recorded too: greedy, seed 0.
    assert message.metadata.parameters == {
        "max_tokens": 24,
        "seed": 0,
        "temperature": 0.0,
        "top_k": 1,
    }
    assert message.metadata.seed == 0
    reopened = ContextSession.open(session.id, data_dir=data_dir)
    assert reopened.history()[-1] == message


@pytest.mark.anyio
async def test_local_model_streams_in_async_code(data_dir: Path) -> None:
    session = ContextSession.create(provider="local", data_dir=data_dir)
    try:
        deltas = [d async for d in session.stream("Name a colour.", max_tokens=16, seed=1)]
        assert len(deltas) > 1
        assert "".join(deltas) == session.history()[-1].content
    finally:
        await session.aclose()


def test_context_made_with_a_model_file_reopens_on_that_file(
    data_dir: Path, tmp_path: Path, new_session: Callable[..., ContextSession]
) -> None:
    # The stored spec was local:<file stem>: reopened, "mymodel" was looked for as a
    # path (every send failed), and a file named smollm2.gguf became the built-in model.
    copy = tmp_path / "mymodel.gguf"
    shutil.copyfile(LocalProvider().model_path, copy)
    session = new_session(provider=LocalProvider(copy, n_ctx=512))
    first = session.send("Say hello", max_tokens=4).result(120)
    assert first.metadata.model == "mymodel"  # what views show stays short
    assert session.metadata.provider.spec == f"local:{copy}"
    session.close()
    reopened = ContextSession.open(session.id, data_dir=data_dir)
    try:
        again = reopened.send("Say hello", max_tokens=4).result(120)
        assert again.status is MessageStatus.COMPLETE
        assert again.metadata.model == "mymodel"
    finally:
        reopened.close()
        unload_local_models()  # the copy's server
    named_like_the_bundled = tmp_path / "other" / "smollm2.gguf"
    named_like_the_bundled.parent.mkdir()
    named_like_the_bundled.write_bytes(b"GGUF" + bytes(60))  # checked, never loaded here
    spec = ContextSession.create(provider=LocalProvider(named_like_the_bundled), data_dir=data_dir)
    try:
        stored = spec.metadata.provider.spec
    finally:
        spec.close()
    assert stored == f"local:{named_like_the_bundled}"
    assert LocalProvider.from_spec(stored.partition(":")[2]).model_path == named_like_the_bundled
    # The built-in model keeps its short spec.
    assert spec_of(LocalProvider()) == "local:smollm2-135m-instruct"


def test_reopening_after_the_model_file_moved_says_which_file_and_what_to_do(
    data_dir: Path, tmp_path: Path, new_session: Callable[..., ContextSession]
) -> None:
    model = tmp_path / "gone.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    session = new_session(provider=LocalProvider(model))
    session.close()
    model.unlink()
    reopened = ContextSession.open(session.id, data_dir=data_dir)
    try:
        with pytest.raises(PermanentProviderError) as info:
            reopened.send("Say hello", max_tokens=4).result(60)
    finally:
        reopened.close()
    message = str(info.value)
    assert f"the provider spec 'local:{model}'" in message
    assert "does not exist" in message
    assert "put the file back" in message
    assert "ContextSession.open(..., provider=" in message


@pytest.mark.parametrize("where", ["create", "branch"])
def test_a_spec_whose_model_file_is_not_there_is_refused_before_it_is_stored(
    data_dir: Path, tmp_path: Path, where: str
) -> None:
    missing = tmp_path / "typo.gguf"
    if where == "create":
        with pytest.raises(PermanentProviderError) as info:
            ContextSession.create("t", provider=f"local:{missing}", data_dir=data_dir)
        assert ContextSession.list(data_dir=data_dir) == []  # nothing was written
    else:
        session = ContextSession.create("t", provider="scripted", data_dir=data_dir)
        try:
            with pytest.raises(PermanentProviderError) as info:
                session.branch("other-model", provider=f"local:{missing}")
            assert list(session.branches) == ["main"]
        finally:
            session.close()
    message = str(info.value)
    assert f"'local:{missing}'" in message
    assert "does not exist" in message
    assert "Check the path, or use 'local'" in message


@pytest.mark.parametrize("spec", ["openai", "anthropic"])
def test_a_spec_without_the_model_its_provider_needs_is_refused_at_create(
    data_dir: Path, spec: str
) -> None:
    with pytest.raises(InvalidInputError, match=f"the {spec} provider needs a model") as info:
        ContextSession.create("t", provider=spec, data_dir=data_dir)
    assert "with the options []" not in str(info.value)
    assert ContextSession.list(data_dir=data_dir) == []
