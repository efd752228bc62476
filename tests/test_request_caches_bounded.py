"""The caches that make a turn's request cost what it adds (request hashes, tool-call
pairing) outlive sessions; closed sessions' large messages must not stay in them
beyond a fixed budget, whatever the size of those messages."""

from __future__ import annotations

import gc
import tracemalloc
from pathlib import Path

from test_session_support import DEADLINE

from cm_notebook import _conversation, _prefix_cache, provenance
from cm_notebook.params import MAX_MESSAGE_CHARS
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

_SESSIONS = 16
_MESSAGE = 1_000_000  # characters: a pasted document, a large tool output
# What the four caches may keep together: each at most 4 million characters (ASCII text
# here, a byte each), plus room for the allocator's and the sessions' own small change.
_KEPT_AT_MOST = 4 * 4_000_000 + 2_000_000


def _caches() -> list[object]:
    return [
        provenance._ENCODED,
        provenance._STATES,
        _conversation._ANSWERED,
        _conversation._CALL_IDS,
    ]


def _talk(data_dir: Path, name: str, text: str) -> None:
    with ContextSession.create(name, data_dir=data_dir, provider=ScriptedProvider()) as session:
        session.send(text).result(DEADLINE)


def test_closed_sessions_large_messages_are_not_kept_beyond_the_budget(data_dir: Path) -> None:
    _talk(data_dir, "warm", "hello")  # imports, thread pools and first-use state
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(_SESSIONS):
            _talk(data_dir, f"big {number}", f"session {number} " + "x" * _MESSAGE)
        gc.collect()
        retained = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Sent: 16 MB of text (each message also had its JSON made for the request hash).
    # Kept: at most the caches' budgets, whatever was sent.
    assert retained < _KEPT_AT_MOST, f"{retained:,} bytes kept after the sessions closed"


def test_the_caches_stay_within_their_budget_by_their_own_count(data_dir: Path) -> None:
    for number in range(3):
        _talk(data_dir, f"largest {number}", f"{number} " + "y" * (MAX_MESSAGE_CHARS - 2))
    gc.collect()
    for cache in _caches():
        assert cache.size <= cache.budget == _prefix_cache.CACHE_BUDGET  # type: ignore[attr-defined]
    # A message as long as allowed, with its JSON, outweighs the whole budget: not kept.
    kept = [entry[0] for _weight, entry in provenance._ENCODED._entries.values()]
    assert all(len(message.content) < MAX_MESSAGE_CHARS for message in kept)
