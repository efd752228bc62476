"""The built-in offline model end to end through the session (real llama.cpp, real disk)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from cm_notebook.model import MessageStatus
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
