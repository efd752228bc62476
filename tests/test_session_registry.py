"""One live session per context in a process: open twice (also from two threads) and
get one session; holds, context managers, and close() ending every event stream."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from test_session_support import DEADLINE

from cm_notebook.errors import StateError
from cm_notebook.events import Event
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider


def test_opening_a_context_twice_gives_the_same_session(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    created = new_session(provider=ScriptedProvider(["hi"]))
    first = ContextSession.open(created.id, data_dir=data_dir)
    second = ContextSession.open(created.id, data_dir=str(data_dir / "." / ""))
    assert first is created
    assert second is created
    # One bus, one set of machines: a turn started through one is seen by the other.
    seen: list[Event] = []
    second.subscribe(seen.append, kinds={"MessageCompleted"})
    first.send("hello").result(DEADLINE)
    assert second.history()[-1].content == "hi"
    assert [e.type for e in seen] == ["MessageCompleted"]
    first.close()
    second.close()
    assert not created.closed  # the creator still holds it
    assert ContextSession.open(created.id, data_dir=data_dir) is created
    created.close()


def test_two_threads_opening_one_context_get_one_session(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    context_id = new_session(provider=ScriptedProvider()).id
    barrier = threading.Barrier(4)
    got: list[ContextSession] = []
    lock = threading.Lock()

    def opener() -> None:
        barrier.wait(DEADLINE)
        session = ContextSession.open(context_id, data_dir=data_dir)
        with lock:
            got.append(session)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    assert len(got) == 4
    assert len({id(session) for session in got}) == 1
    for session in got:
        session.close()


def test_the_last_close_releases_and_the_next_open_is_fresh(data_dir: Path) -> None:
    created = ContextSession.create(provider=ScriptedProvider(), data_dir=data_dir)
    again = ContextSession.open(created.id, data_dir=data_dir)
    again.close()
    assert not created.closed
    created.close()
    assert created.closed
    created.close()  # closing a closed session does nothing
    with ContextSession.open(created.id, data_dir=data_dir) as fresh:
        assert fresh is not created
        assert not fresh.closed
    assert fresh.closed


def test_options_for_a_context_already_open_are_refused(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    created = new_session(provider=ScriptedProvider())
    with pytest.raises(StateError, match="already open in this process"):
        ContextSession.open(created.id, data_dir=data_dir, provider=ScriptedProvider())
    # The refused open took no hold: one close still closes it.
    created.close()
    assert created.closed


def test_two_stores_are_two_writers_with_two_sessions(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    created = new_session(provider=ScriptedProvider())
    store = FileStore(data_dir)
    try:
        other = ContextSession.open(created.id, store=store)
        assert other is not created
        assert ContextSession.open(created.id, store=store) is other
        other.close()
        other.close()
    finally:
        anyio.run(store.close)


@pytest.mark.anyio
async def test_close_ends_every_event_stream(data_dir: Path) -> None:
    async with ContextSession.create(provider=ScriptedProvider(["hi"]), data_dir=data_dir) as s:
        streams = [s.event_stream(), s.event_stream()]
        got: list[list[str]] = [[], []]

        async def read(n: int) -> None:
            async for event in streams[n]:
                got[n].append(event.type)

        async with anyio.create_task_group() as tg:
            tg.start_soon(read, 0)
            tg.start_soon(read, 1)
            await s.send("hello")
            with anyio.fail_after(DEADLINE):
                await s.aclose()  # the readers return: the task group can end
    assert got[0] == got[1]
    assert "MessageCompleted" in got[0]
    assert s.closed
    # A stream asked for after close ends at once.
    assert [e async for e in s.event_stream()] == []


def test_a_provider_override_does_not_get_the_stored_options_of_another(data_dir: Path) -> None:
    stored = ContextSession.create(
        provider="openai:some-model",
        provider_options={"base_url": "http://127.0.0.1:9/v1"},
        data_dir=data_dir,
    )
    stored.close()
    # The stored base_url belongs to the openai provider: the scripted one never sees it.
    with ContextSession.open(stored.id, data_dir=data_dir, provider="scripted") as session:
        reply = session.send("hi").result(DEADLINE)
        assert reply.metadata.provider == "scripted"
        assert reply.status.value == "complete"


def test_a_closed_session_changes_nothing(data_dir: Path) -> None:
    # Its writes would reach the disk with no signal to anyone (its bus is closed) and
    # reopen files it let go: each is refused, saying how to go on.
    session = ContextSession.create(provider=ScriptedProvider(["a"]), data_dir=data_dir)
    session.send("q").result(DEADLINE)
    reply = session.history()[-1]
    session.branch("keep", switch=False)
    session.close()
    live = ContextSession.open(session.id, data_dir=data_dir)
    try:
        before = (live.title, dict(live.branches), live.active_branch, live.last_seq)
        attempts: dict[str, Callable[[], object]] = {
            "branch": lambda: session.branch("ghost"),
            "switch": lambda: session.switch("keep"),
            "delete_branch": lambda: session.delete_branch("keep"),
            "edit_system": lambda: session.edit_system("new prompt"),
            "title": lambda: setattr(session, "title", "renamed"),
            "rate": lambda: session.rate(reply.id, score=1),
            "label": lambda: session.label("keep", run="1"),
            "pin_baseline": lambda: session.pin_baseline("keep"),
            "allow": lambda: session.allow("some_tool", scope="context"),
        }
        for name, attempt in attempts.items():
            with pytest.raises(StateError, match="is closed; open the context again"):
                attempt()
            assert (live.title, dict(live.branches), live.active_branch, live.last_seq) == (
                before
            ), name
        assert live.scores(reply.id) is None
    finally:
        live.close()


def test_a_session_left_open_by_an_ended_asyncio_run_is_not_handed_out(data_dir: Path) -> None:
    # Its loop is closed: it can never run a turn again. open() in the next asyncio.run
    # gives a fresh session that sends, and letting go of the old one needs no close().
    async def first() -> ContextSession:
        session = ContextSession.create(provider=ScriptedProvider(["one"]), data_dir=data_dir)
        await session.send("hello")
        return session  # not closed

    left_open = asyncio.run(first())

    async def second() -> tuple[ContextSession, str]:
        session = ContextSession.open(left_open.id, data_dir=data_dir)
        reply = await session.send("again")
        return session, reply.content

    reopened, content = asyncio.run(second())
    try:
        assert reopened is not left_open
        assert left_open.closed
        assert content  # a reply was written
        assert [m.content for m in reopened.history() if m.role == "user"] == ["hello", "again"]
        left_open.close()  # a holder's close() after it was let go does nothing
        assert not reopened.closed
    finally:
        reopened.close()
