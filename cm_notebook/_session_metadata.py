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

from ._sessionio import StoreAccess
from .errors import BranchNotFoundError, CMError, InvalidInputError
from .ids import validate_branch_name
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
        ``set_system_prompt``, ``title = ...``). Cached: reading it costs a few ``stat``
        calls and a copy unless the store's files changed, so it never waits behind
        other store work.
        """
        return self._read_metadata().model_copy(deep=True)

    def _read_metadata(self) -> ContextMetadata:
        # The session's own copy of the metadata (re-read if the files changed): for
        # reading values out of, never to change. The public ``metadata`` copies it,
        # so nothing a caller does to what it was given reaches the next request.
        token = self._change_token()
        cached = self._cached_metadata(token)
        if cached is not None:
            return cached
        fresh = self._io.call(self._store.get_metadata(self.id))
        with self._lock:
            self._metadata, self._metadata_token = fresh, token
        return fresh

    def _cached_metadata(self, token: object | None = None) -> ContextMetadata | None:
        # The current metadata if it is to be had without a read or a thread hop (so
        # also on the session's loop): this session's copy while the files have not
        # changed (``token``: the change token just taken), else the store's own after
        # this session's writes. None otherwise.
        if token is None:
            token = self._change_token()
        with self._lock:
            if token is not None and token == self._metadata_token:
                return self._metadata
        known = self._known_metadata(token=token)
        if known is None:
            return None
        token, fresh = known
        with self._lock:
            self._metadata, self._metadata_token = fresh, token
        return fresh

    def _known_metadata(
        self, *, copy: bool = True, token: object | None = None
    ) -> tuple[object, ContextMetadata] | None:
        # The store's own copy when it knows it is current (FileStore.known_metadata):
        # after this session's own writes, no thread hop and no read. Not while a
        # submitted write is under way: the session must read its own writes. ``token``:
        # the change token just taken (the store need not take it again).
        known_of = getattr(self._store, "known_metadata", None)
        if known_of is None or self._io.writing():
            return None
        try:
            known: tuple[object, ContextMetadata] | None = known_of(self.id, copy=copy, token=token)
        except (OSError, CMError):
            return None
        return known

    def _shared_metadata(self) -> ContextMetadata | None:
        # The current metadata for reading a value out of it at once (a name, a text),
        # without a read, a thread hop or a copy: this session's copy while the files
        # have not changed, else the store's own object (FileStore.known_metadata with
        # copy=False). None when neither is current. Never to change or keep: a turn
        # reads the active branch and the system prompt here, and copying the whole
        # metadata for that cost more the more branches a context has.
        token = self._change_token()
        with self._lock:
            if token is not None and token == self._metadata_token:
                return self._metadata
        known = self._known_metadata(copy=False, token=token)
        return known[1] if known is not None else None

    def _current_metadata(self) -> ContextMetadata:
        # The current metadata to read a value out of at once: shared if it can be
        # (see _shared_metadata), else read (and kept as this session's copy).
        shared = self._shared_metadata()
        return shared if shared is not None else self._read_metadata()

    def _index(self) -> dict[str, IndexEntry]:
        # The message index (id -> parent, role, status...), cached like the metadata:
        # a tree view asks for it often and it only changes when a message is written.
        token = self._change_token()
        with self._lock:
            if token is not None and token == self._index_token:
                return dict(self._index_cache)
        fresh = self._io.call(self._store.index(self.id))
        with self._lock:
            self._index_cache, self._index_token = fresh, token
        return dict(fresh)

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
        return list(self._current_metadata().branches)

    @property
    def active_branch(self) -> str:
        """The name of the active branch."""
        return self._current_metadata().active_branch

    def _branch_name(self, branch: str | None) -> str:
        if branch is None:
            return self.active_branch
        return validate_branch_name(branch)

    def _head(self, branch: str) -> str | None:
        metadata = self._current_metadata()
        found = metadata.branches.get(branch)
        if found is None:
            raise BranchNotFoundError(
                f"there is no branch {branch!r}; the branches are {sorted(metadata.branches)}"
            )
        return found.head

    def _free_branch_name(self, stem: str) -> str:
        existing = self.branches
        for n in range(1, 10_000):
            candidate = f"{stem}-{n}"
            if candidate not in existing:
                return candidate
        raise InvalidInputError(f"no free branch name starting with {stem!r}")
