"""What one :class:`~cm_notebook.store.filestore.FileStore` knows about one context.

A :class:`ContextState` caches the context's metadata (through a
:class:`~.metadata_file.MetadataFile`) and message index, keeps them in step with the
disk, merges the journal's head moves into the metadata, and owns the context's locks:

* ``state_lock`` (a thread lock) guards the cached fields; held briefly by readers.
* ``write_lock`` (a thread lock) lets one thread of this FileStore write at a time.
  The file lock below counts re-entries per object, so without this lock two threads
  of one process would both "hold" it.
* ``file_lock`` (an :class:`~.oslock.OSLock` on ``<context>/.lock``) serialises
  writers across processes and across FileStore objects in one process (each has its
  own open file, and ``flock`` locks are per open file).
* one :class:`~.oslock.OSLock` per message this FileStore is streaming, on
  ``.streaming-<message id>.lock``. The OS drops it when the process dies, which is how
  a reader tells a crashed stream (lock free: mark it ``interrupted``, keeping its
  partial text) from a live one (lock held: leave it alone). Readers check whenever
  the index lists a stream they are not writing themselves, so a long-lived reader
  notices a writer's death too, not only a newly opened one (see :mod:`.dead_streams`).

Lock order is always write_lock -> file_lock -> state_lock; readers take only
state_lock, so they never wait for another process.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from ..errors import (
    ContextNotFoundError,
    CorruptDataError,
    StoreError,
    StoreLockTimeoutError,
)
from ..model import ContextMetadata
from .atomic import Fsync
from .base import IndexEntry
from .dead_streams import interrupt_dead_streams, writer_is_dead
from .diagnostics import warn
from .flushing import OwedFlushes
from .head_moves import HeadMoves
from .index import MessageIndex, RebuildNeeded
from .leftovers import remove_leftovers
from .metadata_file import MetadataFile
from .oserrors import translate
from .oslock import LockTimeout, OSLock, creation_lock, lock_is_held, remove_lock_shell
from .paths import LOCK_NAME, MESSAGES_DIR
from .recovered import head_the_index_lost, known_entries, listed_entries, recover_hidden
from .refused_finals import RefusedFinals
from .repair import ensure_messages_folder, repair_files
from .streaming_locks import StreamingLocks
from .tokens import Look, files_token, look, token_of, token_paths
from .torn_tail import TornTails
from .unmarked_streams import UnmarkedStreams
from .walks import WalkCache

__all__ = [
    "ContextState",
    "WouldWait",
    "creation_lock",
    "lock_is_held",
    "remove_lock_shell",
]

T = TypeVar("T")


class WouldWait(Exception):
    """A write asked not to wait (``locked(quick=True)``) would have to: nothing was
    written, and the caller makes it on a worker thread instead."""


class ContextState:
    """Cached metadata and index of one context, plus its locks (see module docstring)."""

    def __init__(
        self, context_id: str, ctx_dir: Path, lock_timeout: float, fsync: Fsync = os.fsync
    ) -> None:
        self.context_id = context_id
        self.fsync = fsync
        self.dir = ctx_dir
        self.lock_timeout = lock_timeout
        #: metadata.json as last read or written (see :mod:`.metadata_file`).
        self.metadata_file = MetadataFile(context_id, ctx_dir, fsync)
        self.metadata_path = self.metadata_file.path
        #: ``<context>/messages`` as a string, for joining trusted ids cheaply.
        self.messages_dir = str(ctx_dir / MESSAGES_DIR)
        self.state_lock = threading.Lock()
        self.write_lock = threading.Lock()
        self.file_lock = OSLock(ctx_dir / LOCK_NAME)
        self.index = MessageIndex(ctx_dir, fsync)
        self.walks = WalkCache()  # recent walks to the root (see ops.walk)
        self.flushes = OwedFlushes()  # message files to fsync (see flushing.py)
        self._merged: tuple[tuple[int, int, int], ContextMetadata] | None = None
        self._moves = HeadMoves()  # the branches journal lines moved, as last merged
        self._swept = False  # see _sweep: once per load of the context
        self._quick = False  # a write on the caller's thread is under way: see locked()
        # What _check_heads last found complete: (metadata.json as read, index generation).
        self._heads_checked: tuple[ContextMetadata, int] | None = None
        self.streaming = StreamingLocks(context_id, ctx_dir)
        self.unmarked = UnmarkedStreams(ctx_dir)  # dead streams it could not mark
        self.refused, self.torn = RefusedFinals(), TornTails()  # see each's module
        #: The current metadata as of a :func:`files_token`: what a read found (token
        #: taken before it) or a write left (token taken before the lock is let go).
        #: Replaced whole, so a reader without the lock sees one consistent pair.
        self.known: tuple[tuple[int, ...], ContextMetadata] | None = None
        self._token_paths = token_paths(ctx_dir)

    @property
    def metadata(self) -> ContextMetadata | None:
        """metadata.json as last read or written (None: not read yet)."""
        return self.metadata_file.metadata

    @property
    def heads_at(self) -> int:
        """The ``heads_at`` of :attr:`metadata`: its heads include every head move of
        the journal lines numbered below it."""
        return self.metadata_file.heads_at

    # -- reading (state_lock held) ---------------------------------------------------

    def refresh(self, looked: Look | None = None) -> ContextMetadata:
        """Bring metadata, then the index, up to date; return the current metadata.

        Metadata first: a head in metadata.json was committed to the journal before the
        metadata was written, so an index read afterwards always contains it. The result
        is metadata.json with the head moves and time of later journal lines applied.

        ``looked``: a :meth:`look` just taken, so the files are not looked at twice.
        Its results for the index files were taken after metadata.json's, so they stand
        for the index's refresh while metadata.json is unchanged; when it must be read
        anew, the index files are looked at again after that read.
        """
        base, index_looked = self._read_base(looked)
        generation = self.index.generation
        metadata = self._current(base, index_looked)
        if self.index.generation != generation:
            # The index was read anew: another process may have folded the journal. A
            # fold saves the heads in metadata.json before it replaces the journal, so
            # if it came between the two reads, the moves it folded are in neither.
            newer = self.metadata_file.read()
            if newer is not base:
                base, metadata = newer, self._current(newer)
        self._check_heads(base, metadata)
        return metadata

    def look(self) -> list[os.stat_result | None]:
        """``lstat`` the files that make the context's token (see :mod:`.tokens`), in
        the order a refresh needs them; ``token_of`` the result is :meth:`token`."""
        return look(self._token_paths)

    def _read_base(
        self, looked: Look | None
    ) -> tuple[ContextMetadata, tuple[os.stat_result | None, os.stat_result | None] | None]:
        # metadata.json now, and the journal's and the snapshot's results of ``looked``
        # if they may serve the refresh: only if metadata.json was not read anew since.
        known = self.metadata
        base = self.metadata_file.read(looked[0] if looked else None)
        if looked is None or base is not known:
            return base, None
        return base, (looked[1], looked[2])

    def _current(
        self,
        base: ContextMetadata,
        looked: tuple[os.stat_result | None, os.stat_result | None] | None = None,
        *,
        refresh: bool = True,
    ) -> ContextMetadata:
        """``base`` (metadata.json) with what journal lines since ``heads_at`` changed.

        ``refresh=False``: the index is known to be current (this state's own write,
        under the lock it still holds), so its files are not looked at.
        """
        generation = self.index.generation
        if refresh:
            self.index.refresh(looked)
        if self.index.generation != generation:
            self.flushes.journal_reloaded()  # read anew: its places name other copies
        if self.index.next_n < self.heads_at:
            self.index.next_n = self.heads_at  # numbers never go back, even after a rebuild
        key = (id(base), self.index.heads_version, self.heads_at)
        if self._merged is not None and self._merged[0] == key:
            return self._merged[1]
        moved = self._moves.branches(base, self.index, self.heads_at)
        update: dict[str, object] = {"branches": {**base.branches, **moved}} if moved else {}
        last = self.index.last_at
        if last is not None and last[0] >= self.heads_at:
            with contextlib.suppress(ValueError, TypeError):
                at = datetime.fromisoformat(last[1])
                if at > base.updated_at:  # TypeError for a naive time: ignored
                    update["updated_at"] = at
        merged = base.model_copy(update=update) if update else base
        self._merged = (key, merged)
        return merged

    def _check_heads(self, base: ContextMetadata, metadata: ContextMetadata) -> None:
        """Raise RebuildNeeded if a branch head is intact on disk but absent from the index.

        A head reaches metadata.json only after its journal line is durable, so an index
        without it lost lines (a journal cut short, an old snapshot copied back): rebuild
        it from the message files. A head whose file is gone or unreadable is left to the
        readers, which report that file by path; rebuilding could not bring it back.
        Done once per metadata.json (``base``) and load of the index: in between, the
        index only gains entries, and the journal's head moves name entries it holds.
        """
        generation, checked = self.index.generation, self._heads_checked
        if checked is not None and checked[0] is base and checked[1] == generation:
            return
        self._check_all_heads(metadata)
        self._heads_checked = (base, generation)

    def _check_all_heads(self, metadata: ContextMetadata) -> None:
        branch = head_the_index_lost(self.dir, self.index.entries, metadata)
        if branch is not None:
            raise RebuildNeeded(
                f"it does not list message {branch.head!r}, the head of branch "
                f"{branch.name!r}, although its file is intact (the journal was cut short "
                "or an old index was restored)",
                self.index.journal_path,
            )

    def token(self) -> tuple[int, ...]:
        """The context's :func:`files_token` now."""
        return files_token(self._token_paths)

    def not_found(self) -> ContextNotFoundError:
        """The error for a context whose folder or metadata.json is gone."""
        return self.metadata_file.not_found()

    def view(self, func: Callable[[ContextState, ContextMetadata], T]) -> T:
        """Run ``func`` on fresh state with the state lock held; repair damage first.

        The common case costs four ``lstat`` calls (the token's, see
        :meth:`look`; they also tell what to read again). Rebuilding a damaged index and
        interrupting streams whose writer died need the write locks, so they happen in
        :meth:`locked`, and the view is then retried. If the folder cannot be written
        (read-only, a full disk), such streams read as marking would leave them
        (see :mod:`.unmarked_streams`).
        """
        if not self._swept and os.path.lexists(self.metadata_file.path):
            # Opening a context sweeps what a dead writer left, if no writer is busy (never
            # wait to read) and the folder is writable; not in one with no context (a read
            # must leave it as it was: see .stray_folders).
            self._sweep_if_writable()
        unmarked: set[str] = set()  # dead streams that could not be marked
        for _ in range(3):
            dead: list[str] = []
            torn = False
            with self.state_lock, contextlib.suppress(RebuildNeeded):
                # The token before the read: a write racing with it only makes it stale.
                looked = self.look()
                token = token_of(looked)
                # RebuildNeeded from func too: a lazily read index finds a damaged line
                # when it first reads it (see index_contents.py), and the index remembers it.
                metadata = self.refresh(looked)
                dead = [
                    mid
                    for mid in self.foreign_streams()
                    if mid not in unmarked and writer_is_dead(self.dir, mid)
                ]
                torn = self.torn.reader_due(self.index)
                if not dead and not torn:
                    self.known = (token, metadata)
                    return func(self, metadata)
            if torn and not dead:
                # Checks the fragment, unless a writer is busy (read-only: see there).
                self.torn.unwritable(self._sweep_if_writable(), self)
                continue
            try:
                with self.locked():
                    pass
            except (OSError, StoreError) as exc:
                if not dead or isinstance(exc, ContextNotFoundError):
                    raise  # a damaged index that could not be rebuilt, say
                # Marking them is a write; reading them as marked needs none.
                self.unmarked.record(dead, exc)
                unmarked.update(dead)
        raise StoreError(
            f"the index of context {self.context_id!r} keeps getting damaged while it is "
            "being repaired; is another program writing to its folder?"
        )

    def shown_entries(self) -> dict[str, IndexEntry]:
        """A copy of the index's entries, those of dead streams this reader could not
        mark as marking would leave them (see :mod:`.unmarked_streams`)."""
        return self.unmarked.entries(self.index.entries)

    def foreign_streams(self) -> list[str]:
        """Streaming messages in the index that this FileStore is not writing.

        Checked on every read, not only the first: a long-lived reader (say, a server
        process) must notice when the process streaming a reply dies. Usually there is
        none; otherwise each costs a read one flock attempt.
        """
        streams = self.index.streaming_ids
        return [mid for mid in streams if mid not in self.streaming and mid not in self.refused]

    def _sweep_if_writable(self) -> OSError | None:  # the error if it cannot write
        try:
            with self.locked(wait=False):
                pass
        except StoreLockTimeoutError:
            pass  # a writer is busy: the read goes on
        except OSError as exc:
            return exc
        except CorruptDataError as exc:
            if exc.path != self.file_lock.path:
                raise
            # The lock file is damaged (a folder, a link): writes report it, reads go on.
        return None

    def _sweep(self) -> None:
        # Once per load of the context, with every lock held (see .leftovers).
        self._swept = True
        remove_leftovers(self.dir, self.index.streaming_ids, self._indexed)

    def _indexed(self, message_id: str) -> bool:
        try:
            return self.index.lookup(message_id) is not None
        except RebuildNeeded:
            return True  # not known to be absent: nothing is removed on its account

    # -- writing ---------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self, *, wait: bool = True, quick: bool = False) -> Iterator[ContextMetadata]:
        """Hold all write locks with fresh, repaired state; yields the current metadata.

        The first time, also sweeps what dead writers left (:meth:`_sweep`). With
        ``wait=False``, raises StoreLockTimeoutError at once if a writer holds a lock.

        With ``quick=True``, for a write made on the caller's thread (an event loop's:
        see ``FileStore._write_now``), nothing is waited for: :class:`WouldWait` is
        raised, before anything is written, if any lock is held or the state needs
        more than a refresh (the first sweep, a repair, another writer's dead stream),
        and a compaction that falls due is left to the next write.
        """
        if quick and not self._swept:
            raise WouldWait
        with self.write_locks(wait=wait, quick=quick), self._state_locked(quick):
            self.known = None
            try:
                metadata = self._refresh_repaired(quick, self.look())
            except ContextNotFoundError:
                # Deleted while we waited, and an older writer (filelock) re-created the
                # folder for its lock file: remove that shell so the id can be reused.
                remove_lock_shell(self.dir)
                raise
            if not self._swept:
                self._sweep()
            self._quick = quick
            try:
                yield metadata
            except RebuildNeeded as need:
                if quick:
                    raise WouldWait from None  # the write changed nothing: see below
                raise self._damaged_while_writing(need) from None
            finally:
                self._quick = False
            self._note_known()  # skipped when the write raised

    @contextlib.contextmanager
    def _state_locked(self, quick: bool) -> Iterator[None]:
        if not self.state_lock.acquire(blocking=not quick):
            raise WouldWait
        try:
            yield
        finally:
            self.state_lock.release()

    @contextlib.contextmanager
    def write_locks(self, *, wait: bool = True, quick: bool = False) -> Iterator[None]:
        """Hold the write locks only, reading nothing (see :meth:`locked`): for removing
        a context whatever state its files are in. ``quick``: raise WouldWait at once
        if one is held."""
        timeout = self.lock_timeout if wait and not quick else 0.0
        deadline = time.monotonic() + timeout
        if not self.write_lock.acquire(timeout=timeout):
            raise WouldWait if quick else self._timeout()
        try:
            try:
                self.file_lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
            except LockTimeout:
                raise WouldWait if quick else self._timeout() from None
            except OSError as exc:
                # No folder (never made, or renamed away by delete_context, maybe while
                # we waited): the lock file's path names nothing. The lock checks that
                # its path still names the file it holds, so a lock kept open in a
                # folder that is gone is never taken for this one.
                gone = isinstance(exc, (FileNotFoundError, NotADirectoryError))
                if gone and not self.dir.is_dir():
                    raise self.not_found() from None
                # Otherwise the package's error (a read-only folder, say), never a bare one.
                raise translate(exc, self.file_lock.path, "lock") from exc
            try:
                yield
            finally:
                self.file_lock.release()
        finally:
            self.write_lock.release()

    def _note_known(self) -> None:
        # Locked: nobody else writes, so the files match what this state now holds, and
        # the token is what looking at them would give: metadata.json and the snapshot
        # as last read or written (this write's own looks and ``fstat``s), the journal
        # as an ``fstat`` of it gives if this write added to it, and the messages folder
        # (which nearly every write changes) looked at anew. Two system calls, not the
        # token's four and the refresh's three.
        try:
            meta, snapshot = self.metadata_file.stat, self.index.index_stat
            if self.metadata is None or meta is None or snapshot is None:
                self.known = (self.token(), self._current(self.metadata_file.read()))
                return
            journal = self.index.journal_stat()
            messages = os.lstat(self.messages_dir)
            token = token_of((meta, journal, snapshot, messages))
            self.known = (token, self._current(self.metadata, refresh=False))
        except (OSError, StoreError, RebuildNeeded):
            self.known = None  # the next read finds out why

    def _damaged_while_writing(self, need: RebuildNeeded) -> StoreError:
        # A write looks entries up before it writes anything, so a damaged line it found
        # (see view) stopped it before any change: rebuild now, and let the caller retry.
        self._rebuild(self.metadata_file.read(), need)
        self._merged = None
        return StoreError(
            f"the message index of context {self.context_id!r} was damaged, so it was "
            "rebuilt from the message files (see the warning) and nothing was written. "
            "Try again."
        )

    def _timeout(self) -> StoreLockTimeoutError:
        return StoreLockTimeoutError(
            f"could not lock the context folder {self.dir} within {self.lock_timeout:g} s: "
            "another process (or another FileStore) is writing to it. Try again, or raise "
            "FileStore(lock_timeout=...)."
        )

    def _refresh_repaired(self, quick: bool = False, looked: Look | None = None) -> ContextMetadata:
        # ``looked``: a look() just taken (see refresh); its messages/ serves the link check.
        base, index_looked = self._read_base(looked)
        messages = looked[3] if looked else None
        if not ensure_messages_folder(self.dir, self.fsync, make=not quick, looked=messages):
            raise WouldWait
        try:
            metadata = self._current(base, index_looked)
            self._check_heads(base, metadata)
            if quick and self.torn.due(self.index):
                raise WouldWait  # it may list messages/: not on the caller's thread
            self.torn.check(self.index, self.dir / MESSAGES_DIR)
        except RebuildNeeded as need:
            if quick:
                raise WouldWait from None
            # The rebuild's metadata, not ``base``: it has the head moves only the damaged
            # journal held, which a write working on ``base`` would drop.
            base = self._rebuild(base, need)
            metadata = self._current(base)
        if self.refused:
            if quick:
                raise WouldWait
            self.refused.write(self.index, self.dir)
        if self.foreign_streams():
            if quick:
                raise WouldWait
            interrupt_dead_streams(self.index, self.dir, self.foreign_streams())
            self.compact_if_due()
            # From metadata.json as now saved: a fold just made saved the journal's head
            # moves there and moved ``heads_at`` past them, so ``base`` with the moves
            # after ``heads_at`` would give the heads from before them (and a metadata
            # write would save those, dropping turns from their branches).
            metadata = self._current(self.metadata_file.read())
        return metadata

    def _rebuild(self, base: ContextMetadata, need: RebuildNeeded) -> ContextMetadata:
        """Rebuild the index, first saving what only the damaged journal holds; returns
        the metadata as now saved (``base`` with those head moves, and a ``recovered``
        branch for each conversation whose head move was lost: see .recovered)."""
        listed = listed_entries(self.index.index_path)
        salvaged_lines = self.index.salvage()
        self.flushes.clear()  # the rebuilt journal starts empty: its places start over
        with contextlib.suppress(OSError, StoreError, RebuildNeeded):
            repair_files(self.index, self.fsync, flush=True, compare=True)
        if self.index.next_n < self.heads_at:
            self.index.next_n = self.heads_at
        self._merged = None
        salvaged = self._merged_heads(base)
        if salvaged is not base:
            self.write_metadata(salvaged)
        known = known_entries(listed, salvaged_lines)
        found = self.index.rebuild(need.reason, need.path, known)
        return recover_hidden(self, salvaged, listed, salvaged_lines, found)

    def _merged_heads(self, base: ContextMetadata) -> ContextMetadata:
        # _current without a refresh: the index holds what salvage() found.
        moved = self._moves.branches(base, self.index, self.heads_at)
        if not moved:
            return base
        return base.model_copy(update={"branches": {**base.branches, **moved}})

    def rebuild_index(self, reason: str) -> ContextMetadata:
        """Rebuild the index from the message files now (write locks held), keeping the
        head moves the journal holds; returns the current metadata."""
        need = RebuildNeeded(reason, self.index.index_path)
        return self._current(self._rebuild(self.metadata_file.read(), need))

    def restore(self, message_ids: list[str], *, compare: bool = False) -> None:
        """Rewrite from the journal the files of these messages that a power loss took
        (with ``compare``, also those of the right size whose bytes differ).

        Best effort, for a reader about to read them: if it cannot be done now, the
        reader reports the damaged file and compaction restores it later.
        """
        with contextlib.suppress(StoreError, OSError, RebuildNeeded), self.locked():
            repair_files(self.index, self.fsync, flush=False, only=message_ids, compare=compare)

    def compact_if_due(self) -> None:
        """Fold the journal into the snapshot when it has grown enough (see index.py).

        What only the journal holds is made durable elsewhere first: message files
        (fsync'd, or rewritten from the journal if a power loss took them) and the
        branch heads (metadata.json). Called after a write is complete: the write is
        committed either way, so a failure (say, a full disk) is a warning, not an
        error of the write, and compaction is retried after the next write.
        """
        if self._quick:
            return  # not on the caller's thread: the next write does it
        if self.flushes.due():
            try:
                self.flushes.pay(self.index, self.fsync)
            except (OSError, StoreError, RebuildNeeded) as exc:  # compaction retries
                warn(f"could not make message files durable ({exc}); will retry", self.dir)
        if not self.index.compaction_due():
            return
        try:
            self.compact()
        except (OSError, RebuildNeeded) as exc:  # StoreIOError included
            warn(
                f"could not compact the message index ({exc}); will retry",
                self.index.index_path,
            )

    def compact(self) -> None:
        """Fold the journal now (locked, fresh): see :meth:`compact_if_due`."""
        if self.metadata is None:
            return
        repair_files(self.index, self.fsync, flush=True, flushed=self.flushes.flushed, compare=True)
        current = self._current(self.metadata)
        if current is not self.metadata or self.index.heads or self.index.last_at:
            self.write_metadata(current)
        self.index.compact()
        self.flushes.clear()

    def write_metadata(self, metadata: ContextMetadata) -> None:
        """Atomically and durably replace metadata.json (locked); remember what was written.

        ``metadata`` is the current metadata (heads included), so the file includes
        every head move of the journal so far: its ``heads_at`` is the next line number.
        """
        heads_at = self.index.next_n
        # Its heads may name a message whose journal line is not durable yet (a reply's
        # placeholder): that line first, or a power loss leaves a head to nowhere.
        self.index.make_durable()
        self.metadata_file.write(metadata, heads_at)

    def close(self) -> None:
        """Release streaming locks and close held files; the state can be reloaded later."""
        self.streaming.close()
        self.unmarked.clear()
        self.index.close()
        self.file_lock.close()
        self.metadata_file.close()
        self._merged = None
        self.known = None
        self._heads_checked = None
        self.flushes.clear()
        self._swept = False
