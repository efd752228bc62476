"""Shared fixtures. Async tests use anyio's pytest plugin on the asyncio backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_server import FaultServer
from test_session_support import close_all
from wire_server import WireServer, serving

from cm_notebook.model import ContextMetadata
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def wire() -> Iterator[WireServer]:
    """A scripted HTTP server speaking the providers' wire formats (see wire_server.py)."""
    with serving() as server:
        yield server


@pytest.fixture
def no_provider_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No provider key or base URL from the environment: the tests name their server."""
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh, empty data directory on real disk."""
    path = tmp_path / "data"
    path.mkdir()
    return path


@pytest.fixture
async def store(data_dir: Path) -> AsyncIterator[FileStore]:
    """A FileStore on ``data_dir`` holding one empty context, ``c1``."""
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1", title="first"))
        yield store


@pytest.fixture
def closing() -> Iterator[list[ContextSession]]:
    """Sessions appended to this list are closed (turns cancelled, files released) after."""
    sessions: list[ContextSession] = []
    yield sessions
    close_all(sessions)


@pytest.fixture
def new_session(data_dir: Path, closing: list[ContextSession]) -> Callable[..., ContextSession]:
    """``new_session(title, **options)``: ``ContextSession.create`` on ``data_dir``
    (unless a ``store`` is given), closed after the test so a turn left hanging by a
    failed assertion does not run into the next test."""

    def make(title: str | None = None, /, **options: Any) -> ContextSession:
        if "store" not in options:
            options.setdefault("data_dir", data_dir)
        session = ContextSession.create(options.pop("title", title), **options)
        closing.append(session)
        return session

    return make


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A running :class:`fault_server.FaultServer` (OpenAI protocol, faults on cue)."""
    with FaultServer() as server:
        yield server
