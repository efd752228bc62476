"""Results computed over a conversation, reused by the next request that extends it.

A turn's request is the previous request plus a few messages, and a session hands
every request the same settled :class:`~cm_notebook.model.Message` objects (nothing
in the package changes a message in place: changes are copies). Work done over the
whole list each turn (hashing it, pairing tool calls with results, counting words)
can therefore start where the last request ended: :class:`PrefixCache` finds the
longest recent list that the new one begins with, comparing the objects by identity
first (``list ==`` does that before comparing fields), which costs a few
microseconds for a thousand messages.

These caches are process-wide and outlive the sessions whose messages they hold, so
each is bounded by the characters it keeps alive (:data:`CACHE_BUDGET`), not only by
its number of entries: a closed session's large messages are let go once newer work
needs the room, and an entry larger than the whole budget is never kept. The budget
is above what the largest context windows accept (about a million tokens), so any
conversation a model can be sent stays incremental; past it, a turn redoes work in
proportion to a conversation that the provider takes far longer to read anyway.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

from .model import Message

__all__ = ["CACHE_BUDGET", "PrefixCache", "SizedCache", "message_chars"]

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

#: The characters of message text one cache may keep alive (about 4 MB of ASCII).
CACHE_BUDGET = 4_000_000


def _chars(value: object) -> int:
    # The characters of the strings in JSON-like data (tool call arguments): the part
    # of its size that can be large.
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(len(str(key)) + _chars(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return sum(_chars(item) for item in value)
    return 0


def message_chars(item: object) -> int:
    """The characters of text a message holds (content, tool calls and their results):
    what keeping it alive costs, beyond a small fixed overhead. Anything else: 0."""
    if not isinstance(item, Message):
        return 0
    # The system prompt a reply records: each message read from disk has its own copy.
    size = len(item.content) + len(item.metadata.system_prompt or "")
    for call in item.tool_calls:
        size += len(call.id) + len(call.name) + _chars(call.arguments) + len(call.result or "")
    return size


class PrefixCache(Generic[T]):
    """Values for recent lists, found again for lists that extend them.

    Up to ``kept`` lists are remembered (by the id of their last item, with the list
    itself kept so ids are not reused), the least recently used let go first; a new
    list may add up to ``look_back`` items to one. An entry weighs the ``weigh`` of
    its items (counted again for each entry that shares them: an overestimate, never
    less than what is kept alive), and the entries together weigh at most ``budget``;
    a list heavier than that is not kept (a :class:`SizedCache` holds them).
    Thread-safe.
    """

    def __init__(
        self,
        kept: int = 64,
        look_back: int = 8,
        *,
        budget: int = CACHE_BUDGET,
        weigh: Callable[[object], int] = message_chars,
    ) -> None:
        self._look_back = look_back
        self._weigh = weigh
        # Held while a list is looked up and kept, so that keep() weighs it from the
        # entry it extends as that entry is.
        self._lock = threading.Lock()
        # id of the last item -> (the list, the value)
        self._entries: SizedCache[int, tuple[list[object], T]] = SizedCache(kept, budget)

    @property
    def budget(self) -> int:
        """The most the entries may weigh together."""
        return self._entries.budget

    @property
    def size(self) -> int:
        """What the entries weigh together now."""
        return self._entries.size

    def __len__(self) -> int:
        return len(self._entries)

    def _find(self, items: Sequence[object]) -> tuple[int, int, T | None]:
        # ``(k, weight, value)`` of the longest kept list equal to a start of items,
        # else ``(0, 0, None)`` (call with the lock held).
        count = len(items)
        for known_count in range(count, max(0, count - self._look_back), -1):
            known = self._entries.peek(id(items[known_count - 1]))
            if known is None or len(known[1][0]) != known_count:
                continue
            prefix = items[:known_count]
            if known[1][0] == (prefix if isinstance(prefix, list) else list(prefix)):
                return known_count, known[0], known[1][1]
        return 0, 0, None

    def longest(self, items: Sequence[object]) -> tuple[int, T | None]:
        """``(k, value)`` for the longest kept list equal to ``items[:k]``, else ``(0, None)``."""
        with self._lock:
            count, _weight, value = self._find(items)
            if count:
                self._entries.get(id(items[count - 1]))  # now the most recently used
            return count, value

    def keep(self, items: Sequence[object], value: T) -> None:
        """Remember ``value`` for the list ``items`` (ignored when empty, or when it
        weighs more than the whole budget)."""
        if not items:
            return
        with self._lock:
            # Weighed from the kept list it extends, so keeping a turn's list costs
            # what the turn added, not the conversation's length.
            start, weight, _value = self._find(items)
            weight += sum(self._weigh(item) for item in items[start:])
            self._entries.put(id(items[-1]), (list(items), value), weight)


class SizedCache(Generic[K, T]):
    """A mapping that forgets its least recently used entries beyond ``kept`` entries
    or ``budget`` in weight (each entry's weight is given when it is stored); an entry
    heavier than the whole budget is not stored. Thread-safe."""

    def __init__(self, kept: int, budget: int = CACHE_BUDGET) -> None:
        self._kept = kept
        self._budget = budget
        self._lock = threading.Lock()
        self._entries: OrderedDict[K, tuple[int, T]] = OrderedDict()
        self._size = 0

    @property
    def budget(self) -> int:
        """The most the entries may weigh together."""
        return self._budget

    @property
    def size(self) -> int:
        """What the entries weigh together now."""
        return self._size

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: K) -> tuple[int, T] | None:
        """``(weight, value)`` stored for ``key``, its place in the order unchanged."""
        with self._lock:
            return self._entries.get(key)

    def get(self, key: K) -> T | None:
        """The value stored for ``key`` (now the most recently used), else None."""
        with self._lock:
            known = self._entries.get(key)
            if known is None:
                return None
            self._entries.move_to_end(key)
            return known[1]

    def put(self, key: K, value: T, weight: int) -> None:
        """Store ``value`` for ``key``, weighing ``weight``."""
        with self._lock:
            replaced = self._entries.pop(key, None)
            if replaced is not None:
                self._size -= replaced[0]
            if weight > self._budget:
                return
            self._entries[key] = (weight, value)
            self._size += weight
            while len(self._entries) > self._kept or self._size > self._budget:
                self._size -= self._entries.popitem(last=False)[1][0]
