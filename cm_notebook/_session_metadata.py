"""How a session reads its context's metadata: cached, refreshed when the files change.

:class:`MetadataReads` is a base of :class:`~cm_notebook._session_core.SessionCore`;
``metadata``, ``branches`` and ``active_branch`` are public API of ``ContextSession``.
The metadata is kept with the store's change token (:meth:`FileStore.change_token
<cm_notebook.store.filestore.FileStore.change_token>`) and read again only when the
token moved; after the session's own writes the store hands over what it wrote
(:meth:`FileStore.known_metadata
<cm_notebook.store.filestore.FileStore.known_metadata>`) without a thread hop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ._sessionio import StoreAccess
from .errors import BranchNotFoundError, CMError
from .ids import branch_name_key, free_branch_name, validate_branch_name
from .model import Branch, ContextMetadata
from .store import IndexEntry, Store

__all__ = ["MetadataReads"]


class MetadataReads:
    """The cached metadata and message index of a session's context."""

    id: str
    _store: Store
    _io: StoreAccess
    _lock: threading.RLock
    _metadata: ContextMetadata
    _metadata_token: object | None
    _index_cache: dict[str, IndexEntry]
    _index_token: object | None

    @property
    def metadata(self) -> ContextMetadata:
        """The context's metadata, re-read if it changed (here or in another process).

        A copy: changing it changes nothing (use the session's methods, e.g.
        ``edit_system``, ``title = ...``). Cached: reading it costs a few ``stat``
        calls and a copy unless the store's files changed, so it never waits behind
        other store work.
        """
        return self._read_metadata().model_copy(deep=True)

    def _read_metadata(self) -> ContextMetadata:
        # The current metadata, to read values out of and never to change: this
        # session's copy while the files have not changed, else the store's own after
        # its writes, else read from the store (and kept). Nothing here copies it (a
        # copy costs more the more branches there are); the public ``metadata`` does,
        # so nothing a caller does to what it was handed reaches the next request.
        token = self._change_token()
        cached = self._cached_metadata(token)
        if cached is not None:
            return cached
        fresh = self._io.call(self._fresh_metadata())
        with self._lock:
            self._metadata, self._metadata_token = fresh, token
        return fresh

    async def _fresh_metadata(self) -> ContextMetadata:
        # Read from the store, not copied where the store can hand out its own object
        # (FileStore.shared_metadata): this is read often, never changed.
        shared_of = getattr(self._store, "shared_metadata", None)
        if shared_of is None:
            return await self._store.get_metadata(self.id)
        shared: ContextMetadata = await shared_of(self.id)
        return shared

    def _cached_metadata(self, token: object | None = None) -> ContextMetadata | None:
        # The current metadata if it is to be had without a read or a thread hop (so
        # also on the session's loop): this session's copy while the files have not
        # changed (``token``: the change token just taken), else the store's own object
        # after this session's writes (FileStore.known_metadata, not copied: the store
        # never changes it in place). None otherwise.
        if token is None:
            token = self._change_token()
        with self._lock:
            if token is not None and token == self._metadata_token:
                return self._metadata
        known = self._known_metadata(token)
        if known is None:
            return None
        token, fresh = known
        with self._lock:
            self._metadata, self._metadata_token = fresh, token
        return fresh

    def _known_metadata(self, token: object | None) -> tuple[object, ContextMetadata] | None:
        # The store's own metadata when it knows it is current (FileStore.known_metadata):
        # after this session's own writes, no thread hop and no read. Not while a
        # submitted write is under way: the session must read its own writes. ``token``:
        # the change token just taken (the store need not take it again).
        known_of = getattr(self._store, "known_metadata", None)
        if known_of is None or self._io.writing():
            return None
        try:
            known: tuple[object, ContextMetadata] | None = known_of(
                self.id, copy=False, token=token
            )
        except (OSError, CMError):
            return None
        return known

    def _index(self) -> dict[str, IndexEntry]:
        # The message index (id -> parent, role, status...), cached like the metadata:
        # a tree view asks for it often and it only changes when a message is written.
        return dict(self._current_index())

    def _index_entry(self, message_id: str) -> IndexEntry | None:
        """What the index knows of one message (None: no such message), uncopied."""
        return self._current_index().get(message_id)

    def _current_index(self) -> dict[str, IndexEntry]:
        # The cached index itself: replaced when it changes, never changed, so the
        # caller may read it but must not change it.
        token = self._change_token()
        with self._lock:
            if token is not None and token == self._index_token:
                return self._index_cache
        fresh = self._io.call(self._store.index(self.id))
        with self._lock:
            self._index_cache, self._index_token = fresh, token
        return fresh

    def _change_token(self) -> object | None:
        # The store's fingerprint of its files (FileStore.change_token), taken before a
        # read so a write racing with the read only causes one more re-read; None for
        # stores without one (then every read goes to the store).
        token_of = getattr(self._store, "change_token", None)
        if token_of is None:
            return None
        try:
            token: object = token_of(self.id)
        except (OSError, CMError):  # a store that cannot tell: read it
            return None
        return token

    @property
    def branches(self) -> dict[str, Branch]:
        """Branches by name (copies: changing one changes nothing)."""
        return self.metadata.branches

    @property
    def branch_names(self) -> list[str]:
        """The branches' names: cheaper than ``branches`` (nothing is copied)."""
        return list(self._read_metadata().branches)

    @property
    def active_branch(self) -> str:
        """The name of the active branch."""
        return self._read_metadata().active_branch

    def _branch_name(self, branch: str | None) -> str:
        if branch is None:
            return self.active_branch
        return validate_branch_name(branch)

    def _head(self, branch: str) -> str | None:
        metadata = self._read_metadata()
        found = metadata.branches.get(branch)
        if found is None:
            raise BranchNotFoundError(
                f"there is no branch {branch!r}; the branches are {sorted(metadata.branches)}"
            )
        return found.head

    def _free_branch_name(self, stem: str, refused: Callable[[str], bool] | None = None) -> str:
        # By look, as creating the branch compares names: "main-edit-1" beside an
        # existing "MAIN-edit-1" would be refused with an error about a name the user
        # never chose. ``refused``: names found taken at creation, though the branches
        # read may not show them yet (cm_notebook._auto_names).
        keys = {branch_name_key(name) for name in self._read_metadata().branches}
        return free_branch_name(
            stem,
            lambda name: branch_name_key(name) in keys or (refused is not None and refused(name)),
        )
