"""On-disk storage of contexts.

The public surface is small: the :class:`Store` protocol (what the rest of
cm_notebook needs), :class:`FileStore` (the crash-safe implementation on the local
file system), :class:`IndexEntry`, :func:`default_data_dir` and
:class:`StoreWarning` (emitted whenever damaged data is repaired or skipped).
"""

from __future__ import annotations

from .base import IndexEntry, Store
from .diagnostics import StoreWarning
from .filestore import FileStore
from .integrity import IntegrityReport
from .paths import default_data_dir

__all__ = [
    "FileStore",
    "IndexEntry",
    "IntegrityReport",
    "Store",
    "StoreWarning",
    "default_data_dir",
]
