"""Edges of making and using a session: a loop that has ended, provider=None."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_session_support import DEADLINE, close_all

from cm_notebook import ContextSession
from cm_notebook.errors import InvalidInputError, StateError
from cm_notebook.testing import ScriptedProvider


def test_sending_after_the_session_s_loop_ended_writes_nothing_and_says_what_to_do(
    data_dir: Path,
) -> None:
    async def made_here() -> ContextSession:
        session = ContextSession.create(
            "ended", provider=ScriptedProvider(["one"]), data_dir=data_dir
        )
        await session.send("q1")
        return session

    session = asyncio.run(made_here())  # the loop its turns ran on is closed now
    for _ in range(2):  # and again: no branch is left "busy"
        with pytest.raises(StateError, match=r"ContextSession\.open"):
            session.send("q2")
    close_all([session])
    reopened = ContextSession.open(session.id, data_dir=data_dir)
    try:
        assert [m.content for m in reopened.history()] == ["q1", "one"]
        reopened.send("q3").result(DEADLINE)  # nothing left half-done either
    finally:
        close_all([reopened])


def test_create_with_provider_none_takes_the_default(data_dir: Path) -> None:
    session = ContextSession.create("default", provider=None, data_dir=data_dir)
    try:
        assert session.metadata.provider.spec == "local"
    finally:
        close_all([session])


def test_bad_message_metadata_is_said_in_one_line(data_dir: Path) -> None:
    session = ContextSession.create("meta", provider=ScriptedProvider(["x"]), data_dir=data_dir)
    try:
        with pytest.raises(InvalidInputError) as info:
            session.send("hi", metadata={"stats": 5})
        assert str(info.value).startswith("metadata: stats: ")
        assert "pydantic.dev" not in str(info.value)
        assert session.history() == []  # refused before anything was written
    finally:
        close_all([session])
