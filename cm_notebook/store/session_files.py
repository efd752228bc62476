"""What a :class:`~cm_notebook.store.filestore.FileStore` offers the sessions on it
without a thread hop: a context's change token and the metadata it knows is current,
and the files beside the store's own in a context folder (the signal log, the lock
files by which writers claim branches).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..ids import validate_branch_name, validate_context_id
from ..model import ContextMetadata
from .context import ContextState
from .folders import checked_signal_log
from .paths import context_dir
from .tokens import files_token, token_paths

__all__ = ["SessionFiles"]


class SessionFiles:
    """A base of FileStore: change tokens and the session-facing files of a context."""

    data_dir: Path
    _states: dict[str, ContextState]

    def change_token(self, context_id: str) -> tuple[int, ...]:
        """A cheap fingerprint of the context's files (four ``lstat`` calls, no lock, no
        thread hop): it differs after any write, from this process or another.

        Every committed change (a message, a status, a head move) grows the journal or
        replaces it, and metadata changes replace metadata.json; a streaming checkpoint,
        which commits nothing, replaces a file in ``messages/`` and so changes that
        folder's time stamps (coarse on some systems: readers should re-read a message
        that is still streaming rather than trust the token for it). Callers cache what
        they read and re-read when it changes; a missing file gives zeros (the next read
        raises the precise error).
        """
        state = self._states.get(context_id)
        if state is not None:
            return state.token()
        return files_token(token_paths(context_dir(self.data_dir, context_id)))

    def known_metadata(
        self, context_id: str, *, copy: bool = True, token: object = None
    ) -> tuple[tuple[int, ...], ContextMetadata] | None:
        """The context's metadata without a thread hop, if this store knows it is current.

        Returns ``(change_token, metadata)`` when the files have not changed since this
        store last read or wrote them (its own writes included: a session reading after
        its own turn needs no new read), else None: then call :meth:`get_metadata`.
        Four ``lstat`` calls; no lock, no file read. With ``copy=False`` the metadata is
        the store's own object, not a copy (a copy costs more the more branches there
        are): to read values out of, never to change. The store never changes it in
        place either (a write makes a new one). ``token``: a :meth:`change_token` the
        caller has just taken, so it is not taken twice.
        """
        state = self._states.get(context_id)
        known = state.known if state is not None else None
        if state is None or known is None:
            return None
        current = state.token() if token is None else token
        if current != known[0]:
            return None
        return known[0], known[1].model_copy(deep=True) if copy else known[1]

    def _context_folder(self, context_id: str) -> Path:
        # The context's folder: the one resolved when its state was made, if it was.
        state = self._states.get(context_id)
        if state is not None:
            return state.dir
        return context_dir(self.data_dir, context_id)

    def signal_log_path(self, context_id: str) -> Path:
        """The context's signal log (see :mod:`cm_notebook.signal_log`):
        ``signals/signals.log`` in its folder."""
        validate_context_id(context_id)
        return checked_signal_log(self._context_folder(context_id))

    def branch_claim_path(self, context_id: str, branch: str) -> Path:
        """The lock file in the context folder by which a writer claims ``branch``.

        Sessions lock it (with the OS) for the whole of a turn, so two processes never
        write turns on one branch at once (see :mod:`cm_notebook._claims`). The file
        name is a digest of the branch name, portable whatever the name.
        """
        validate_context_id(context_id)
        validate_branch_name(branch)
        digest = hashlib.sha256(branch.encode("utf-8")).hexdigest()[:24]
        return self._context_folder(context_id) / f".claim-{digest}.lock"
