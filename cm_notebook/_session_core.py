"""The machinery under :class:`~cm_notebook.session.ContextSession`.

``_SessionCore`` holds a session's runtime state (the home event loop, the signal bus,
one state machine per branch, running turns, pending approvals, providers) and the
helpers that :class:`~cm_notebook.runner.TurnRunner` and the public API share. The
public methods live in :mod:`cm_notebook.session`; nothing here is public API.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from . import events as ev
from . import fsm
from ._loop import background_loop, running_loop, schedule_on
from ._sessionio import StoreAccess
from .approvals import ApprovalDesk
from .branch_defaults import BranchDefaults
from .errors import BranchNotFoundError, BusyError, InvalidInputError
from .ids import validate_branch_name
from .model import Branch, ContextMetadata, Message, MessageStatus
from .providers import Provider
from .providers.pool import ProviderLike, ProviderPool
from .retry import DEFAULT_POLICY, RetryPolicy
from .runner import TurnRunner
from .store import Store
from .tools import Policy, ToolPolicy, ToolRegistry
from .turn import Turn

__all__ = ["SessionCore"]

_T = TypeVar("_T")


class SessionCore:
    """Runtime state and shared helpers of a session (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        metadata: ContextMetadata,
        *,
        provider: ProviderLike | None = None,
        tools: Iterable[Any] = (),
        approval: ToolPolicy | Policy | Mapping[str, Policy] | None = None,
        retry: RetryPolicy | None = None,
        max_tool_rounds: int = 10,
        tool_timeout: float | None = None,
        owns_store: bool = False,
        auto_title: bool = False,
    ) -> None:
        self._store = store
        self._io = StoreAccess(store)
        self._metadata = metadata
        self.id = metadata.id
        self.tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)
        self.tool_policy = ToolPolicy.coerce(approval)
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidInputError(
                f"retry must be a RetryPolicy, e.g. RetryPolicy(max_attempts=5); got {retry!r}"
            )
        self.retry_policy = retry or DEFAULT_POLICY
        if isinstance(max_tool_rounds, bool) or not isinstance(max_tool_rounds, int):
            raise InvalidInputError(f"max_tool_rounds must be an integer, got {max_tool_rounds!r}")
        if max_tool_rounds < 0:
            raise InvalidInputError(f"max_tool_rounds must be >= 0, got {max_tool_rounds}")
        self.max_tool_rounds = max_tool_rounds
        if tool_timeout is not None and (
            isinstance(tool_timeout, bool)
            or not isinstance(tool_timeout, (int, float))
            or not tool_timeout > 0
        ):
            raise InvalidInputError(
                f"tool_timeout must be a number of seconds > 0 (or None), got {tool_timeout!r}"
            )
        self.tool_timeout = tool_timeout
        # The loop that runs this session's turns and owns its event bus: the running
        # loop (a notebook's kernel) if there is one, else the private background loop.
        loop = running_loop()
        self._loop = loop if loop is not None else background_loop()
        self._loop_thread: int | None = threading.get_ident() if loop is not None else None
        self._bus = ev.EventBus(self.id)
        self._lock = threading.RLock()
        self._machines: dict[str, fsm.Machine] = {}
        self._runners: dict[str, TurnRunner] = {}
        self._approvals = ApprovalDesk()
        self._claimed: set[str] = set()  # branches whose new turn is being set up
        # What each branch's last turn asked for, so retry() repeats it exactly.
        self._last_request: dict[str, tuple[Provider, dict[str, Any]]] = {}
        self._providers = ProviderPool(metadata.provider, provider)
        self._defaults = BranchDefaults(self._providers.resolve)
        self._owns_store = owns_store  # close() closes the store only if we opened it
        self._closing: set[asyncio.Task[None]] = set()
        self._auto_title = bool(auto_title)  # ask the model for a title (titles.py)
        # Background work that is not a turn (a model-made title): cancelled by close().
        self._background: set[asyncio.Future[None] | concurrent.futures.Future[None]] = set()

    # -- the context's metadata (public, shared with the API) ----------------------

    @property
    def metadata(self) -> ContextMetadata:
        """The context's metadata, re-read if another process changed it."""
        self._metadata = self._io.call(self._store.get_metadata(self.id))
        return self._metadata

    @property
    def branches(self) -> dict[str, Branch]:
        """Branches by name."""
        return dict(self.metadata.branches)

    @property
    def active_branch(self) -> str:
        """The name of the active branch."""
        return self.metadata.active_branch

    def _branch_name(self, branch: str | None) -> str:
        if branch is None:
            return self.active_branch
        return validate_branch_name(branch)

    def _head(self, branch: str) -> str | None:
        metadata = self.metadata
        found = metadata.branches.get(branch)
        if found is None:
            raise BranchNotFoundError(
                f"there is no branch {branch!r}; the branches are {sorted(metadata.branches)}"
            )
        return found.head

    def _free_branch_name(self, stem: str) -> str:
        existing = self.branches
        for n in range(1, 10_000):
            candidate = f"{stem}-{n}"
            if candidate not in existing:
                return candidate
        raise InvalidInputError(f"no free branch name starting with {stem!r}")

    # -- lifecycle ---------------------------------------------------------------------

    def close(self, timeout: float | None = 30.0) -> None:
        """Cancel running turns, then release what this session opened.

        Once the cancelled turns have finished, the providers the session built from
        specs are closed (their connections) and the store it opened releases its locks.
        A provider or store that was passed in stays open: its owner closes it. From a
        script this waits (up to ``timeout`` seconds); on the session's own loop (a
        notebook cell) it cannot wait, so it schedules the clean-up and returns; use
        ``await session.aclose()`` there to know when it is done.
        """
        if not self._loop.is_running():
            # Its loop is gone (e.g. an ended asyncio.run): no turn can be running and the
            # providers' connections died with it; only the store's locks remain.
            if self._owns_store:
                self._io.call(self._store.close())
            return
        release = self._release()
        if self._on_loop_thread():
            task = self._loop.create_task(release)
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            return
        asyncio.run_coroutine_threadsafe(release, self._loop).result(timeout)

    async def aclose(self) -> None:
        """Like :meth:`close`, for async code: returns once everything is released."""
        release = self._release()
        if self._on_loop_thread():
            await release
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(release, self._loop))

    async def _release(self) -> None:
        # Runs on the session's loop.
        with self._lock:
            turns = [runner.turn for runner in self._runners.values()]
        jobs: list[asyncio.Future[None]] = [
            asyncio.wrap_future(job) if isinstance(job, concurrent.futures.Future) else job
            for job in self._background
        ]
        for job in jobs:
            job.cancel()
        for turn in turns:
            turn.cancel()
        for turn in turns:
            with contextlib.suppress(Exception):  # the turn's owner sees its outcome
                await turn
        if jobs:
            await asyncio.wait(jobs)
        await self._providers.aclose()
        if self._owns_store:
            await self._store.close()

    # -- internals used by TurnRunner and FanOut ---------------------------------------

    def _machine(self, branch: str) -> fsm.Machine:
        with self._lock:
            return self._machines.get(branch) or fsm.Machine.initial()

    def _set_machine(self, branch: str, machine: fsm.Machine) -> None:
        with self._lock:
            self._machines[branch] = machine

    def _publish(self, event: ev.BaseEvent) -> None:
        # The bus is single-threaded: publish on the session loop's thread.
        if self._on_loop_thread():
            self._bus.publish(event)
        else:
            self._loop.call_soon_threadsafe(self._bus.publish, event)

    def _on_loop_thread(self) -> bool:
        if self._loop_thread is None:
            return running_loop() is self._loop
        return threading.get_ident() == self._loop_thread

    def _on_loop(self, fn: Callable[[], _T]) -> _T:
        if self._on_loop_thread() or not self._loop.is_running():
            return fn()

        async def call() -> _T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), self._loop).result()

    def _turn_finished(self, runner: TurnRunner) -> None:
        with self._lock:
            if self._runners.get(runner.branch) is runner:
                del self._runners[runner.branch]

    async def _request_messages(
        self, branch: str, exclude: str | None = None
    ) -> builtins.list[Message]:
        ids = await self._store.path(self.id, branch)
        messages = await self._store.get_messages(self.id, ids)
        return _answer_every_call([m for m in messages if m.id != exclude and _shown_to_model(m)])

    # -- private helpers ---------------------------------------------------------------

    def _all_idle(self) -> bool:
        with self._lock:
            return not self._runners and not self._claimed

    @contextlib.contextmanager
    def _claim(self, branch: str) -> Iterator[None]:
        # Hold the branch from the first write of a new turn until its runner is
        # registered, so two threads sending on one branch cannot both write a prompt.
        with self._lock:
            if branch in self._runners or branch in self._claimed:
                raise BusyError(
                    f"a reply is still being generated on branch {branch!r}; "
                    "await it, or call turn.cancel()"
                )
            self._claimed.add(branch)
        try:
            yield
        finally:
            with self._lock:
                self._claimed.discard(branch)

    def _provider(self, provider: ProviderLike | None) -> Provider:
        return self._providers.resolve(provider)

    def _start(
        self,
        branch: str,
        start: fsm.Send | fsm.Retry,
        provider: Provider,
        params: Mapping[str, Any],
    ) -> Turn:
        turn = Turn(branch, self._loop)
        runner = TurnRunner(self, turn, start=start, provider=provider, params=params)
        with self._lock:
            if branch in self._runners:
                raise BusyError(f"a reply is already being generated on branch {branch!r}")
            self._runners[branch] = runner
            self._last_request[branch] = (provider, dict(params))
        future = schedule_on(self._loop, runner.run())
        turn._attach(future, runner.request_cancel)
        return turn


