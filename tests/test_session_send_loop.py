"""send() on an event loop (a notebook cell, async code) does not wait for the disk:
the user's message is stored on the store's thread, the turn asks for a reply only
once it is durable, and a failure to store it fails the turn clearly."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import EllipsisType
from typing import Any

import anyio
import anyio.to_thread
import pytest
from store_helpers import FailingStore, FailingStoreWithoutStart
from test_session_support import DEADLINE, Recorder

from cm_notebook.errors import StoreError
from cm_notebook.events import ErrorReported, MessageAdded
from cm_notebook.fsm import State
from cm_notebook.model import Message
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.store.workers import submit_blocking
from cm_notebook.testing import ScriptedProvider
from cm_notebook.turn import Turn


class GatedStore:
    """The real FileStore behind the Store protocol; user messages wait for a gate."""

    def __init__(self, inner: FileStore) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.waited_out = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append_message(
        self,
        context_id: str,
        message: Message,
        *,
        branch: str | None,
        expected_head: str | EllipsisType | None = ...,
    ) -> Message:
        if message.role == "user" and not await anyio.to_thread.run_sync(self.gate.wait, DEADLINE):
            self.waited_out = True
        return await self.inner.append_message(
            context_id, message, branch=branch, expected_head=expected_head
        )

    def start_append(
        self,
        context_id: str,
        message: Message,
        *,
        branch: str | None,
        expected_head: str | EllipsisType | None = ...,
    ) -> concurrent.futures.Future[None]:
        # FileStore.start_append (a send() on an event loop), gated the same way.
        def gated() -> None:
            if message.role == "user" and not self.gate.wait(DEADLINE):
                self.waited_out = True
            self.inner.start_append(
                context_id, message, branch=branch, expected_head=expected_head
            ).result()

        return submit_blocking(gated)


class GatedStoreWithoutStart(GatedStore):
    """A GatedStore without ``start_append``: the user's message goes through the
    store's own loop."""

    start_append = None  # type: ignore[assignment]


@pytest.fixture
def inner(data_dir: Path) -> Iterator[FileStore]:
    store = FileStore(data_dir)
    yield store
    anyio.run(store.close)


@pytest.mark.anyio
@pytest.mark.parametrize("kind", [GatedStore, GatedStoreWithoutStart])
async def test_send_on_a_loop_returns_before_the_message_is_on_disk(
    inner: FileStore, new_session: Callable[..., ContextSession], kind: type[GatedStore]
) -> None:
    store = kind(inner)
    fake = ScriptedProvider().reply("answer")
    session = new_session(provider=fake, store=store, title="gated")
    turn = session.send("question")  # returns although the write cannot finish yet
    assert fake.request_count == 0  # no reply is asked for before the message is stored
    store.gate.set()
    await turn.accepted()  # durable now
    assert [m.content for m in session.history()][:1] == ["question"]
    reply = await turn
    assert not store.waited_out
    assert reply.content == "answer"
    assert [m.content for m in fake.last_request.messages] == ["question"]


@pytest.mark.parametrize("kind", [GatedStore, GatedStoreWithoutStart])
def test_a_send_whose_loop_ends_first_still_stores_its_message_quietly(
    inner: FileStore,
    new_session: Callable[..., ContextSession],
    caplog: pytest.LogCaptureFixture,
    kind: type[GatedStore],
) -> None:
    # A script's asyncio.run returns (cancelling the turn) while the user's message is
    # still being written: the write finishes, the session reads it, nothing is logged
    # as an error (it used to be: the cancelled turn's future was resolved again).
    store = kind(inner)

    async def script() -> ContextSession:
        session = new_session(provider=ScriptedProvider(), store=store)
        session.send("hello")  # not awaited
        return session

    session = asyncio.run(script())
    store.gate.set()
    assert [m.content for m in session.history()] == ["hello"]
    assert not store.waited_out
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_finished_turn_awaited_in_a_later_asyncio_run_gives_its_reply(
    new_session: Callable[..., ContextSession],
) -> None:
    # The loop it ran on has ended; its reply is there all the same, as result() gives
    # it (it used to raise "Event loop is closed", with a never-awaited coroutine).
    async def script() -> Turn:
        session = new_session(provider=ScriptedProvider().reply("answer"))
        turn = session.send("hello")
        await turn
        return turn

    turn = asyncio.run(script())

    async def later() -> Message:
        return await turn

    assert asyncio.run(later()).content == "answer"
    assert turn.result().content == "answer"


@pytest.mark.anyio
async def test_a_session_reads_its_own_send_at_once(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider().reply("answer"))
    recorder = Recorder(session)
    turn = session.send("question")
    # A synchronous read right after send() (same cell) sees the message.
    assert [m.content for m in session.history()][:1] == ["question"]
    await turn
    added = recorder.of(MessageAdded)
    assert [e.role for e in added] == ["user", "assistant"]
    assert session.title == "question"  # an untitled context is named after it


@pytest.mark.anyio
@pytest.mark.parametrize("kind", [FailingStore, FailingStoreWithoutStart])
async def test_a_message_committed_before_the_disk_filled_is_put_on_its_branch(
    inner: FileStore, new_session: Callable[..., ContextSession], kind: type[FailingStore]
) -> None:
    # The append failed after its commit point (the message is in the tree, its head
    # move is not): the session finishes the move, announces it, and the turn goes on.
    store = kind(inner, append_fails=lambda m: m.content == "hi", fail_after_commit=True)
    session = new_session(provider=ScriptedProvider(), store=store)
    recorder = Recorder(session)
    turn = session.send("hi")
    await turn.accepted()
    reply = await turn
    history = session.history()
    assert [m.content for m in history] == ["hi", "echo: hi"]
    assert history[-1].id == reply.id
    added = [e.message_id for e in recorder.of(MessageAdded)]
    assert added == [history[0].id, reply.id]


