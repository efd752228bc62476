"""Helpers shared by the store tests: build messages and chains of them."""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import os
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import EllipsisType
from typing import Any

from cm_notebook.model import Message
from cm_notebook.store import FileStore


def msg(role: str = "user", parent: str | None = None, content: str = "", **kw: object) -> Message:
    """A message with the given role, parent and content (extra fields via ``kw``)."""
    return Message.model_validate({"role": role, "parent_id": parent, "content": content, **kw})


async def chain(store: FileStore, cid: str, n: int, branch: str = "main") -> list[str]:
    """Append ``n`` alternating user/assistant messages after the branch head."""
    head = (await store.get_metadata(cid)).branches[branch].head
    ids = []
    for i in range(n):
        message = msg("user" if i % 2 == 0 else "assistant", head, f"{branch} {i}")
        await store.append_message(cid, message, branch=branch)
        head = message.id
        ids.append(message.id)
    return ids


class FailingStore:
    """The real FileStore behind the Store protocol, with a disk that is full on cue.

    Appending the message with id ``fail_on``, or one for which ``append_fails``
    holds, fails like a full disk; with ``fail_after_commit`` it fails only after the
    message is committed to the tree, before its branch head moved. So do the next
    ``full_updates`` calls of ``update_message`` for which ``update_fails(message)``
    holds (every update with the default), e.g. a reply's final write.
    """

    def __init__(
        self,
        inner: FileStore,
        fail_on: str | None = None,
        *,
        append_fails: Callable[[Message], bool] | None = None,
        fail_after_commit: bool = False,
        full_updates: int = 0,
        update_fails: Callable[[Message], bool] | None = None,
    ) -> None:
        self.inner = inner
        self.fail_on = fail_on
        self.append_fails = append_fails or (lambda _message: False)
        self.fail_after_commit = fail_after_commit
        self.full_updates = full_updates
        self.update_fails = update_fails or (lambda _message: True)

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
        if message.id == self.fail_on or self.append_fails(message):
            if self.fail_after_commit:
                await self.inner.append_message(context_id, message, branch=None)
            raise OSError(errno.ENOSPC, "No space left on device")
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
        # FileStore.start_append (what a send() on an event loop uses), failing as
        # append_message does.
        if message.id == self.fail_on or self.append_fails(message):
            if self.fail_after_commit:
                self.inner.start_append(context_id, message, branch=None).result()
            failed: concurrent.futures.Future[None] = concurrent.futures.Future()
            failed.set_exception(OSError(errno.ENOSPC, "No space left on device"))
            return failed
        return self.inner.start_append(
            context_id, message, branch=branch, expected_head=expected_head
        )

    async def update_message(self, context_id: str, message: Message) -> None:
        if self.full_updates > 0 and self.update_fails(message):
            self.full_updates -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        await self.inner.update_message(context_id, message)


class TakenMeanwhile:
    """The real FileStore behind the Store protocol. Creating one of the branches
    ``names`` is preceded, the first time, by the same name's creation through a
    FileStore of its own, as another process would: one that picked the same free
    name at the same moment and was first. ``taken`` lists the names so taken."""

    def __init__(self, inner: FileStore, data_dir: Path, names: set[str]) -> None:
        self.inner, self.data_dir, self.names = inner, data_dir, set(names)
        self.taken: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def create_branch(self, context_id: str, name: str, **options: Any) -> Any:
        if name in self.names:
            self.names.discard(name)
            self.taken.append(name)
            async with FileStore(self.data_dir) as other:
                await other.create_branch(context_id, name, head=None)
        return await self.inner.create_branch(context_id, name, **options)


class FailingStoreWithoutStart(FailingStore):
    """A FailingStore without ``start_append``, as a Store written elsewhere may be: a
    send() on an event loop then stores the user's message on the store's own loop."""

    start_append = None  # type: ignore[assignment]


class HeldFsync:
    """An ``fsync`` that waits for :meth:`release` once :meth:`hold` was called."""

    def __init__(self) -> None:
        self.calls = 0
        self._held = threading.Event()
        self._go = threading.Event()
        self.waiting = threading.Event()  # an fsync is waiting now

    def hold(self) -> None:
        self._go.clear()
        self._held.set()

    def release(self) -> None:
        self._held.clear()
        self._go.set()

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self._held.is_set():
            self.waiting.set()
            self._go.wait(timeout=30)
        os.fsync(fd)


async def ticks_while(awaitable: Awaitable[object], fsync: HeldFsync) -> int:
    """Await ``awaitable`` while counting how often the loop runs a 1 ms ticker, and
    release ``fsync`` after 0.3 s; returns the ticks counted before the release."""
    ticks = 0
    released = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not released.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    async def release_later() -> int:
        await asyncio.sleep(0.3)
        counted = ticks
        fsync.release()
        released.set()
        return counted

    counter = asyncio.ensure_future(ticker())
    releaser = asyncio.ensure_future(release_later())
    await awaitable
    counted = await releaser
    await counter
    return counted


def damage_file(file: Path, loss: str, previous: bytes = b"") -> None:
    """Leave of ``file`` what a power loss (or a disk) may leave of a file renamed into
    place but not synced: ``missing``, ``empty``, the ``older`` version (``previous``),
    or as long as it was but ``zeroed`` or ``garbled``."""
    size = file.stat().st_size
    if loss == "missing":
        file.unlink()
    elif loss == "empty":
        file.write_bytes(b"")
    elif loss == "older":
        file.write_bytes(previous)
    elif loss == "zeroed":
        file.write_bytes(bytes(size))
    else:
        data = bytearray(file.read_bytes())
        data[size // 2 : size // 2 + 4] = b"\xff\xfe\x00\x01"
        file.write_bytes(bytes(data))
    assert loss in ("missing", "empty", "older") or file.stat().st_size == size
