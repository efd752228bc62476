"""The crash-safe, multi-process file store that ships with cm_notebook.

Layout of one context (a self-contained folder: copy, zip, version or delete it whole)::

    <data dir>/contexts/<context_id>/
        metadata.json           title, branches, active branch, provider settings (never
                                secrets), schema version, timestamps; ``heads_at``: the
                                journal line up to which its branch heads are current
        message_index.json      compacted snapshot of the message index
        message_index.journal   changes since the snapshot, one line each: new messages
                                and status changes (a finished message's line carries
                                the message itself), branch head moves, write times
        messages/<message_id>.json
        scores/<message_id>.json  ratings and metrics of a message (see .scores)
        .lock                   cross-process write lock
        .streaming-<id>.lock    held by the process streaming that message
        .claim-<digest>.lock    held by the writer running a turn on a branch
        signals/signals.log     the context's numbered signals (cm_notebook.signal_log),
                                in a folder of its own: watching it for other processes'
                                signals is not woken by the store's own writes

The write path. One fsync'd journal line is the commit point of every acknowledged
change: it carries the index entry, the head move, the time and, for a finished
message, the message. The message file is written first, atomically (temporary file
and rename) but without an fsync: after ``kill -9`` it is complete (the OS holds it);
after a power loss the line holds the message, and reading the message (a page, say)
rewrites a missing, older or damaged file from it (:mod:`.repair`). An update of a
message already finished first writes a line without an fsync that marks the update
under way: one killed before its commit line leaves a file newer than the committed
version, which is put back without a warning, as no damage (:mod:`.pending`). Message
files are fsync'd 32 at a time by the write that commits the 32nd different message
(:mod:`.flushing`), and compaction makes the rest durable before it drops the lines
(see :mod:`cm_notebook.store.index`).
metadata.json is rewritten only by the operations that change it and at compaction,
never to move a head. fsyncs (directory fsyncs included) and renames per operation:

=======================================================  ======  =======
operation                                                fsyncs  renames
=======================================================  ======  =======
append a finished message (moving a head or not)         1       1
append a streaming message (a reply's placeholder)       0       1
update_message, a checkpoint (status stays streaming)    0       1
update_message, the final state or any other change      1       1
(of a finished message: one more line, not fsync'd)
set_branch_head                                          1       0
create_branch, update_branch, delete_branch,             2       1
set_active_branch, update_metadata (metadata.json)
create_context (+1 fsync for a new contexts/ folder)     7       4
every 32nd different message this store commits         33      0
(the batch of message files, then their folder)
compaction (after >= 128 lines, then geometrically;      k + 7   3
k = messages whose last version no batch made durable)
=======================================================  ======  =======

A metadata.json write takes one more fsync (of the journal) when a journal line before
it may not be durable yet (a reply's placeholder, another writer's line): its heads
must never name a message whose line a power loss could take.

A plain turn (the user's message, the reply's placeholder, its final state) therefore
makes 2 fsyncs and 3 renames, plus its share of the batches (about one fsync per
finished message, as the floor of one durable file per message also pays); a tool
cycle 6. (The reply's streaming lock file is also moved from and back to a spare name,
without an fsync: see :mod:`.streaming_locks`.) No single write waits for more than one
batch. The streaming writes make no fsync at all: a compaction one of them makes due is
made by the next write.
Unacknowledged states are not fsync'd: a reply still streaming when the power fails
may be lost or show older partial text, which ``kill -9`` alone never does.

Where the work is done. Every store call does its file work on a worker thread
(:mod:`.workers`), but for a message written when every lock of its context is free
and nothing else is due (a repair, a batch of fsyncs, a compaction), the caller's
thread makes the write itself (:mod:`.quick_writes`): a streaming message's at once;
a finished one's journal line without its fsync, which a thread of the fsync pool
then makes, after the locks are released, beside the fsyncs of other writes made
meanwhile (:mod:`.group_sync`); the call returns once it is made. The fsyncs
counted above are the same either way.

So a crash at any point leaves either no trace, an unreferenced message file (an
append cut short before its commit: ``check`` lists it; a reply's empty placeholder is
removed when the context opens), or a committed message that no branch points at yet
(its append never returned) - never a half-written file or a dangling head. An append
that fails with an error instead (a full disk:
:class:`~cm_notebook.errors.StorageFullError`) takes its journal line and
message file back, so it leaves no trace at all; opening a context removes what
killed writers left (temporary files, unused streaming locks), and listing contexts
the half-built folders of killed ``create_context`` calls. Folders written by older
versions (heads only in metadata.json, journal lines without numbers) open as they
are and are written in this format from then on.

Errors are the package's own: damaged files are ``CorruptDataError`` (or
``SchemaVersionError``) naming the file, and any ``OSError`` is translated at this
class's boundary into ``StoreIOError``/``StorageFullError`` naming the path.

Reads never take the cross-process lock (but to restore a file, above). Before each
read the store ``lstat``s the metadata, journal, snapshot and messages folder (the
context's change token, :mod:`.tokens`) and loads only what changed (large index files
lazily: see :mod:`.lazy`), so a FileStore notices other processes' writes on its next
call at the cost of four ``lstat`` calls. A write looks at the same four files once it
holds the lock (and at the lock file, which must still be the one locked), and leaves
the token its own changes made known with two more calls (:mod:`.context`). Ids
from the index were validated when they entered it (from a caller or from disk), so
reading a message joins its path without validating the id again.
"""

