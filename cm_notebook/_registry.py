"""One live session per context in a process.

``ContextSession.open(id)`` (and ``create``) register the session under a key: the
resolved data directory and the context id, or, for a session built on a store object
passed in, that object and the context id. While the session is open, opening the same
context again (from any thread) returns the same object, so a widget, a magic and user
code share one bus, one set of state machines and one claim per branch.

Each ``open``/``create`` is a hold on the session; ``close()`` gives one back and the
last one really closes it (turns cancelled, streams ended, files released) and takes
it out of the registry, so the next ``open`` makes a fresh session. The registry holds
sessions weakly: one dropped without ``close()`` leaves it when collected. Sessions
still open when the interpreter exits are closed then (:mod:`cm_notebook._at_exit`).
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Hashable
from pathlib import Path

from ._at_exit import close_at_exit
from .store import Store, default_data_dir

__all__ = ["REGISTRY", "SessionRegistry", "key_for"]


def key_for(store: Store | None, data_dir: str | Path | None, context_id: str) -> Hashable:
    """The registry key of a context opened on ``store`` (or on ``data_dir``)."""
    if store is None:
        root = Path(data_dir) if data_dir is not None else default_data_dir()
        return ("dir", str(root.expanduser().resolve()), context_id)
    # A store passed in is its own world (two FileStores are two writers), so the key
    # is the object; the session holds it, so its id is not reused while registered.
    return ("store", id(store), context_id)


class SessionRegistry:
    """The live sessions of this process by key, and their holds (see the module docstring).

    A session the registry never saw (built directly) counts as held once.
    """

    def __init__(self) -> None:
        #: Held while looking up or building a session, so two threads get one.
        self.lock = threading.RLock()
        self._live: weakref.WeakValueDictionary[Hashable, object] = weakref.WeakValueDictionary()
        self._keys: weakref.WeakKeyDictionary[object, Hashable] = weakref.WeakKeyDictionary()
        self._holds: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()
        # The process each session was made in: a forked child inherits the registry,
        # not the threads its parent's sessions run on.
        self._pids: weakref.WeakKeyDictionary[object, int] = weakref.WeakKeyDictionary()

    def find(self, key: Hashable) -> object | None:
        """The live session under ``key``, with one more hold on it; else None."""
        with self.lock:
            live = self._live.get(key)
            if live is not None:
                self._holds[live] = self._holds.get(live, 1) + 1
            return live

    def add(self, key: Hashable, session: object) -> None:
        """Register a new session (its first hold)."""
        with self.lock:
            self._holds[session] = 1
            self._live[key] = session
            self._keys[session] = key
            self._pids[session] = os.getpid()

    def held(self, session: object) -> bool:
        """Whether ``session`` still has holders (it is not closed)."""
        with self.lock:
            return self._holds.get(session, 1) > 0

    def holds(self, session: object) -> int:
        """How many holds ``session`` has (0: closed)."""
        with self.lock:
            return max(0, self._holds.get(session, 1))

    def open_sessions(self) -> list[object]:
        """The sessions this process registered that are still held, oldest first."""
        pid = os.getpid()
        with self.lock:
            return [
                session
                for session in self._live.values()
                if self._holds.get(session, 1) > 0 and self._pids.get(session) == pid
            ]

    def to_last_hold(self, session: object) -> bool:
        """Leave ``session`` one hold, so that its next close is the last (at exit,
        every holder is done with it); False if it has none left (closed)."""
        with self.lock:
            if self._holds.get(session, 1) <= 0:
                return False
            self._holds[session] = 1
            return True

    def retire(self, session: object) -> None:
        """Take ``session`` out with all its holds: each holder's close() then does nothing."""
        with self.lock:
            self._holds[session] = 0
            key = self._keys.pop(session, None)
            if key is not None and self._live.get(key) is session:
                del self._live[key]

    def release(self, session: object) -> bool:
        """Give back one hold; True when that was the last (the caller closes it)."""
        with self.lock:
            holds = self._holds.get(session, 1)
            if holds <= 0:
                return False
            self._holds[session] = holds - 1
            if holds > 1:
                return False
            key = self._keys.pop(session, None)
            if key is not None and self._live.get(key) is session:
                del self._live[key]
            return True


#: The process's registry.
REGISTRY = SessionRegistry()
close_at_exit(REGISTRY)
