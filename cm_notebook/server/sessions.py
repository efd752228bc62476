"""The live sessions of a server process: one :class:`ContextSession` per context.

Every request about a context goes to the same session object, so a send from one
client and an approval from another meet in one state machine, and every events
stream listens to one signal bus. Sessions are opened on first use, on the server's
event loop (so their turns and signals run there, like a notebook's on its kernel's
loop), and closed when their context is deleted or the server stops.

:func:`open_session` is the one place a session is opened: swap it to change how
sessions are found (e.g. a process-wide registry that notebooks share too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import CMError, InvalidInputError
from ..ids import validate_context_id
from ..model import ContextMetadata
from ..providers import get_provider
from ..session import ContextSession
from ..store import FileStore
from ..tools import ToolPolicy
from ..turn import Turn

__all__ = ["SessionRegistry", "open_session"]

logger = logging.getLogger(__name__)


def open_session(
    context_id: str, *, data_dir: Path, tools: Iterable[Any], approval: ToolPolicy
) -> ContextSession:
    """Open the stored context ``context_id`` (ContextNotFoundError if there is none)."""
    return ContextSession.open(context_id, data_dir=data_dir, tools=tools, approval=approval)


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
    ) -> None:
        self.data_dir = data_dir
        self.tools = list(tools)
        self.approval = approval or ToolPolicy()
        self.default_provider = default_provider
        # For what is not about one open session: listing and deleting contexts.
        self._store = FileStore(data_dir)
        self._sessions: dict[str, ContextSession] = {}
        self._reapers: set[asyncio.Task[None]] = set()
        self._ended: dict[str, asyncio.Event] = {}
        self._streams: dict[str, int] = {}

    def get(self, context_id: str) -> ContextSession:
        """The live session of ``context_id``, opened on first use.

        Raises InvalidIdError for a malformed id, ContextNotFoundError for an unknown one.
        """
        validate_context_id(context_id)
        session = self._sessions.get(context_id)
        if session is None:
            session = open_session(
                context_id, data_dir=self.data_dir, tools=self.tools, approval=self.approval
            )
            self._sessions[context_id] = session
        return session

    def ended(self, context_id: str) -> asyncio.Event:
        """Set when this server closes the context's session (deleted, or shutting down).

        Streams of the context's signals end then, whatever the session's bus does.
        """
        return self._ended.setdefault(context_id, asyncio.Event())

    @contextlib.contextmanager
    def streaming(self, context_id: str) -> Iterator[asyncio.Event]:
        """Count an open events stream of the context while inside; yields :meth:`ended`."""
        self._streams[context_id] = self._streams.get(context_id, 0) + 1
        try:
            yield self.ended(context_id)
        finally:
            left = self._streams.pop(context_id) - 1
            if left:
                self._streams[context_id] = left

    def streams(self, context_id: str) -> int:
        """How many events streams of the context are open."""
        return self._streams.get(context_id, 0)

    def _end(self, context_id: str) -> None:
        ended = self._ended.pop(context_id, None)
        if ended is not None:
            ended.set()

    async def create(
        self,
        *,
        title: str | None,
        provider: str | None,
        provider_options: Mapping[str, Any],
        system: str | None,
        tags: list[str],
    ) -> ContextSession:
        """Create a context and keep its session."""
        spec = provider or self.default_provider
        if provider_options:
            await _check_options(spec, provider_options)
        session = ContextSession.create(
            title,
            provider=spec,
            provider_options=provider_options,
            system=system,
            tags=tags,
            data_dir=self.data_dir,
            tools=self.tools,
            approval=self.approval,
        )
        self._sessions[session.id] = session
        return session

    async def list(self) -> list[ContextMetadata]:
        """Metadata of every stored context, most recently updated first."""
        return await self._store.list_contexts()

    async def delete(self, context_id: str) -> None:
        """Stop the context's session (cancelling its turns), then delete its folder."""
        validate_context_id(context_id)
        await self._store.get_metadata(context_id)  # unknown: ContextNotFoundError
        session = self._sessions.pop(context_id, None)
        self._end(context_id)
        if session is not None:
            await session.aclose()
        await self._store.delete_context(context_id)

    def watch(self, turn: Turn) -> None:
        """Collect ``turn``'s outcome, so that a failed turn is not reported as unretrieved.

        Clients learn how a turn ended from its signals (Error, MessageCompleted).
        """
        task = asyncio.get_running_loop().create_task(_reap(turn))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)

    async def aclose(self) -> None:
        """Close every session (running turns are cancelled) and the store."""
        sessions = list(self._sessions.values())
        self._sessions.clear()
        for context_id in list(self._ended):
            self._end(context_id)
        for session in sessions:
            try:
                await session.aclose()
            except Exception:  # one broken session must not keep the others open
                logger.exception("closing session %s failed", session.id)
        await self._store.close()


async def _check_options(spec: str, options: Mapping[str, Any]) -> None:
    # Options the provider does not take would otherwise fail the first send with a
    # TypeError; build it once now so the creator hears about them.
    try:
        probe = get_provider(spec, **options)
    except TypeError as exc:
        raise InvalidInputError(
            f"provider {spec!r} does not take the options {sorted(options)}: {exc}"
        ) from exc
    except InvalidInputError:
        raise
    except CMError:
        return  # e.g. a missing extra: the first send says so, as it would in a notebook
    await probe.aclose()


async def _reap(turn: Turn) -> None:
    with contextlib.suppress(CMError, asyncio.CancelledError):
        await turn
