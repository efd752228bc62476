"""A full disk mid-turn (issue 7 item 5, the runner's side), injected at the Store
protocol seam: the turn ends as a clear failure, what streamed is kept where the disk
allows, the reply is interrupted (never left streaming), and the branch stays usable."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest
from store_helpers import FailingStore
from test_session_support import DEADLINE, Recorder, entered

from cm_notebook.errors import StoreError
from cm_notebook.events import ErrorReported
from cm_notebook.fsm import State
from cm_notebook.model import Message, MessageStatus
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider


@pytest.fixture
def inner(data_dir: Path) -> Iterator[FileStore]:
    store = FileStore(data_dir)
    yield store
    anyio.run(store.close)


def final_write(message: Message) -> bool:
    return message.role == "assistant" and message.status is not MessageStatus.STREAMING


def test_the_final_write_failing_keeps_the_text_as_interrupted(
    inner: FileStore, new_session: Callable[..., ContextSession]
) -> None:
    store = FailingStore(inner, full_updates=1, update_fails=final_write)
    fake = ScriptedProvider().reply("seventy characters of a reply", chunks="words")
    session = new_session(provider=fake, store=store)
    recorder = Recorder(session)
    with pytest.raises(StoreError, match="No space left on device") as info:
        session.send("hello").result(DEADLINE)
    assert isinstance(info.value.__cause__, OSError)
    recorder.wait(entered(State.IDLE))
    errors = recorder.of(ErrorReported)
    assert [e.kind for e in errors] == ["internal"]
    assert "could not be stored" in errors[0].message
    user, reply = session.history()
    assert user.content == "hello"
    assert reply.status is MessageStatus.INTERRUPTED
    assert reply.content == "seventy characters of a reply"
    # The branch is free and the conversation goes on.
    assert session.send("again").result(DEADLINE).content == "echo: again"


def test_a_checkpoint_failing_mid_reply_ends_the_turn_and_keeps_the_partial_text(
    inner: FileStore, new_session: Callable[..., ContextSession]
) -> None:
    # A transient failure checkpoints the partial text at once: that write hits the disk.
    store = FailingStore(inner, full_updates=1)
    fake = ScriptedProvider().error("transient", after_chunks=2, text="partial text here")
    session = new_session(provider=fake, store=store)
    with pytest.raises(StoreError, match="No space left on device"):
        session.send("hello").result(DEADLINE)
    reply = session.history()[-1]
    assert reply.status is MessageStatus.INTERRUPTED
    assert reply.content.startswith("partial")
    assert session.state is State.IDLE


def test_a_prompt_that_cannot_be_stored_is_refused_cleanly(
    inner: FileStore, new_session: Callable[..., ContextSession]
) -> None:
    store = FailingStore(inner, append_fails=lambda m: m.content == "lost?")
    session = new_session(provider=ScriptedProvider(), store=store)
    with pytest.raises(StoreError, match="could not be stored") as info:
        session.send("lost?")
    assert isinstance(info.value.__cause__, OSError)
    assert str(info.value) == (
        "your message could not be stored: [Errno 28] No space left on device. Nothing was "
        "sent; free disk space and send it again."
    )
    assert session.history() == []
    assert session.state is State.IDLE
    assert session.send("kept").result(DEADLINE).content == "echo: kept"  # not busy


def test_a_prompt_committed_before_the_disk_filled_is_put_on_its_branch(
    inner: FileStore, new_session: Callable[..., ContextSession]
) -> None:
    # The message reached the tree but the head move failed: it must not stay on no
    # branch; the session finishes the move and the turn goes on.
    store = FailingStore(inner, append_fails=lambda m: m.content == "hi", fail_after_commit=True)
    session = new_session(provider=ScriptedProvider(), store=store)
    reply = session.send("hi").result(DEADLINE)
    assert [m.content for m in session.history()] == ["hi", "echo: hi"]
    assert session.history()[-1].id == reply.id


def test_a_reply_the_disk_refused_twice_is_stored_before_the_next_write(
    inner: FileStore, new_session: Callable[..., ContextSession]
) -> None:
    # The final write and the wind-down's retry both fail: the reply is still on disk
    # as streaming. The session stores its final state before its next write.
    store = FailingStore(inner, full_updates=2, update_fails=final_write)
    fake = ScriptedProvider().reply("streamed text", chunks="words")
    session = new_session(provider=fake, store=store)
    with pytest.raises(StoreError, match="No space left on device"):
        session.send("hello").result(DEADLINE)
    # On disk it is still streaming (the disk said no); this session reads it as its
    # turn left it, and its streaming lock is let go (test_reply_full_disk.py).
    cut = session.history()[-1]
    assert (cut.status, cut.content) == (MessageStatus.INTERRUPTED, "streamed text")
    assert session.state is State.IDLE
    session.send("again").result(DEADLINE)
    _, cut, _, _ = session.history()
    assert (cut.status, cut.content) == (MessageStatus.INTERRUPTED, "streamed text")


def test_a_reply_stored_as_interrupted_stays_interrupted_after_the_disk_recovers(
    inner: FileStore, new_session: Callable[..., ContextSession]
) -> None:
    # The complete state was refused, the wind-down's interrupted state then stored: that
    # is the reply's final state (the turn said so, the views were told so). The refused
    # complete state must not be written over it later, silently, by the next send.
    store = FailingStore(inner, full_updates=1, update_fails=final_write)
    fake = ScriptedProvider().reply("streamed text", chunks="words")
    session = new_session(provider=fake, store=store)
    with pytest.raises(StoreError, match="No space left on device"):
        session.send("hello").result(DEADLINE)
    session.send("again").result(DEADLINE)
    _, cut, _, _ = session.history()
    assert cut.status is MessageStatus.INTERRUPTED
    assert "could not be stored" in (cut.metadata.error or "")
