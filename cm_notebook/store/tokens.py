"""A context folder's change token: a fingerprint of its files from ``lstat`` alone.

Every committed change grows or replaces the journal, a metadata change replaces
metadata.json, and a streaming checkpoint replaces a file in ``messages/`` (see
:meth:`~cm_notebook.store.filestore.FileStore.change_token`), so the four ``lstat``
results differ after any write, from this process or another.

``lstat``, not ``stat``: the store reads these files without following links (a link
planted in place of one is damage), so the results that make a token also tell a
reader whether it must read a file again (see ``ContextState.refresh``): one look at
the folder serves both. For the files and the folder the store writes, the two give
the same results. A token may also be made from results taken by other means
(``fstat`` of a file the store holds open, see ``ContextState``): equal results are
equal tokens.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from .paths import INDEX_NAME, JOURNAL_NAME, MESSAGES_DIR, METADATA_NAME

__all__ = ["Look", "files_token", "look", "token_of", "token_paths"]

#: One ``lstat`` result per file of :func:`token_paths`, in that order; None for a file
#: that could not be looked at (missing, say).
Look = Sequence["os.stat_result | None"]


def token_paths(folder: Path) -> tuple[str, ...]:
    """The files whose ``lstat`` makes a context's :func:`files_token`, in the order
    they are looked at: metadata.json, the journal, the snapshot, the messages folder
    (the order a reader needs them in: see ``ContextState.refresh``)."""
    return tuple(
        str(folder / name) for name in (METADATA_NAME, JOURNAL_NAME, INDEX_NAME, MESSAGES_DIR)
    )


def look(paths: tuple[str, ...]) -> list[os.stat_result | None]:
    """``lstat`` each of ``paths`` (None where that fails)."""
    found: list[os.stat_result | None] = []
    for path in paths:
        try:
            found.append(os.lstat(path))
        except OSError:
            found.append(None)
    return found


def token_of(stats: Look) -> tuple[int, ...]:
    """The token of the results of a :func:`look` (zeros for a file not there)."""
    token: list[int] = []
    for info in stats:
        if info is None:
            token += [0, 0, 0, 0]
        else:
            token += [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
    return tuple(token)


def files_token(paths: tuple[str, ...]) -> tuple[int, ...]:
    """A fingerprint of a context folder's files (four ``lstat`` calls): it differs after
    any write (see :meth:`~cm_notebook.store.filestore.FileStore.change_token`)."""
    return token_of(look(paths))
