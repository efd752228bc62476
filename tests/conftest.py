"""Shared fixtures. Async tests use anyio's pytest plugin on the asyncio backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fault_server import FaultServer
from test_session_support import close_all

from cm_notebook.model import ContextMetadata
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
def fault_server() -> Iterator[FaultServer]:
    """A running :class:`fault_server.FaultServer` (OpenAI protocol, faults on cue)."""
    with FaultServer() as server:
        yield server
