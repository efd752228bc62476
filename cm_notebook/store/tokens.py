"""A context folder's change token: a fingerprint of its files from ``stat`` alone.

Every committed change grows or replaces the journal, a metadata change replaces
metadata.json, and a streaming checkpoint replaces a file in ``messages/`` (see
:meth:`~cm_notebook.store.filestore.FileStore.change_token`), so the four ``stat``
results differ after any write, from this process or another.
"""

from __future__ import annotations

import os
from pathlib import Path

from .paths import INDEX_NAME, JOURNAL_NAME, MESSAGES_DIR, METADATA_NAME

__all__ = ["files_token", "token_paths"]


def token_paths(folder: Path) -> tuple[str, ...]:
    """The files whose ``stat`` makes a context's :func:`files_token`."""
    return tuple(
        str(folder / name) for name in (METADATA_NAME, INDEX_NAME, JOURNAL_NAME, MESSAGES_DIR)
    )


def files_token(paths: tuple[str, ...]) -> tuple[int, ...]:
    """A fingerprint of a context folder's files (four ``stat`` calls): it differs after
    any write (see :meth:`~cm_notebook.store.filestore.FileStore.change_token`)."""
    token: list[int] = []
    for path in paths:
        try:
            info = os.stat(path)
        except OSError:
            token += [0, 0, 0, 0]
        else:
            token += [info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns]
    return tuple(token)
