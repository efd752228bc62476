"""Message writes made on the caller's thread, when they need not wait for anything.

A store hands its file work to worker threads (:mod:`.workers`), and that trip costs
two thread wake-ups and, while the worker makes its system calls, the GIL handed to
and fro with the caller's event loop: more CPU than a small write itself. So a write
of a message is made on the caller's thread when every lock of its context is free
and the state needs nothing but a refresh (``ContextState.locked(quick=True)``):

- a message still streaming (a reply's placeholder, a checkpoint) commits nothing and
  makes no fsync: it is done when :func:`write_now` returns;
- a finished message's journal line, its commit point, is written without its fsync;
  the locks are released, and the write is acknowledged once :func:`acknowledge` (or
  :func:`acknowledge_later`) has had the line fsync'd on another thread, beside the
  fsyncs of other writes made meanwhile (:mod:`.group_sync`). A crash before that
  loses nothing acknowledged: ``kill -9`` leaves the line to the OS, a power loss may
  take it, unacknowledged.

A batch of message-file fsyncs or a compaction the write makes due (see
``ContextState.compact_if_due``) is made on a worker before the write is
acknowledged, as a write made there makes it before it returns.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import StoreError
from ..model import Message, MessageStatus
from . import oserrors
from .atomic import Fsync
from .codec import encode_message_forms
from .context import ContextState, WouldWait
from .group_sync import synced, synced_future
from .index import DeferredLine
from .workers import run_blocking, submit_blocking

__all__ = ["Written", "acknowledge", "acknowledge_later", "write_now"]


@dataclass(frozen=True)
class Written:
    """A write :func:`write_now` made, and what it still owes before it is acknowledged."""

    line: DeferredLine | None  # the journal line to fsync, if the write committed one
    fold_due: bool  # a batch of fsyncs or a compaction is due


def write_now(
    state: ContextState, func: Callable[..., None], message: Message, *args: Any
) -> Written | None:
    """Make ``func(state, metadata, message, encoded, *args)`` (a message write of
    :mod:`.ops`) here, if nothing has to be waited for; None if it was not made (make
    it on a worker). Raises what the write raises."""
    data = encode_message_forms(message)
    durable = message.status is not MessageStatus.STREAMING
    try:
        with state.locked(quick=True) as metadata, state.index.deferred_fsync() as lines:
            try:
                func(state, metadata, message, data, *args)
            except BaseException:
                for line in lines:
                    os.close(line.fd)
                raise
            fold_due = durable and (state.flushes.due() or state.index.compaction_due())
    except WouldWait:
        return None
    return Written(lines[0] if lines else None, fold_due)


async def acknowledge(state: ContextState, written: Written, fsync: Fsync) -> None:
    """Wait until ``written`` may be acknowledged: its line fsync'd, what it made due
    made. Raises the package's error if the fsync failed."""
    if written.line is not None:
        try:
            await synced(written.line.fd, fsync)
        except OSError as exc:
            raise oserrors.translate(exc, state.index.journal_path, "write") from exc
        _note_synced(state, written.line)
    if written.fold_due:
        await run_blocking(lambda: _fold_if_due(state))


def acknowledge_later(
    state: ContextState, written: Written, fsync: Fsync
) -> concurrent.futures.Future[None]:
    """:func:`acknowledge` for a caller without an event loop: a future, done on
    another thread."""
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def folded(fold: concurrent.futures.Future[None]) -> None:
        done.set_result(None)  # a fold that failed is retried by the next write

    def flushed(flush: concurrent.futures.Future[None]) -> None:
        error = flush.exception()
        if error is None and written.line is not None:
            _note_synced(state, written.line)
        if error is not None:
            if isinstance(error, OSError):
                error = oserrors.translate(error, state.index.journal_path, "write")
            done.set_exception(error)
        elif written.fold_due:
            try:
                submit_blocking(lambda: _fold_if_due(state)).add_done_callback(folded)
            except RuntimeError:  # the interpreter is shutting down: the next write folds
                done.set_result(None)
        else:
            done.set_result(None)

    if written.line is not None:
        synced_future(written.line.fd, fsync).add_done_callback(flushed)
    else:
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        ready.set_result(None)
        flushed(ready)
    return done


def _note_synced(state: ContextState, line: DeferredLine) -> None:
    # Spares a metadata.json write the journal fsync it would owe for this line; if
    # the state is busy, that write makes the fsync, which costs only time.
    if state.state_lock.acquire(blocking=False):
        try:
            state.index.synced_through(line)
        finally:
            state.state_lock.release()


def _fold_if_due(state: ContextState) -> None:
    # The write is acknowledged whatever happens here: a lock held elsewhere, a
    # deleted context or a failure (already warned of) leaves it to the next write.
    # A state the store closed meanwhile is left alone: locking it would open its
    # files again, and nothing would close them.
    if not state.index.loaded:
        return
    with contextlib.suppress(StoreError, OSError), state.locked(wait=False):
        state.compact_if_due()
