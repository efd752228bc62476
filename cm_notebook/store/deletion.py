"""Deleting a context, never from under a live process that is writing into it.

A process writing into a context holds OS locks on files in its folder: the
streaming lock of each reply it is streaming (``.streaming-<message id>.lock``, see
:mod:`.streaming_locks`) and, for the whole of a turn, the claim on its branch
(``.claim-<digest>.lock``, see :mod:`cm_notebook._claims`). The OS drops them when
the process dies, so a lock file that nobody holds is what a killed writer left, and
never stands in the way. One that is held means a live process would go on writing
into a folder that is gone: its reply lost, and its user told nothing. So
:meth:`ContextDeletion.delete_context` refuses then, naming what holds it, unless it
is forced.

A finished stream's spare lock file (``.streaming-spare-<token>.lock``) stays held by
a live store that has the context open but is not writing: it does not count.
"""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Collection, Container
from pathlib import Path
from typing import Any, TypeVar

from ..errors import BusyError
from .context import ContextState
from .folders import remove_tree, trash_path
from .oslock import lock_is_held
from .paths import STREAMING_PREFIX, STREAMING_SUFFIX

__all__ = ["ContextDeletion", "busy_error", "live_writers"]

T = TypeVar("T")

_SPARE_PREFIX = f"{STREAMING_PREFIX}spare-"
_CLAIM_PREFIX = ".claim-"
_LOCK_SUFFIX = ".lock"
_OWNER_CHARS = 200  # a claim file names its owner in its first bytes (pid and host)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)


def live_writers(
    ctx_dir: Path, own_streams: Container[str] = (), own_claims: Container[str] = ()
) -> list[str]:
    """What live processes are writing into the context folder ``ctx_dir``, one phrase
    each (empty if none): replies being streamed and turns running, told by their held
    OS locks (one non-blocking probe each). ``own_streams``: message ids whose streams
    the caller itself holds, not counted; ``own_claims``: the file names of branch
    claims it holds (see ``FileStore.branch_claim_path``), not counted either.

    Call it holding the context's write lock: a writer takes a streaming lock under it
    without waiting, and must not find it taken by this probe.
    """
    try:
        names = sorted(os.listdir(ctx_dir))
    except OSError:
        return []  # no folder, or not listable: the deletion itself says what is wrong
    streams, turns = [], []
    for name in names:
        if not name.endswith(_LOCK_SUFFIX):
            continue
        if name.startswith(STREAMING_PREFIX) and not name.startswith(_SPARE_PREFIX):
            message_id = name[len(STREAMING_PREFIX) : -len(STREAMING_SUFFIX)]
            if message_id not in own_streams and _held(ctx_dir / name):
                streams.append(f"reply {message_id!r} is being streamed")
        elif name.startswith(_CLAIM_PREFIX) and name not in own_claims and _held(ctx_dir / name):
            owner = _owner(ctx_dir / name)
            by = f" ({owner})" if owner else ""
            turns.append(f"a turn is running on one of its branches{by}")
    return streams + turns


def busy_error(context_id: str, writers: list[str]) -> BusyError:
    """The refusal to delete ``context_id`` while ``writers`` (from :func:`live_writers`)
    are writing into it."""
    return BusyError(
        f"context {context_id!r} is being written by a live process: {'; '.join(writers)}. "
        "Stop that first (let the reply finish or cancel the turn, or stop the kernel or "
        "process running it), then delete the context; or delete it anyway with "
        "FileStore.delete_context(..., force=True), and that process's next write fails."
    )


def _held(path: Path) -> bool:
    try:
        return lock_is_held(path)
    except OSError:
        return False  # not a lock file a writer made (a link, a folder): nobody's lock


def _owner(path: Path) -> str:
    # Best effort: the name only makes the refusal more useful.
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        text = os.read(fd, _OWNER_CHARS).decode("utf-8", "replace")
    except OSError:
        return ""
    finally:
        os.close(fd)
    return " ".join(text.split())


class ContextDeletion:
    """Deleting contexts, for :class:`~cm_notebook.store.filestore.FileStore` (a base of it)."""

    data_dir: Path
    _states: dict[str, ContextState]
    _registry_lock: threading.Lock

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError  # FileStore's: the work on a worker thread

    def _state(self, context_id: str) -> ContextState:
        raise NotImplementedError  # FileStore's: the context's registered state

    async def delete_context(self, context_id: str, *, force: bool = False) -> None:
        """Remove the context's folder and everything in it, whatever state its files
        are in (ContextNotFoundError if there is no such folder).

        Refused with :class:`~cm_notebook.errors.BusyError`, naming what holds it, while
        another process (or session) is writing into the context: a reply being streamed
        or a turn running there (see :func:`live_writers`; the locks that killed
        processes left do not count). Replies this store itself is streaming do not
        count either: they end with the context. ``force=True`` deletes it all the same;
        the other writer's next write then fails.
        """
        await self._run(self._delete_context, context_id, force)

    async def live_writers(
        self, context_id: str, *, own_claims: Collection[Path] = ()
    ) -> list[str]:
        """What live processes are writing into the context, one phrase each (empty if
        none): what :meth:`delete_context` would refuse for. ContextNotFoundError if
        there is no such context folder.

        Replies this store streams are not counted, nor the branch claims
        ``own_claims`` (lock files of :meth:`branch_claim_path` the caller holds: a
        session asking whether anyone *else* writes).
        """
        names = frozenset(path.name for path in own_claims)
        return await self._run(self._live_writers, context_id, names)

    def _live_writers(self, context_id: str, own_claims: Container[str]) -> list[str]:
        state = self._state(context_id)
        with state.write_locks():  # the probes must not stand in a writer's way
            return live_writers(state.dir, state.streaming, own_claims)

    def _delete_context(self, context_id: str, force: bool) -> None:
        state = self._state(context_id)
        trash = trash_path(self.data_dir, context_id)
        # Reading nothing: a context whose files are damaged can be deleted too (the
        # remedy its errors offer).
        with state.write_locks():
            writers = [] if force else live_writers(state.dir, state.streaming)
            if writers:
                raise busy_error(context_id, writers)
            state.streaming.close()
            # One atomic rename makes the context vanish for every process; the slow
            # recursive delete then happens out of sight.
            os.rename(state.dir, trash)
        with self._registry_lock:
            self._states.pop(context_id, None)
        with state.state_lock:
            state.close()
        remove_tree(trash)