@pytest.mark.anyio
@pytest.mark.parametrize("kind", [FailingStore, FailingStoreWithoutStart])
async def test_a_message_that_cannot_be_stored_fails_the_turn_clearly(
    inner: FileStore, new_session: Callable[..., ContextSession], kind: type[FailingStore]
) -> None:
    # Stored straight on a worker thread (a store with start_append) or on the store's
    # loop (one without): the same clear failure either way.
    store = kind(inner, append_fails=lambda m: m.content == "lost?")
    fake = ScriptedProvider()
    session = new_session(provider=fake, store=store)
    recorder = Recorder(session)
    turn = session.send("lost?")
    with pytest.raises(StoreError, match="could not be stored"):
        await turn.accepted()
    with pytest.raises(StoreError, match="could not be stored") as info:
        await turn
    assert isinstance(info.value.__cause__, OSError)
    assert fake.request_count == 0
    errors = recorder.of(ErrorReported)
    assert [e.kind for e in errors] == ["internal"]
    assert "could not be stored" in errors[0].message
    assert session.history() == []
    assert session.state is State.IDLE
    assert (await session.send("kept")).content == "echo: kept"  # the branch is free


class LateSettlingStore(FailingStore):
    """start_append commits the user's message on no branch, then fails like a full disk
    once ``gate`` opens; a callback registered first delays the ones registered after it,
    as a busy machine may (``concurrent.futures`` wakes waiters before any callback)."""

    def __init__(self, inner: FileStore) -> None:
        super().__init__(inner)
        self.gate = threading.Event()

    def start_append(
        self,
        context_id: str,
        message: Message,
        *,
        branch: str | None,
        expected_head: str | EllipsisType | None = ...,
    ) -> concurrent.futures.Future[None]:
        def commit_then_fail() -> None:
            self.gate.wait(DEADLINE)
            self.inner.start_append(context_id, message, branch=None).result()
            raise OSError(28, "No space left on device")

        future = submit_blocking(commit_then_fail)
        future.add_done_callback(lambda _future: threading.Event().wait(0.3))
        return future


@pytest.mark.anyio
async def test_a_read_waiting_for_a_failed_send_sees_it_settled(
    inner: FileStore, new_session: Callable[..., ContextSession]
) -> None:
    # The append failed after its commit point; a read made meanwhile waits for the
    # head move that settles it, not only for the failed write, so it sees the message.
    store = LateSettlingStore(inner)
    session = new_session(provider=ScriptedProvider(), store=store)
    turn = session.send("hi")
    threading.Timer(0.1, store.gate.set).start()
    assert [m.content for m in session.history()] == ["hi"]
    assert (await turn).content == "echo: hi"


class FinishedStore:
    """The real FileStore behind the Store protocol, whose ``start_append`` has made
    the write (fsync included) by the time it returns, as a write that needs no worker
    can: the session's callbacks on its future then run at once, inside send()."""

    def __init__(self, inner: FileStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def start_append(
        self,
        context_id: str,
        message: Message,
        *,
        branch: str | None,
        expected_head: str | EllipsisType | None = ...,
    ) -> concurrent.futures.Future[None]:
        started = self.inner.start_append(
            context_id, message, branch=branch, expected_head=expected_head
        )
        started.result(timeout=DEADLINE)
        return started


def test_a_subscriber_that_reads_the_session_when_the_message_is_added_does_not_hang_send(
    inner: FileStore, new_session: Callable[..., ContextSession]
) -> None:
    # A view subscribed to the session reads it when a message is added. Announced at
    # once inside send(), that read waited for the send's own write to be settled,
    # which came after the announcement: the kernel hung in send().
    seen: list[list[str]] = []
    outcome: list[BaseException | str] = []

    async def cell() -> None:
        session = new_session(
            provider=ScriptedProvider().reply("answer"), store=FinishedStore(inner)
        )

        def on_added(event: Any) -> None:
            if isinstance(event, MessageAdded) and event.role == "user":
                seen.append([m.content for m in session.history()])

        session.subscribe(on_added)
        await session.send("question")

    def run() -> None:
        try:
            asyncio.run(cell())
            outcome.append("done")
        except BaseException as exc:  # reported by the assertion below
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)  # a hang must not hang the run
    worker.start()
    worker.join(DEADLINE)
    assert outcome == ["done"], "send() hung (or failed) with a subscriber reading the session"
    assert seen == [["question"]]


class FsyncFailingOnce:
    """An ``fsync`` that fails with EIO once, when :attr:`armed` is set."""

    def __init__(self) -> None:
        self.armed = False

    def __call__(self, fd: int) -> None:
        if self.armed:
            self.armed = False
            raise OSError(errno.EIO, "Input/output error")
        os.fsync(fd)


@pytest.mark.anyio
async def test_a_message_whose_fsync_failed_after_its_commit_is_not_sent_twice(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    # The line and the head move were written, the fsync after them failed: the message
    # is stored (as after any failure past the commit point), and the session must not
    # say "nothing was sent" (a resend then stored it twice).
    fsync = FsyncFailingOnce()
    store = FileStore(data_dir, fsync=fsync)
    try:
        session = new_session(provider=ScriptedProvider().reply("one").reply("two"), store=store)
        await session.send("first")
        fsync.armed = True
        await session.send("second")
        assert [m.content for m in session.history()] == ["first", "one", "second", "two"]
    finally:
        await store.close()
