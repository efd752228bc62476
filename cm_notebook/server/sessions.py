"""The live sessions of a server process: one :class:`ContextSession` per context.

Every request about a context goes to the same session object, so a send from one
client and an approval from another meet in one state machine, and every events
stream listens to one signal bus. Sessions are opened on first use, on the server's
event loop (so their turns and signals run there, like a notebook's on its kernel's
loop), and closed when their context is deleted, when they have been idle too long
or too many are open (an evicted context reopens on its next request), or when the
server stops.

A request holds a :class:`Lease` on the session while it runs (the handlers' base
class takes and returns it), so a session is never closed under a request: it is
*idle* when no request or events stream holds it, no turn runs on any of its
branches and no tool call waits for approval.

From the moment a context's deletion is decided (it exists, and no other process
writes into it), requests for it are refused (404) and none can reopen it; the deletion
waits for the requests already running, then closes the session, then removes the
folder. Until then (and when the deletion is refused) requests are served as usual.

:func:`open_session` is the one place a session is opened: swap it to change how
sessions are found (e.g. a process-wide registry that notebooks share too).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .._session_core import SESSION_CLOSED
from ..errors import (
    CMError,
    ContextNotFoundError,
    CorruptDataError,
    InvalidInputError,
    SchemaVersionError,
)
from ..ids import validate_context_id
from ..model import ContextMetadata
from ..redact import get_logger
from ..session import ContextSession
from ..store import FileStore
from ..store.deletion import busy_error
from ..store.folders import SkippedFolder, remove_empty_folder
from ..store.paths import context_dir
from ..store.stray_folders import holds_no_context
from ..tools import ToolPolicy
from ..turn import Turn
from .offloop import STOPPING_MESSAGE, ServerStoppingError

__all__ = [
    "DEFAULT_IDLE_TIMEOUT",
    "DEFAULT_MAX_SESSIONS",
    "STREAM_GRACE",
    "Lease",
    "SessionRegistry",
    "open_session",
]

logger = get_logger(__name__)

#: How many sessions a server keeps open at most (idle ones beyond are closed).
DEFAULT_MAX_SESSIONS = 64
#: Seconds after which an idle session is closed (0: never).
DEFAULT_IDLE_TIMEOUT = 600.0
#: Seconds the events streams get, when the server stops, to send the signals its
#: stopped replies wrote (see :meth:`SessionRegistry.aclose`).
STREAM_GRACE = 5.0


def open_session(
    context_id: str, *, data_dir: Path, tools: Iterable[Any], approval: ToolPolicy
) -> ContextSession:
    """Open the stored context ``context_id`` (ContextNotFoundError if there is none)."""
    return ContextSession.open(context_id, data_dir=data_dir, tools=tools, approval=approval)


class Lease:
    """A request's hold on a context's session: the session stays open until released."""

    def __init__(self, registry: SessionRegistry, session: ContextSession, stream: bool) -> None:
        self.session = session
        self._registry = registry
        self._stream = stream
        self._released = False

    def release(self) -> None:
        """Give the hold back; safe to call more than once."""
        if not self._released:
            self._released = True
            self._registry._release(self.session.id, self._stream)


class SessionRegistry:
    """The sessions this server has opened, by context id.

    Used from the server's event loop thread only (Tornado handlers), so it needs no lock.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        tools: Iterable[Any] = (),
        approval: ToolPolicy | None = None,
        default_provider: str = "local",
        max_sessions: int = DEFAULT_MAX_SESSIONS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        client_endpoints: bool = False,
    ) -> None:
        if max_sessions < 1:
            raise InvalidInputError(f"max_sessions must be at least 1, got {max_sessions}")
        if idle_timeout < 0:
            raise InvalidInputError(
                f"idle_timeout must be >= 0 seconds (0: never), got {idle_timeout}"
            )
        self.data_dir = data_dir
        self.tools = list(tools)
        self.approval = approval or ToolPolicy()
        self.default_provider = default_provider
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        # Whether clients may choose providers' endpoints and model files (see
        # cm_notebook.server.provider_choice).
        self.client_endpoints = client_endpoints
        # For deleting contexts (a deletion forgets what it read).
        self._store = FileStore(data_dir)
        # Least recently used first: eviction looks from the front.
        self._sessions: OrderedDict[str, ContextSession] = OrderedDict()
        self._last_used: dict[str, float] = {}
        self._requests: dict[str, int] = {}  # requests holding a context's session
        self._streams: dict[str, int] = {}  # events streams holding it
        self._drained: dict[str, asyncio.Event] = {}  # set when its last request ends
        self._closing: dict[str, asyncio.Task[None]] = {}  # evicted, still closing
        self._deleting: set[str] = set()
        # Tools allowed with remember="session": the server's session of the context
        # keeps them across an eviction, as if it had stayed open.
        self._allowed: dict[str, list[str]] = {}
        self._reapers: set[asyncio.Task[None]] = set()
        self._ended: dict[str, asyncio.Event] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping = False
        self._no_streams = asyncio.Event()  # set when the last events stream ends

    # -- using sessions ------------------------------------------------------------------

    async def acquire(self, context_id: str, *, stream: bool = False) -> Lease:
        """Hold the live session of ``context_id``, opening it if need be.

        ``stream``: the hold of an events stream (it does not delay a deletion, which
        ends the stream instead). Raises InvalidIdError for a malformed id,
        ContextNotFoundError for an unknown one or one being deleted,
        ServerStoppingError once the server is stopping (a session opened or held then
        would outlive :meth:`aclose`, or keep it waiting for a stream).
        """
        validate_context_id(context_id)
        self._refuse_stopping()
        self._refuse_deleting(context_id)
        while (closing := self._closing.get(context_id)) is not None:
            # Its evicted session is still letting go of the folder: open it after that.
            await asyncio.wait([closing])
            self._refuse_stopping()
            self._refuse_deleting(context_id)
        # No await from here on: what was checked above still holds.
        session = self._sessions.get(context_id)
        if session is None:
            # On the loop, not a worker thread: a session's turns and signals run on the
            # loop it is opened on. Opening reads the context's metadata and index here
            # (it never waits for a writer's lock).
            session = open_session(
                context_id, data_dir=self.data_dir, tools=self.tools, approval=self.approval
            )
            for tool in self._allowed.pop(context_id, ()):
                session.allow(tool)
            self._sessions[context_id] = session
        else:
            self._sessions.move_to_end(context_id)
        holds = self._streams if stream else self._requests
        holds[context_id] = holds.get(context_id, 0) + 1
        self._last_used[context_id] = time.monotonic()
        self._evict_over_limit(keep=context_id)
        self._start_sweeper()
        return Lease(self, session, stream)

    def _release(self, context_id: str, stream: bool) -> None:
        holds = self._streams if stream else self._requests
        left = holds.get(context_id, 0) - 1
        if left > 0:
            holds[context_id] = left
        else:
            holds.pop(context_id, None)
        if not self._streams:
            self._no_streams.set()
        if context_id in self._sessions:
            self._last_used[context_id] = time.monotonic()
        if not self._requests.get(context_id):
            drained = self._drained.pop(context_id, None)
            if drained is not None:
                drained.set()

    def _refuse_stopping(self) -> None:
        if self._stopping:
            raise ServerStoppingError(STOPPING_MESSAGE)

    def _refuse_deleting(self, context_id: str) -> None:
        if context_id in self._deleting:
            raise ContextNotFoundError(
                f"context {context_id!r} is being deleted; create a new context to go on"
            )

    def ended(self, context_id: str) -> asyncio.Event:
        """Set when this server closes the context's session (deleted, or shutting down).

        Streams of the context's signals end then, whatever the session's bus does.
        """
        if context_id in self._deleting:
            ended = asyncio.Event()
            ended.set()
            return ended
        return self._ended.setdefault(context_id, asyncio.Event())

    def streams(self, context_id: str) -> int:
        """How many events streams of the context are open."""
        return self._streams.get(context_id, 0)

    def open_sessions(self) -> list[str]:
        """The ids of the contexts whose session is open, least recently used first."""
        return list(self._sessions)

    def _end(self, context_id: str) -> None:
        ended = self._ended.pop(context_id, None)
        if ended is not None:
            ended.set()

    # -- closing idle sessions -----------------------------------------------------------

    def _idle(self, context_id: str, session: ContextSession) -> bool:
        if self._requests.get(context_id) or self._streams.get(context_id):
            return False
        if context_id in self._deleting:
            return False  # the deletion closes it
        try:
            # Only this server's own calls: another process's keep it busy, not this
            # session (and listing them reads the log, which this check must not).
            if session._approvals.calls():
                return False
            return all(session.turn(name) is None for name in session.branch_names)
        except ContextNotFoundError:
            return True  # its folder was removed behind the server's back: close it
        except CMError:
            return False  # cannot tell (e.g. a store lock held): keep it for now

    @staticmethod
    def _gone(session: ContextSession) -> bool:
        # Whether the context's folder was removed behind the server's back.
        try:
            session._read_metadata()  # read from the store when its files changed
        except ContextNotFoundError:
            return True
        except CMError:
            pass  # damaged, or a lock held: it is still there
        return False

    def vanished(self, context_id: str) -> bool:
        """If the open context's folder is gone (removed behind the server's back, not
        by a deletion through it), end its events streams and close its session once
        no request holds it. Returns whether it is gone."""
        session = self._sessions.get(context_id)
        if session is None or context_id in self._deleting or not self._gone(session):
            return False
        self._end(context_id)
        if not self._requests.get(context_id):
            self._evict(context_id)
        return True

    def _evict_over_limit(self, keep: str | None = None) -> None:
        excess = len(self._sessions) - self.max_sessions
        for context_id, session in list(self._sessions.items()):
            if excess <= 0:
                return
            if context_id != keep and self._idle(context_id, session):
                self._evict(context_id)
                excess -= 1
        if excess > 0:
            # Every other session is busy: they are closed once idle (see sweep()).
            logger.debug(
                "%d sessions open (max_sessions=%d), all busy",
                len(self._sessions),
                self.max_sessions,
            )

    def _evict(self, context_id: str) -> None:
        session = self._sessions.pop(context_id)
        self._last_used.pop(context_id, None)
        allowed = session.allowed_tools()["session"]
        if allowed:
            self._allowed[context_id] = allowed
        task = asyncio.get_running_loop().create_task(_close_quietly(session))
        self._closing[context_id] = task

        def closed(done: asyncio.Task[None]) -> None:
            if self._closing.get(context_id) is done:
                del self._closing[context_id]

        task.add_done_callback(closed)

    def sweep(self) -> None:
        """Close idle sessions: those unused for ``idle_timeout``, and beyond ``max_sessions``."""
        now = time.monotonic()
        for context_id, session in list(self._sessions.items()):
            if self.vanished(context_id):
                # Removed behind the server's back: its streams would send heartbeats
                # for ever, and its session hold the deleted files open.
                continue
            if not self._idle(context_id, session):
                # Busy (e.g. a long reply): its idle time counts from when it is done.
                self._last_used[context_id] = now
            elif self.idle_timeout and now - self._last_used.get(context_id, now) >= (
                self.idle_timeout
            ):
                self._evict(context_id)
        self._evict_over_limit()

    def _start_sweeper(self) -> None:
        # Started on first use: the registry is built before the server's loop runs.
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        # Often enough that a session is closed within about half its idle timeout, and
        # that sessions kept open beyond max_sessions by their turns close soon after.
        interval = min(5.0, max(0.1, self.idle_timeout / 2)) if self.idle_timeout else 5.0
        while True:
            await asyncio.sleep(interval)
            try:
                self.sweep()
            except Exception:  # the sweeper must outlive one failed check
                logger.exception("closing idle sessions failed")

    # -- contexts --------------------------------------------------------------------------

    async def create(
        self,
        *,
        title: str | None,
        provider: str | None,
        provider_options: Mapping[str, Any],
        system: str | None,
        tags: list[str],
    ) -> ContextSession:
        """Create a context and keep its session (ServerStoppingError once the server
        is stopping)."""
        self._refuse_stopping()
        spec = provider or self.default_provider
        # Made on the loop (its turns and signals run there, as in acquire()); its new
        # folder is written off the loop, which may wait for another process's creation.
        session = await ContextSession.acreate(
            title,
            provider=spec,
            provider_options=provider_options,
            system=system,
            tags=tags,
            data_dir=self.data_dir,
            tools=self.tools,
            approval=self.approval,
        )
        if self._stopping:
            # The server began stopping while the folder was written: aclose() has
            # closed the sessions it knew, so this one is closed here (the context is
            # stored, and opens on the restarted server).
            await _close_quietly(session, "the Jupyter server stopped")
            raise ServerStoppingError(f"context {session.id!r} was created, but {STOPPING_MESSAGE}")
        self._sessions[session.id] = session
        self._last_used[session.id] = time.monotonic()
        self._evict_over_limit(keep=session.id)
        self._start_sweeper()
        return session

    async def list(self) -> tuple[list[ContextMetadata], list[SkippedFolder]]:
        """Metadata of every stored context, most recently updated first, and the
        folders skipped as not readable contexts (each also logged as a StoreWarning)."""
        skipped: list[SkippedFolder] = []
        # A store of its own, closed at once: a store keeps each context it read open
        # (a lock and three files), which for every stored context exhausts the
        # process's file descriptors.
        async with FileStore(self.data_dir) as store:
            return await store.list_contexts(skipped), skipped

    async def delete(self, context_id: str) -> None:
        """Refuse new requests, end the streams, let running requests finish, stop the
        session (cancelling its turns), then delete the folder.

        Refused (BusyError) before any of that while another process writes into the
        context: its streams, this server's replies and its allowances stay as they are.

        An empty folder of that name (no context: the listing skips it and advises this
        DELETE) is removed, and that is all. A folder with files in it but no
        metadata.json (also skipped, with what it holds) is deleted as a context is:
        refused while a live process holds a lock in it.
        """
        validate_context_id(context_id)
        self._refuse_deleting(context_id)  # a DELETE already under way
        if context_id not in self._sessions and remove_empty_folder(self.data_dir, context_id):
            return
        # Decided before anything is refused: while the checks wait, the context is not
        # being deleted (a refused DELETE must not have answered others "gone"), and a
        # request then is served as one made before the DELETE.
        for _ in range(3):
            await self._deletable(context_id)
            session = self._sessions.get(context_id)
            writers = await _other_writers(self._store, context_id, session)
            # Another DELETE decided meanwhile: this one answers as it would after it.
            self._refuse_deleting(context_id)
            if writers:
                raise busy_error(context_id, writers)
            if self._sessions.get(context_id) is session:
                break
            # Opened (or closed) while the store was read: its own claims may have been
            # taken for another process's. Look again (a writer that still slips in is
            # refused by the store's deletion, late).
        self._deleting.add(context_id)  # no await since the checks: they still hold
        try:
            self._end(context_id)
            if self._requests.get(context_id):
                # A send accepted before the deletion is answered before it goes.
                await self._drained.setdefault(context_id, asyncio.Event()).wait()
            session = self._sessions.pop(context_id, None)
            self._last_used.pop(context_id, None)
            self._allowed.pop(context_id, None)
            if session is not None:
                await _close_quietly(session)
            closing = self._closing.get(context_id)
            if closing is not None:
                await asyncio.wait([closing])
            await self._store.delete_context(context_id)
        finally:
            self._deleting.discard(context_id)

    async def _deletable(self, context_id: str) -> None:
        """ContextNotFoundError unless there is something to delete under that id: a
        context, however damaged (or from a newer version), or a folder of that name
        without metadata.json (which the listing skips, advising this DELETE). Who
        writes into it is asked after this (and again by the store's deletion, under
        the folder's lock)."""
        try:
            await self._store.get_metadata(context_id)
        except (CorruptDataError, SchemaVersionError):
            pass  # it can still be deleted: the remedy its errors offer
        except ContextNotFoundError:
            # Never a link, nor anything outside the data folder (the id was validated).
            if not holds_no_context(context_dir(self.data_dir, context_id)):
                raise

    def watch(self, turn: Turn) -> None:
        """Collect ``turn``'s outcome, so that a failed turn is not reported as unretrieved.

        Clients learn how a turn ended from its signals (Error, MessageCompleted).
        """
        task = asyncio.get_running_loop().create_task(_reap(turn))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    @property
    def stopping(self) -> bool:
        """Whether the server is stopping: an events stream ended then first sends what
        its context's signal log holds (see :meth:`aclose`)."""
        return self._stopping

    async def aclose(self, *, stream_grace: float = STREAM_GRACE) -> None:
        """Close every session (running turns are cancelled), then the events streams,
        then the store.

        The sessions first: closing one stops its replies, which write their last
        signals (a reply's ``MessageCompleted`` with status ``interrupted``, the branch
        back to ``Idle``). The streams are ended after that and send what the log
        holds before they end, so a client does not stay on a reply that is "streaming"
        with a shorter text than the one stored. ``stream_grace``: seconds the streams
        get for that together (a client that stops reading cannot hold the server up).
        """
        self._stopping = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for session in sessions:
            await _close_quietly(session, "the Jupyter server stopped")
        if self._closing:
            await asyncio.wait(list(self._closing.values()))
        for context_id in list(self._ended):
            self._end(context_id)
        if self._streams:
            self._no_streams.clear()
            try:
                await asyncio.wait_for(self._no_streams.wait(), stream_grace)
            except asyncio.TimeoutError:  # TimeoutError itself only from Python 3.11
                logger.warning(
                    "%d events streams had not sent their last signals %.1f s after "
                    "they were ended; they end with the server",
                    sum(self._streams.values()),
                    stream_grace,
                )
        await self._store.close()


async def _close_quietly(session: ContextSession, reason: str = SESSION_CLOSED) -> None:
    # ``reason``: why a reply this cuts short stopped (its stored error).
    try:
        await session.aclose(reason=reason)
    except Exception:  # one broken session must not keep the others open
        logger.exception("closing session %s failed", session.id)


async def _reap(turn: Turn) -> None:
    with contextlib.suppress(CMError, asyncio.CancelledError):
        await turn


async def _other_writers(
    store: FileStore, context_id: str, session: ContextSession | None
) -> list[str]:
    # What the store would refuse a deletion for, but for the replies and turns of the
    # server's own session of the context, which the deletion stops. (Another process
    # may start writing after this look: the deletion is then refused after all, late.)
    if session is None:
        return await store.live_writers(context_id)
    own_store = session._store
    if not isinstance(own_store, FileStore):
        return []
    held = session._claims.taken()  # not one being asked for: that may be refused
    own = [own_store.branch_claim_path(context_id, branch) for branch in held]
    return await own_store.live_writers(context_id, own_claims=own)