from __future__ import annotations

import concurrent.futures
import functools
import os
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from types import EllipsisType, TracebackType
from typing import Any, TypeVar

from ..errors import CMError, ContextNotFoundError, InvalidInputError
from ..ids import validate_branch_name, validate_message_id
from ..model import ContextMetadata, Message
from . import folders, ops, oserrors
from .atomic import Fsync
from .base import IndexEntry
from .branches import BranchWrites, check_message_ids
from .codec import encode_message_forms
from .context import ContextState
from .deletion import ContextDeletion
from .folders import create_context_folder, current_metadata, list_context_folders
from .integrity import IntegrityChecks
from .paths import (
    context_dir,
    default_data_dir,
    message_path,
)
from .quick_writes import Written, acknowledge, acknowledge_later, write_now
from .scores import ScoreFiles
from .session_files import SessionFiles
from .workers import run_blocking, submit_blocking

__all__ = ["FileStore"]

T = TypeVar("T")


def _close_states(states: dict[str, ContextState]) -> None:
    for state in list(states.values()):
        state.close()
    states.clear()


class FileStore(ScoreFiles, BranchWrites, IntegrityChecks, SessionFiles, ContextDeletion):
    """A :class:`~cm_notebook.store.base.Store` on the local file system.

    ``data_dir`` defaults to :func:`~cm_notebook.store.paths.default_data_dir`
    (``$CM_NOTEBOOK_DATA_DIR`` or the per-user data folder). Writers wait up to
    ``lock_timeout`` seconds for another writer of the same context before raising
    :class:`~cm_notebook.errors.StoreLockTimeoutError`.

    ``fsync`` is the function every fsync of this store goes through (default
    :func:`os.fsync`), and of the sessions on it in the context folders (signal log,
    approval files, decision records); pass a wrapper to count or time them. It may be
    called from several threads at once (a batch of message files is fsync'd together).

    File work that may wait (an fsync, another writer's lock, a repair) runs on the
    store's worker threads (:mod:`.workers`), never on the caller's event loop. A
    write of a message still ``streaming`` (a reply's placeholder, a checkpoint)
    commits nothing and makes no fsync: it is made on the caller's thread when every
    lock is free, because handing it to a worker and back costs more than the write
    (otherwise a worker makes it). One FileStore may be shared by many tasks; several
    FileStores (in one or many processes) may share a data directory. Call
    :meth:`close` (or use ``async with``) to release locks; a message still
    ``streaming`` when its FileStore closes will be marked ``interrupted`` by the next
    reader.
    """

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        lock_timeout: float = 10.0,
        fsync: Fsync = os.fsync,
    ) -> None:
        if lock_timeout < 0:
            raise InvalidInputError(f"lock_timeout must be >= 0 seconds, got {lock_timeout!r}")
        chosen = Path(data_dir) if data_dir is not None else default_data_dir()
        #: The data directory (absolute); contexts live in ``<data_dir>/contexts``.
        self.data_dir = chosen.expanduser().absolute()
        self.lock_timeout = float(lock_timeout)
        #: Every fsync of this store goes through this function (see the class docstring).
        self.fsync = fsync
        self._states: dict[str, ContextState] = {}
        self._registry_lock = threading.Lock()
        self._swept_scores = set()
        # Held files are plain descriptors; close them even if close() is never called.
        self._finalizer = weakref.finalize(self, _close_states, self._states)

    def __repr__(self) -> str:
        return f"FileStore({str(self.data_dir)!r})"

    async def __aenter__(self) -> FileStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- plumbing ----------------------------------------------------------------------

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        # Not abandoned on cancellation: a write that started always finishes, so a
        # cancelled append either never began or is durable.
        return await run_blocking(functools.partial(self._translated, func, *args))

    def _translated(self, func: Callable[..., T], *args: Any) -> T:
        # The boundary: the primitives already raise the package's errors with precise
        # messages; anything the OS raised elsewhere (creating a folder, listing one)
        # is translated here, so callers never see a bare OSError.
        try:
            return func(*args)
        except CMError:
            raise
        except OSError as exc:
            where = exc.filename if exc.filename is not None else self.data_dir
            raise oserrors.translate(exc, where, "use") from exc

    def _state(self, context_id: str) -> ContextState:
        folders.valid_context_id(self.data_dir, context_id)
        with self._registry_lock:
            state = self._states.get(context_id)
            if state is None:
                state = self._states[context_id] = self._new_state(context_id)
            return state

    def _new_state(self, context_id: str) -> ContextState:
        folder = context_dir(self.data_dir, context_id)
        return ContextState(context_id, folder, self.lock_timeout, self.fsync)

    def _forget(self, state: ContextState) -> None:
        # Do not keep state for ids that turned out not to exist (or no longer do), so
        # probing many unknown ids cannot grow the registry.
        with self._registry_lock:
            if self._states.get(state.context_id) is not state or state.streaming:
                return
            del self._states[state.context_id]
        with state.state_lock:
            state.close()  # held files of a deleted context

    def _view(self, context_id: str, func: Callable[[ContextState, ContextMetadata], T]) -> T:
        state = self._state(context_id)
        try:
            return state.view(func)
        except ContextNotFoundError:
            self._forget(state)
            raise

    def _write(self, context_id: str, func: Callable[..., T], *args: Any) -> T:
        state = self._state(context_id)
        try:
            with state.locked() as metadata:
                return func(state, metadata, *args)
        except ContextNotFoundError:
            self._forget(state)
            raise

    def _write_message(
        self, context_id: str, func: Callable[..., T], message: Message, *args: Any
    ) -> T:
        # The message's file bytes and journal form are made here, on the worker
        # thread and outside the locks, not on the caller's event loop.
        return self._write(context_id, func, message, encode_message_forms(message), *args)

    def _write_now(
        self, context_id: str, func: Callable[..., None], message: Message, *args: Any
    ) -> Written | None:
        # On the caller's thread if it waits for nothing (see .quick_writes); None:
        # nothing was written, make it on a worker.
        state = self._states.get(context_id)
        if state is None:  # a context not opened here yet: its first write sweeps
            return None
        try:
            return write_now(state, func, message, *args)
        except ContextNotFoundError:
            self._forget(state)
            raise

    # -- contexts ----------------------------------------------------------------------

    async def create_context(self, metadata: ContextMetadata) -> ContextMetadata:
        """Create an empty context described by ``metadata``; its id must be new."""
        return await self._run(self._create_context, metadata)

    def _create_context(self, metadata: ContextMetadata) -> ContextMetadata:
        create_context_folder(self.data_dir, metadata, self.fsync)
        return metadata.model_copy(deep=True)

    async def list_contexts(self, skipped: folders.Skipped | None = None) -> list[ContextMetadata]:
        """Metadata of every readable context, most recently updated first.

        Folders that are not valid contexts are skipped, each with a StoreWarning whose
        ``.path`` names the damaged file (and whose message says what to do), so one
        damaged context never hides the others; each is also added to ``skipped`` if given.
        """
        return await self._run(self._list_contexts, skipped)

    def _list_contexts(self, skipped: folders.Skipped | None) -> list[ContextMetadata]:
        found = []
        for metadata in list_context_folders(self.data_dir, skipped):
            with self._registry_lock:
                state = self._states.get(metadata.id)
            found.append(current_metadata(metadata, state, self._new_state))
        found.sort(key=lambda metadata: metadata.updated_at, reverse=True)
        return found

    async def get_metadata(self, context_id: str) -> ContextMetadata:
        """The context's current metadata (re-read if another process changed it)."""
        return (await self.shared_metadata(context_id)).model_copy(deep=True)

    async def shared_metadata(self, context_id: str) -> ContextMetadata:
        """:meth:`get_metadata` without the copy: the store's own object, to read values
        out of and never to change (the store never changes it in place either: a
        write makes a new one). A copy costs more the more branches there are: a
        sweep's context has one per cell, and its sessions read the metadata anew after
        every other cell's write."""
        return await self._run(self._view, context_id, lambda _s, m: m)

    async def update_metadata(
        self,
        context_id: str,
        *,
        title: str | None = None,
        system_prompt: str | None = None,
        tags: list[str] | None = None,
        provider_spec: str | None = None,
        provider_params: dict[str, object] | None = None,
        expected_title: str | None = None,
    ) -> ContextMetadata:
        """Change the given fields (None leaves a field alone); returns the new metadata.

        Provider parameters that look like secrets are refused (InvalidInputError). With
        ``expected_title``, a compare-and-set under the context's lock: ``StateError``
        (and nothing written) if the title is no longer that one, so an automatic title
        never replaces one another writer gave meanwhile.
        """
        changes = {
            key: value
            for key, value in (("title", title), ("system_prompt", system_prompt), ("tags", tags))
            if value is not None
        }
        updated: ContextMetadata = await self._run(
            self._write,
            context_id,
            ops.do_update_metadata,
            changes,
            provider_spec,
            provider_params,
            expected_title,
        )
        return updated.model_copy(deep=True)

    # -- messages ----------------------------------------------------------------------

    async def append_message(
        self,
        context_id: str,
        message: Message,
        *,
        branch: str | None,
        expected_head: str | EllipsisType | None = ...,
    ) -> Message:
        """Add ``message`` to the tree; with ``branch``, also move that branch's head to it.

        The parent (if any) must exist and the id must be new. Returns once the message
        and the head move are durable. A message appended with status ``streaming``
        is locked as "being written by this process" until it leaves that status.

        The head moves unconditionally: if another writer moved the branch after the
        caller read it, the last append wins and the other message is left off the
        branch (still in the tree). Pass ``expected_head`` (the head the caller read;
        None for an empty branch) to make the move a compare-and-set: if the head is no
        longer ``expected_head``, nothing is written and
        :class:`~cm_notebook.errors.StateError` is raised.

        If it raises (:class:`~cm_notebook.errors.StorageFullError` when the disk is
        full), nothing was written; but a failed fsync (a disk's I/O error, raised as
        the StoreIOError naming the journal) may leave the message stored.
        """
        call = self._append_call(context_id, message, branch, expected_head)
        written = self._translated(
            self._write_now, context_id, ops.do_append, message, branch, expected_head
        )
        if written is None:
            await run_blocking(call)
        else:
            await acknowledge(self._state(context_id), written, self.fsync)
        return message

    def start_append(
        self,
        context_id: str,
        message: Message,
        *,
        branch: str | None,
        expected_head: str | EllipsisType | None = ...,
    ) -> concurrent.futures.Future[None]:
        """:meth:`append_message`, under way when this returns; returns its future.

        For a caller that must not wait for the disk but needs the write under way
        before it returns (a ``send()`` made on an event loop): made here when it need
        not wait, its fsync on another thread, else started on a worker thread; no
        event loop is involved. The future raises what :meth:`append_message` would;
        invalid arguments raise here.
        """
        call = self._append_call(context_id, message, branch, expected_head)
        try:
            written = self._translated(
                self._write_now, context_id, ops.do_append, message, branch, expected_head
            )
        except CMError as exc:  # the future's error, as from a worker
            failed: concurrent.futures.Future[None] = concurrent.futures.Future()
            failed.set_exception(exc)
            return failed
        if written is None:
            return submit_blocking(call)
        return acknowledge_later(self._state(context_id), written, self.fsync)

    def _append_call(
        self,
        context_id: str,
        message: Message,
        branch: str | None,
        expected_head: str | EllipsisType | None,
    ) -> Callable[[], None]:
        # The arguments checked, the append as a call for a worker thread.
        check_message_ids(message.id, message.parent_id)
        if branch is not None:
            validate_branch_name(branch)
        if expected_head is not ...:
            if branch is None:
                raise InvalidInputError("expected_head needs a branch whose head it guards")
            check_message_ids(expected_head)
        return functools.partial(
            self._translated,
            self._write_message,
            context_id,
            ops.do_append,
            message,
            branch,
            expected_head,
        )

    async def update_message(self, context_id: str, message: Message) -> None:
        """Replace a message's content/status/metadata (streaming checkpoints, final state).

        The id, parent and role must not change. While the status stays ``streaming``
        only the message file is rewritten; a status change also writes a journal line.
        A finished message stays finished: a ``streaming`` update of it (say, a late
        checkpoint that lost the race with the final update) raises
        :class:`~cm_notebook.errors.StateError` and changes nothing. If it fails
        otherwise (:class:`~cm_notebook.errors.StorageFullError`), the message file holds
        the old or the new version, complete either way, and the index catches up on
        the next update.
        """
        check_message_ids(message.id, message.parent_id)
        written = self._translated(self._write_now, context_id, ops.do_update_message, message)
        if written is None:
            await self._run(self._write_message, context_id, ops.do_update_message, message)
        else:
            await acknowledge(self._state(context_id), written, self.fsync)

    async def release_stream(self, context_id: str, final: Message) -> None:
        """Let go of the streaming lock of a reply whose final state ``final`` could not
        be stored (a full disk), keeping ``final`` to store with the next write: see
        :mod:`.refused_finals`. Nothing if this store is not streaming it."""
        await self._run(self._release_stream, context_id, final)

    def _release_stream(self, context_id: str, final: Message) -> None:
        state = self._state(context_id)
        with state.state_lock:  # as readers probe streaming locks: see StreamingLocks.drop
            if final.id in state.streaming:
                state.refused.keep(final)
                state.streaming.drop(final.id, remove_file=False)

    async def get_message(self, context_id: str, message_id: str) -> Message:
        """One message, read from its own file (CorruptDataError if it is damaged)."""
        validate_message_id(message_id)
        return await self._run(self._get_message, context_id, message_id)

    def _get_message(self, context_id: str, message_id: str) -> Message:
        def check(state: ContextState, _metadata: ContextMetadata) -> ContextState:
            ops.require_message(state, message_id)
            return state

        state = self._view(context_id, check)
        ops.restore_lost(state, [message_id])
        return ops.read_restoring(state, message_path(state.dir, message_id), message_id)

    async def get_messages(self, context_id: str, message_ids: list[str]) -> list[Message]:
        """Several messages in the given order (skipping corrupt files with a warning)."""
        ids = list(message_ids)
        for message_id in ids:  # None is no message id here (a bad id is refused)
            validate_message_id(message_id)
        return await self._run(self._get_messages, context_id, ids)

    def _get_messages(self, context_id: str, message_ids: list[str]) -> list[Message]:
        def check(state: ContextState, _metadata: ContextMetadata) -> ContextState:
            for message_id in message_ids:
                ops.require_message(state, message_id)
            return state

        return ops.read_messages(self._view(context_id, check), message_ids)

    async def index(self, context_id: str) -> dict[str, IndexEntry]:
        """A snapshot of the message index: id -> entry."""
        return await self._run(self._view, context_id, lambda s, _m: s.shown_entries())

    async def children(self, context_id: str, message_id: str | None) -> list[str]:
        """Ids of the direct children of ``message_id`` (None: the roots), oldest first.

        Served from an in-memory parent -> children map.
        """
        check_message_ids(message_id)

        def get(state: ContextState, _metadata: ContextMetadata) -> list[str]:
            ops.require_message(state, message_id)
            return list(state.index.children.get(message_id, ()))

        return await self._run(self._view, context_id, get)

    async def path(self, context_id: str, branch: str | None = None) -> list[str]:
        """Message ids from the root to the head of ``branch`` (default: active branch).

        Served from the in-memory index; reads no message files.
        """
        if branch is not None:
            validate_branch_name(branch)

        def get(state: ContextState, metadata: ContextMetadata) -> list[str]:
            target = ops.find_branch(metadata, branch)
            return ops.walk(state, target.head, target.name)[::-1]

        return await self._run(self._view, context_id, get)

    async def page(
        self,
        context_id: str,
        branch: str | None = None,
        *,
        limit: int = 50,
        before: str | None = None,
    ) -> list[Message]:
        """The last ``limit`` messages of a branch's path (oldest first), reading only those.

        With ``before``, the page ends just before that message id (for scrolling back).
        The walk follows parent links in the in-memory index, so a page of a 10,000
        message context opens ``limit`` files. Unreadable files are skipped with a
        StoreWarning, so a page can be shorter than ``limit``.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise InvalidInputError(f"limit must be an integer >= 0, got {limit!r}")
        if branch is not None:
            validate_branch_name(branch)
        check_message_ids(before)
        return await self._run(self._page, context_id, branch, limit, before)

    def _page(
        self, context_id: str, branch: str | None, limit: int, before: str | None
    ) -> list[Message]:
        def select(
            state: ContextState, metadata: ContextMetadata
        ) -> tuple[ContextState, list[str]]:
            return state, ops.select_page(state, metadata, branch, limit, before)

        state, ids = self._view(context_id, select)
        # Outside the state lock: message files are replaced atomically, never edited.
        return ops.read_messages(state, ids)

    async def compact(self, context_id: str) -> None:
        """Fold the context's journal into its snapshot now (it also happens by itself).

        Afterwards every message file is durable, metadata.json holds the current
        branch heads and the journal is empty, so the folder's files say everything
        without the journal (say, before copying it for tools that read the files).
        """
        await self._run(self._write, context_id, lambda state, _metadata: state.compact())

    async def close(self) -> None:
        """Release locks and file handles. The store can still be used afterwards."""
        await self._run(self._close)

    def _close(self) -> None:
        with self._registry_lock:
            states = list(self._states.values())
            self._states.clear()
        for state in states:
            with state.write_lock, state.state_lock:
                state.close()