def _shown_to_model(message: Message) -> bool:
    # Failed replies, and replies cancelled before they said anything, are not part of
    # the conversation the model sees (some providers refuse empty assistant turns).
    if message.status is MessageStatus.ERROR:
        return False
    return not (
        message.role == "assistant"
        and message.status is MessageStatus.INTERRUPTED
        and not message.content
        and not message.tool_calls
    )


def _answer_every_call(path: list[Message]) -> list[Message]:
    # Providers refuse a conversation in which a tool call has no result. The engine
    # always stores one, but a write can fail (full disk) or a file be skipped as
    # corrupt: fill such gaps in the request only (nothing is written).
    out: list[Message] = []
    open_calls: dict[str, str] = {}  # id -> result text to use if never answered

    def close_open() -> None:
        for call_id, text in open_calls.items():
            out.append(
                Message(
                    id=f"missing-{call_id}"[:128], role="tool", content=text, tool_call_id=call_id
                )
            )
        open_calls.clear()

    for message in path:
        if message.role == "tool" and message.tool_call_id in open_calls:
            del open_calls[message.tool_call_id]
        elif message.role != "tool":
            close_open()
        out.append(message)
        for call in message.tool_calls:
            open_calls[call.id] = call.result or "error: no result was recorded for this call"
    close_open()
    return out
