"""Storing the user's message of a ``send()``: at once from a script, in the background
on an event loop.

:class:`PromptWrites` is a base of :class:`~cm_notebook._session_core.SessionCore`. From
a script, ``send()`` stores the message before it returns (:meth:`_append_prompt`), so a
failure raises there. On an event loop the loop must not wait for the disk: the write
starts at once (:meth:`_start_prompt`) through the store's ``start_append`` where it
offers one (no event loop involved: made on the spot when it need not wait, its fsync
made on another thread, else on a store worker thread), else on the store's own loop,
and the turn waits for it before it asks for a reply. Either way the session's own
reads wait for it (:class:`~cm_notebook._sessionio.StoreAccess`), the message is
announced (``MessageAdded``) once it is stored, and an append that failed after its
commit point is settled: its head move is finished, or the error says what to do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib

from . import events as ev
from ._session_messages import MessageCache
from ._sessionio import StoreAccess
from ._turn_writes import settle_append
from .errors import StorageFullError, StoreError, StoreIOError
from .model import Message
from .store import Store
from .store.oserrors import DISK_FULL

__all__ = ["PromptWrites"]


class PromptWrites:
    """Writes the user's message of a send (see the module docstring)."""

    id: str
    _loop: asyncio.AbstractEventLoop
    _store: Store
    _io: StoreAccess
    _messages: MessageCache

    def _publish(self, event: ev.BaseEvent) -> None:
        raise NotImplementedError  # SessionCore's: on the session loop's thread

    def _publish_here(self, event: ev.BaseEvent) -> None:
        raise NotImplementedError  # SessionCore's: delivers at once (on the loop's thread)

    def _append_prompt(self, branch: str, message: Message) -> None:
        self._io.call(self._store_prompt(branch, message))

    async def _store_prompt(self, branch: str, message: Message) -> None:
        # The user's message, after the head it was written against (expected_head): if
        # another writer moved the branch since, fail loudly rather than fork the
        # conversation behind its back.
        try:
            await self._store.append_message(
                self.id, message, branch=branch, expected_head=message.parent_id
            )
        except OSError as exc:
            await self._settle_prompt(branch, message, exc)
            return
        self._prompt_stored(branch, message)

    async def _settle_prompt(self, branch: str, message: Message, error: BaseException) -> None:
        # The append of the user's message raised ``error``. An OSError may have come
        # after its commit point: finish the head move if so (then announce it), else
        # say what went wrong and what to do.
        if not isinstance(error, OSError):
            raise error
        if not await settle_append(self._store, self.id, branch, message):
            # The remedy for what went wrong: a full disk wants space, anything else
            # (a read-only file system, permissions) what the error names put right.
            full = isinstance(error, StorageFullError) or error.errno in DISK_FULL
            remedy = (
                "free disk space"
                if full
                else "put right what it names (say, a read-only or locked data folder)"
            )
            text = (
                f"your message could not be stored: {str(error).rstrip('. ')}. Nothing was "
                f"sent; {remedy} and send it again."
            )
            # Of the store's error's class (a read-only folder stays a StoreIOError, a
            # full disk a StorageFullError), so that its callers can tell them apart.
            if isinstance(error, StoreIOError):
                raise type(error)(text, error.path, error.errno) from error
            raise StoreError(text) from error
        self._prompt_stored(branch, message)

    def _start_prompt(self, branch: str, message: Message) -> concurrent.futures.Future[None]:
        # Start storing the user's message without waiting (a send() on an event loop);
        # the future is done once it is stored and announced, or with the error that
        # kept it from being stored. Straight through the store where it offers it
        # (FileStore.start_append, looked up on the class so that a wrapper that
        # changes append_message is not bypassed): no event loop involved; else on the
        # store's own loop. The session's reads wait for the write either way. The
        # turn waits for the future returned, never for the write itself: cancelling
        # the turn (asyncio passes a cancellation on to the future it awaits) must not
        # cancel the write.
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        start = getattr(type(self._store), "start_append", None)
        if start is None:
            submitted = self._io.submit(self._store_prompt(branch, message))
            submitted.add_done_callback(lambda finished: _copy_outcome(finished, done))
            return done
        # ``written`` is resolved once the message is stored and announced, or its
        # failed append settled; the session's reads wait for it. Not for ``started``
        # itself: concurrent.futures wakes a waiter before it runs the callbacks, so a
        # read could otherwise run before ``stored`` announced the message or submitted
        # the settling. ``done`` (the turn's) copies it; a waiter may cancel ``done``.
        written: concurrent.futures.Future[None] = concurrent.futures.Future()
        written.add_done_callback(lambda finished: _copy_outcome(finished, done))
        started: concurrent.futures.Future[None] = start(
            self._store, self.id, message, branch=branch, expected_head=message.parent_id
        )
        self._io.track(written)

        def stored(future: concurrent.futures.Future[None]) -> None:
            # On the thread that finished the write. ``written`` is always resolved.
            if future.cancelled():  # never started: the worker pool was shut down
                _resolve(written, cancelled=True)
                return
            error = future.exception()
            if error is not None:  # settled on the store's loop (it reads the store)
                try:
                    settling = self._io.submit(self._settle_prompt(branch, message, error))
                except BaseException as exc:
                    _resolve(written, error=exc)
                    raise
                settling.add_done_callback(lambda settled: _copy_outcome(settled, written))
                return
            try:
                self._prompt_stored(branch, message, later=True)
            finally:
                _resolve(written)  # stored, even if announcing it failed

        started.add_done_callback(stored)
        return done

    def _prompt_stored(self, branch: str, message: Message, *, later: bool = False) -> None:
        # ``later``: the announcement is queued on the session's loop, never delivered
        # before this returns, even on the loop's own thread. ``stored`` above runs
        # there when the write was done before its callback was added (a write that
        # needed no worker), inside send(): delivered at once, a callback reading the
        # session (a view) would wait for ``written``, which is resolved after this.
        self._messages.remember(message)
        added = ev.MessageAdded(
            branch=branch, message_id=message.id, parent_id=message.parent_id, role="user"
        )
        if not later:
            self._publish(added)
            return
        with contextlib.suppress(RuntimeError):  # an ended loop has nobody left to tell
            self._loop.call_soon_threadsafe(self._publish_here, added)


def _copy_outcome(
    source: concurrent.futures.Future[None], target: concurrent.futures.Future[None]
) -> None:
    # Resolve ``target`` as ``source`` was (concurrent.futures has no chaining of its own).
    if source.cancelled():
        _resolve(target, cancelled=True)
    else:
        _resolve(target, error=source.exception())


def _resolve(
    target: concurrent.futures.Future[None],
    *,
    error: BaseException | None = None,
    cancelled: bool = False,
) -> None:
    # Resolve ``target``, unless it is done already (its waiter may have cancelled it).
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        if cancelled:
            target.cancel()
        elif error is not None:
            target.set_exception(error)
        else:
            target.set_result(None)
