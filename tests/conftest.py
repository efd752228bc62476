"""Shared fixtures. Async tests use anyio's pytest plugin on the asyncio backend."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh, empty data directory on real disk."""
    path = tmp_path / "data"
    path.mkdir()
    return path


# -- the misbehaving OpenAI-compatible server (tests/fault_server.py) -----------------
from collections.abc import Iterator  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from fault_server import FaultServer


@pytest.fixture
def fault_server() -> Iterator[FaultServer]:
    """A running :class:`fault_server.FaultServer` (OpenAI protocol, faults on cue)."""
    from fault_server import FaultServer

    with FaultServer() as server:
        yield server
