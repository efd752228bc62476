"""A provider that raises SystemExit or KeyboardInterrupt must not take the event loop
(and with it every session of the process, or the kernel) down with it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_session_support import DEADLINE

from cm_notebook._loop import background_loop
from cm_notebook.errors import PermanentProviderError
from cm_notebook.fsm import State
from cm_notebook.model import MessageStatus
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def test_a_provider_calling_sys_exit_fails_its_reply_and_the_process_goes_on(
    data_dir: Path,
) -> None:
    session = ContextSession.create(
        "exit", provider=ScriptedProvider([SystemExit(3), "back again"]), data_dir=data_dir
    )
    other = ContextSession.create("other", provider=ScriptedProvider(["fine"]), data_dir=data_dir)
    try:
        with pytest.raises(PermanentProviderError, match=r"sys\.exit\(3\)"):
            session.send("hello").result(DEADLINE)
        reply = session.history()[-1]
        assert reply.status is MessageStatus.ERROR
        assert "sys.exit(3)" in (reply.metadata.error or "")
        assert session.state is State.PERMANENT_FAILURE  # as for any failed reply: free
        assert background_loop().is_running()
        # The same session and another one on the same loop still work.
        assert session.send("again").result(DEADLINE).content == "back again"
        assert other.send("hi").result(DEADLINE).content == "fine"
    finally:
        session.close()
        other.close()


def test_a_keyboard_interrupt_in_the_provider_stops_the_reply_like_stop(
    data_dir: Path,
) -> None:
    session = ContextSession.create(
        "interrupt", provider=ScriptedProvider([KeyboardInterrupt(), "next"]), data_dir=data_dir
    )
    try:
        reply = session.send("hello").result(DEADLINE)
        assert reply.status is MessageStatus.INTERRUPTED
        assert session.state is State.IDLE
        assert session.send("again").result(DEADLINE).content == "next"
    finally:
        session.close()


def test_sys_exit_in_the_provider_does_not_escape_a_running_loop(data_dir: Path) -> None:
    # As in a notebook: the turn runs on the caller's own loop, whose end would be the
    # kernel's.
    async def main() -> str:
        session = ContextSession.create(
            "async", provider=ScriptedProvider([SystemExit(0), "after"]), data_dir=data_dir
        )
        try:
            with pytest.raises(PermanentProviderError):
                await session.send("hello")
            return (await session.send("again")).content
        finally:
            await session.aclose()

    assert asyncio.run(main()) == "after"


def test_the_background_loop_outlives_a_task_raising_system_exit() -> None:
    loop = background_loop()

    async def leave() -> None:
        raise SystemExit(5)

    async def answer() -> int:
        return 42

    with pytest.raises(SystemExit):
        asyncio.run_coroutine_threadsafe(leave(), loop).result(DEADLINE)
    assert background_loop() is loop
    assert asyncio.run_coroutine_threadsafe(answer(), loop).result(DEADLINE) == 42
