"""Results computed over a conversation, reused by the next request that extends it.

A turn's request is the previous request plus a few messages, and a session hands
every request the same settled :class:`~cm_notebook.model.Message` objects (nothing
in the package changes a message in place: changes are copies). Work done over the
whole list each turn (hashing it, pairing tool calls with results, counting words)
can therefore start where the last request ended: :class:`PrefixCache` finds the
longest recent list that the new one begins with, comparing the objects by identity
first (``list ==`` does that before comparing fields), which costs a few
microseconds for a thousand messages.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Generic, TypeVar

__all__ = ["PrefixCache"]

T = TypeVar("T")


class PrefixCache(Generic[T]):
    """Values for recent lists, found again for lists that extend them.

    ``kept`` lists are remembered (by the id of their last item, with the list itself
    kept so ids are not reused); a new list may add up to ``look_back`` items to one.
    Thread-safe.
    """

    def __init__(self, kept: int = 64, look_back: int = 8) -> None:
        self._kept = kept
        self._look_back = look_back
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, tuple[list[object], T]] = OrderedDict()

    def longest(self, items: Sequence[object]) -> tuple[int, T | None]:
        """``(k, value)`` for the longest kept list equal to ``items[:k]``, else ``(0, None)``."""
        count = len(items)
        with self._lock:
            for known_count in range(count, max(0, count - self._look_back), -1):
                known = self._entries.get(id(items[known_count - 1]))
                if known is None or len(known[0]) != known_count:
                    continue
                prefix = items[:known_count]
                if known[0] == (prefix if isinstance(prefix, list) else list(prefix)):
                    return known_count, known[1]
        return 0, None

    def keep(self, items: Sequence[object], value: T) -> None:
        """Remember ``value`` for the list ``items`` (ignored when empty)."""
        if not items:
            return
        key = id(items[-1])
        with self._lock:
            self._entries[key] = (list(items), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self._kept:
                self._entries.popitem(last=False)
