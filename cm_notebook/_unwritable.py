"""Whether a context's folder can be written here, asked without writing to it.

A folder on a read-only mount, or without write permission for this user, cannot take
any write: a turn, a retry, settling a dead process's tool round. Knowing that before
trying lets a caller refuse before it announces anything, and lets readers show what
cannot be settled here as what it will be (:mod:`cm_notebook._stranded_rounds`).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

from .errors import StoreIOError
from .store import Store
from .store.oserrors import translate

__all__ = ["unwritable"]


def unwritable(store: Store, context_id: str) -> StoreIOError | None:
    """The error a write into the folder of ``context_id`` meets because the folder
    cannot be written (a read-only file system, no write permission); None if it can
    be, or the store keeps no folder. Writes nothing (``access``, ``statvfs``)."""
    path_of: Callable[[str, str], Path] | None = getattr(store, "branch_claim_path", None)
    if path_of is None:
        return None
    folder = path_of(context_id, "main").parent  # the context's folder (any branch name)
    if not folder.is_dir() or os.access(folder, os.W_OK):
        return None  # a folder that is not there says so on the write itself
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    code = errno.EROFS if read_only else errno.EACCES
    error = translate(OSError(code, os.strerror(code), str(folder)), folder, "write to")
    return error if isinstance(error, StoreIOError) else StoreIOError(str(error), folder, code)
