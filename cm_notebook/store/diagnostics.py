"""The warning class the store uses when it repairs or skips damaged data.

The store never drops data silently: whenever it rebuilds an index or skips a message
file it cannot read, it emits a :class:`StoreWarning` that names the file. Turn these
into errors with ``warnings.simplefilter("error", StoreWarning)`` to stop on the first
sign of damage.
"""

from __future__ import annotations

import warnings
from pathlib import Path

__all__ = ["StoreWarning", "warn"]


class StoreWarning(UserWarning):
    """The store repaired (rebuilt an index) or skipped (a corrupt message file) damaged data.

    ``.path`` is the affected file or folder (also named in the message).
    """

    def __init__(self, message: str, path: Path | None = None) -> None:
        super().__init__(message)
        self.path = path


def warn(message: str, path: Path) -> None:
    """Emit a :class:`StoreWarning` that names the affected path."""
    text = message if str(path) in message else f"{message} ({path})"
    warnings.warn(StoreWarning(text, path), stacklevel=3)
