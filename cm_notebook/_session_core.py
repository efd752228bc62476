"""The runtime half of :class:`~cm_notebook.session.ContextSession`.

:class:`SessionCore` is the base class of ``ContextSession``: it holds what a live
session owns at run time and the properties every caller reads (``metadata``,
``branches``, ``active_branch``, which are public API of
``ContextSession``); the operations (send, branch, approve...) are in
:mod:`cm_notebook.session`.

What a session owns:

* its home event loop (the kernel's, else a private one; :mod:`cm_notebook._loop`)
  and its signal bus (:mod:`cm_notebook.events`);
* one state machine per branch (:class:`~cm_notebook._host.BranchMachines`);
* one claim per branch while a turn is set up or runs (:mod:`cm_notebook._claims`,
  shared with other processes through lock files);
* the running turns, the approval desk and the providers;
* a cache of the context's metadata, refreshed when the store says it changed.

A turn gets none of this directly: :meth:`SessionCore._start` builds a
:class:`~cm_notebook._host.TurnHost` (the explicit list of what a turn may use) and
hands it to a :class:`~cm_notebook.runner.TurnRunner`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import os
import sys
import threading
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from types import EllipsisType, TracebackType
from typing import Any, TypeVar

from . import events as ev
from . import fsm
from ._approval_log import LOCK_TIMEOUT as ALLOW_LIST_LOCK_TIMEOUT
from ._approval_log import AllowLists, ApprovalLog, approvals_folder
from ._claims import BranchClaims, Claim
from ._conversation import for_request
from ._dead_rounds import DeadRounds
from ._dropped import release_when_collected
from ._follower import LogFollower
from ._held_interrupt import HeldInterrupt
from ._host import BranchMachines, TurnHost
from ._loop import background_loop, running_loop, schedule_on
from ._registry import REGISTRY
from ._remote_decisions import DecisionBox
from ._session_follow import FollowOthers
from ._session_loop_ends import LoopEnds
from ._session_messages import MessageCache
from ._session_metadata import MetadataReads
from ._session_options import DEFAULTS, SessionOptions, check_max_tool_rounds
from ._session_prompt import PromptWrites
from ._sessionio import StoreAccess
from .approvals import ApprovalDesk
from .branch_defaults import BranchDefaults
from .errors import (
    BusyError,
    CMError,
    InvalidInputError,
    StateError,
)
from .model import ContextMetadata, Message
from .prompts import effective_system
from .providers import Provider
from .providers.pool import ProviderLike, ProviderPool
from .redact import get_logger
from .retry import DEFAULT_POLICY, RetryPolicy
from .runner import TurnRunner
from .signal_log import SignalLog
from .store import IndexEntry, Store
from .store.atomic import Fsync
from .store.folders import context_folder_of
from .store.workers import run_blocking
from .tools import ToolPolicy, ToolRegistry
from .turn import Handle, Turn

__all__ = ["SessionCore"]


_log = get_logger(__name__)

_T = TypeVar("_T")
_S = TypeVar("_S", bound="SessionCore")

#: Why a reply that a session's closing cut short stopped (its stored error).
SESSION_CLOSED = "the session was closed (its kernel, script or server stopped)"
JobT = TypeVar("JobT", bound=Handle[Any])


class SessionCore(PromptWrites, MetadataReads, FollowOthers, LoopEnds):
    """Runtime state of a session and the properties callers read (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        metadata: ContextMetadata,
        options: SessionOptions,
        *,
        owns_store: bool = False,
    ) -> None:
        # The one place the options are validated (create() and open() pass them on).
        chosen: SessionOptions = {**DEFAULTS, **options}
        tools, retry = chosen["tools"], chosen["retry"]
        max_tool_rounds, tool_timeout = chosen["max_tool_rounds"], chosen["tool_timeout"]
        self._store = store
        self._io = StoreAccess(store)
        self._metadata = metadata
        self.id = metadata.id
        self.tools = tools  # the setter makes the registry
        self.tool_policy = ToolPolicy.coerce(chosen["approval"])
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise InvalidInputError(
                f"retry must be a RetryPolicy, e.g. RetryPolicy(max_attempts=5); got {retry!r}"
            )
        self.retry_policy = retry or DEFAULT_POLICY
        self.max_tool_rounds = check_max_tool_rounds(max_tool_rounds)
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
        # Signals go through the context's log when the store has one, so their numbers
        # are shared with other processes and survive restarts.
        log_path = getattr(store, "signal_log_path", None)
        # Every fsync in the context's folder goes through the store's (FileStore.fsync).
        store_fsync = getattr(store, "fsync", None)
        self._fsync: Fsync = store_fsync if callable(store_fsync) else os.fsync
        self._signal_log = (
            None if log_path is None else SignalLog(log_path(self.id), fsync=self._fsync)
        )
        self._bus = ev.EventBus(self.id, recorder=self._signal_log)
        self._follower: LogFollower | None = None
        self._decisions: DecisionBox | None = None
        self._lock = threading.RLock()
        self._machines = BranchMachines()
        self._runners: dict[str, TurnRunner] = {}
        self._turn_claims: dict[str, Claim] = {}
        self._unsettled: dict[str, Message] = {}  # final states a full disk refused
        claim_path = getattr(store, "branch_claim_path", None)
        context_id = self.id  # not ``self`` in the closure: see cm_notebook._dropped
        self._claims = BranchClaims(
            None if claim_path is None else lambda branch: claim_path(context_id, branch)
        )
        self._approvals = ApprovalDesk()
        approvals_dir = approvals_folder(
            None if self._signal_log is None else context_folder_of(self._signal_log.path)
        )
        # Waits for another process's change as long as the store waits for its locks.
        timeout = getattr(store, "lock_timeout", None)
        self._allow_lists = AllowLists(
            approvals_dir,
            float(timeout) if isinstance(timeout, (int, float)) else ALLOW_LIST_LOCK_TIMEOUT,
            self._fsync,
        )
        self._approval_log = ApprovalLog(approvals_dir, self._fsync)
        # What each branch's last turn asked for, so retry() repeats it exactly.
        self._last_request: dict[str, tuple[Provider, dict[str, Any]]] = {}
        self._providers = ProviderPool(metadata.provider, chosen["provider"])
        self._defaults = BranchDefaults(self._providers.resolve)
        self._owns_store = owns_store  # close() closes the store only if we opened it
        self._closing: set[asyncio.Task[None]] = set()
        self._released_without_loop = False  # see cm_notebook._session_loop_ends
        self._begun: weakref.WeakSet[Turn] = weakref.WeakSet()
        self._streamed: weakref.WeakSet[Turn] = weakref.WeakSet()  # see _session_stream
        self._auto_title = bool(chosen["auto_title"])  # ask the model for a title (titles.py)
        # Background work that is not a turn (a model-made title): cancelled by close().
        self._background: set[asyncio.Future[None] | concurrent.futures.Future[None]] = set()
        # Sweeps and replays running on this session: close() stops them first, or they
        # would start turns on a session that has let go of its store and claims.
        self._jobs: set[Handle[Any]] = set()
        # Caches refreshed when the store's change token moves (see ``metadata``).
        self._metadata_token: object | None = None
        self._index_cache: dict[str, IndexEntry] = {}
        self._index_token: object | None = None
        # Settled messages already read or written: a turn reads only new ones.
        self._messages = MessageCache()
        # Tool calls a killed process left open are settled before a turn builds on them.
        self._dead_rounds = DeadRounds(
            store,
            self.id,
            self._io,
            self._messages,
            self._claims,
            self._publish,
            lambda: self._metadata,  # branch names, as opened (for the follower's start)
        )
        self._follow(store)
        # Dropped without close(), it releases its threads and files once collected.
        self._dropped = release_when_collected(
            self,
            self._follower,
            self._bus,
            self._loop,
            self._claims,
            store if owns_store else None,
        )

    # -- the context's metadata (public, shared with the API) ----------------------

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self: _S) -> _S:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    @property
    def tools(self) -> ToolRegistry:
        """The tools the model may call; change with ``session.tools.add(fn)``, or set
        a new list (``session.tools = [add, search]``): the next request offers them."""
        return self._tools

    @tools.setter
    def tools(self, tools: ToolRegistry | Iterable[Any]) -> None:
        self._tools = tools if isinstance(tools, ToolRegistry) else ToolRegistry(tools)

    @property
    def closed(self) -> bool:
        """Whether the session was closed (by the last of its holders)."""
        return self._bus.closed or not REGISTRY.held(self)

    def close(self, timeout: float | None = 30.0, *, reason: str = SESSION_CLOSED) -> None:
        """Give back this holder's use of the session; the last close releases it.

        Every :meth:`open`/:meth:`create` of a context is one holder of its one
        session; closing an already closed session does nothing. The last close
        cancels running turns, then closes what the session opened: the providers it
        built from specs (their connections), the store it opened (its locks), and the
        signal bus, which ends every :meth:`event_stream`. A provider or store that
        was passed in stays open: its owner closes it. From a script this waits (up to
        ``timeout`` seconds); on the session's own loop (a notebook cell) it cannot
        wait, so it schedules the clean-up and returns; use ``await session.aclose()``
        there to know when it is done. ``reason``: why a reply cut short stopped, as its
        stored error and the model read it.
        """
        if not REGISTRY.release(self):
            return
        self._dropped.detach()  # released here instead
        if not self._loop.is_running():
            self._release_without_loop()
            return
        release = self._release(reason)
        if self._on_loop_thread():
            task = self._loop.create_task(release)
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
            return
        asyncio.run_coroutine_threadsafe(release, self._loop).result(timeout)

    async def aclose(self, *, reason: str = SESSION_CLOSED) -> None:
        """Like :meth:`close`, for async code: returns once everything is released."""
        if not REGISTRY.release(self):
            return
        self._dropped.detach()  # released here instead
        release = self._release(reason)
        if self._on_loop_thread():
            await release
        else:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(release, self._loop))

    def _track_job(self, job: JobT) -> JobT:
        """Remember a sweep or replay until it ends, so that close() stops it."""
        with self._lock:
            self._jobs.add(job)
        job.when_done(lambda: self._forget_job(job))
        return job

    def _forget_job(self, job: Handle[Any]) -> None:
        with self._lock:
            self._jobs.discard(job)

    async def _release(self, reason: str) -> None:
        # Runs on the session's loop. Sweeps and replays first: stopped, they start no
        # more turns; then the turns running now, each stopped for ``reason``.
        with self._lock:
            started = list(self._jobs)
            for runner in self._runners.values():
                if not runner.turn.stopping():  # one the user stopped first keeps that
                    runner.cancel_reason = reason
        for handle in started:
            handle.cancel()
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
        for handle in started:
            with contextlib.suppress(Exception, asyncio.CancelledError):  # its owner sees it
                await handle
        await self._settle_replies()
        await self._providers.aclose()
        if self._owns_store:
            await self._store.close()
        self._stop_following()
        self._claims.close()
        if self._signal_log is not None:
            # The log's last fsync, off the loop (a kernel's, a server's): closing the
            # bus below then has none left to wait for.
            await run_blocking(self._signal_log.sync)
        self._bus.close()  # after the turns' last signals: streams read those, then end

    # -- signals -----------------------------------------------------------------------

    def _publish(self, event: ev.BaseEvent) -> None:
        # The bus is single-threaded: publish on the session loop's thread.
        if self._on_loop_thread():
            self._publish_here(event)
        else:
            # A loop that has ended (a script's asyncio.run returned while a write it
            # started was finishing) has nobody left to tell.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._publish_here, event)

    def _publish_here(self, event: ev.BaseEvent) -> None:
        if not self._bus.closed:  # a closed session has no one left to tell
            self._bus.publish(event)

    def _publish_context_update(self, changed: Iterable[str]) -> None:
        """Announce a change of the context's own metadata (title, prompt, tags...)."""
        self._publish(ev.ContextUpdated(changed=list(changed)))

    def _publish_branch_update(
        self, branch: str, changed: Iterable[str], *, head: str | EllipsisType | None = ...
    ) -> None:
        """Announce a change of ``branch`` that is not a new message (a rewound head,
        its system prompt, its parameters); ``head`` defaults to its current head."""
        current = self._head(branch) if head is ... else head
        self._publish(ev.BranchUpdated(branch=branch, head=current, changed=list(changed)))

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

    # -- turns -------------------------------------------------------------------------

    def _all_idle(self) -> bool:
        with self._lock:
            return not self._runners and not self._claims.held()

    def _check_open(self) -> None:
        """Raise StateError if the session is closed: a closed session changes nothing
        (its writes would reach the disk with no signal, and reopen files it let go)."""
        if self.closed:
            raise StateError(
                f"this session of context {self.id!r} is closed; open the context again "
                f"with ContextSession.open({self.id!r}) to go on"
            )

    @contextlib.contextmanager
    def _claim(self, branch: str, *, answer_dead_round: bool = True) -> Iterator[Claim]:
        # Hold the branch from the first write of a new turn: two threads, two sessions
        # or two processes sending on one branch cannot both write a prompt. On success
        # _start hands the claim to the turn, which gives it back when it is over.
        self._check_open()
        if self._loop.is_closed():
            raise self._loop_gone()
        self._refuse_running(branch)
        claim = self._dead_rounds.take_claim(branch)
        try:
            if self._unsettled:
                self._io.call(self._settle_replies())
            known = self._read_metadata().branches.get(branch)  # None: a branch to be made
            # ``answer_dead_round`` False: the turn replaces the dead reply (see
            # cm_notebook._dead_rounds.settle_dead_round). Another process's turn left
            # there unannounced is announced over first (DeadRounds.claimed).
            head = known.head if known is not None else None
            self._dead_rounds.claimed(branch, head, answer=answer_dead_round)
            yield claim
        except BaseException:
            claim.release()
            raise

    def _refuse_running(self, branch: str) -> None:
        # BusyError while this session's turn runs on ``branch``.
        with self._lock:
            running = self._runners.get(branch)
        if running is not None:
            raise running.refusal()

    def _provider(self, provider: ProviderLike | None) -> Provider:
        return self._providers.resolve(provider)

    async def _conversation(
        self, branch: str, exclude: str | None, head: str | None = None
    ) -> list[Message]:
        # What a request on ``branch`` (built on ``head``) shows the model (see
        # cm_notebook._conversation).
        _ids, messages = await self._messages.path_messages(self._store, self.id, branch, head)
        metadata = self._cached_metadata() or await self._fresh_metadata()
        prompt = effective_system(metadata, branch)  # read at once: it may be shared
        if exclude is not None and messages and messages[-1].id == exclude:
            messages = messages[:-1]  # the reply being retried, at the end of its path
        elif exclude is not None:
            messages = [m for m in messages if m.id != exclude]
        return for_request(messages, prompt)

    def _unsettled_reply(self, final: Message) -> None:
        with self._lock:
            self._unsettled[final.id] = final

    def _settled_reply(self, message_id: str) -> None:
        with self._lock:
            self._unsettled.pop(message_id, None)

    async def _settle_replies(self) -> None:
        # Store the final states that a full disk refused (see TurnHost.unsettled), so
        # no reply stays ``streaming``; what still fails waits for the next try.
        with self._lock:
            pending = list(self._unsettled.values())
        for final in pending:
            try:
                await self._store.update_message(self.id, final)
            except (OSError, CMError):
                continue
            self._messages.remember(final)
            with self._lock:
                if self._unsettled.get(final.id) is final:
                    del self._unsettled[final.id]

    def _turn_finished(self, turn: Turn) -> None:
        with self._lock:
            runner = self._runners.get(turn.branch)
            if runner is not None and runner.turn is turn:
                del self._runners[turn.branch]
            claim = self._turn_claims.pop(turn.branch, None)
        if claim is not None:
            claim.release()

    def _host(self) -> TurnHost:
        return TurnHost(
            context_id=self.id,
            store=self._store,
            publish=self._publish,
            publish_delta=self._bus.publish_delta,  # turns run on the bus's loop
            machines=self._machines,
            approvals=self._approvals,
            tools=lambda: self.tools,
            tool_policy=lambda: self.tool_policy,
            retry_policy=self.retry_policy,
            max_tool_rounds=self.max_tool_rounds,
            tool_timeout=self.tool_timeout,
            conversation=self._conversation,
            remember=self._messages.remember,
            finished=self._turn_finished,
            unsettled=self._unsettled_reply,
            settled=self._settled_reply,
            allowed=self._allow_lists.scope_of,
            record=self._record_decision,
        )

    def _start(
        self,
        claim: Claim,
        start: fsm.Send | fsm.Retry,
        head: str | None,
        provider: Provider,
        params: Mapping[str, Any],
        prologue: Callable[[Turn], Awaitable[None]] | None = None,
        prompt: concurrent.futures.Future[None] | None = None,
    ) -> Turn:
        # Start a turn on the claimed branch, after ``head`` (its prompt). ``prologue``
        # (waiting for ``prompt``, the background write of the user's message) runs
        # first in the turn's task; if it fails, the turn ends with its error.
        branch = claim.branch
        turn = Turn(branch, self._loop, prompt=prompt)
        turn.after_await = self._saved_copies_up_to_date
        turn.waiting_calls = functools.partial(self._approvals.calls_on, branch)
        runner = TurnRunner(
            self._host(), turn, start=start, head=head, provider=provider, params=params
        )
        # Ctrl-C held: a turn registered on its branch is one that runs (_held_interrupt).
        with HeldInterrupt() as ctrl_c:
            with self._lock:
                if branch in self._runners:
                    raise BusyError(f"a reply is already being generated on branch {branch!r}")
                self._runners[branch] = runner
                self._turn_claims[branch] = claim
                self._last_request[branch] = (provider, dict(params))
            work = self._unless_released(
                runner, runner.run() if prologue is None else self._after(prologue, runner)
            )
            try:
                future = schedule_on(self._loop, work)
            except RuntimeError:  # the loop closed since _claim looked
                work.close()
                with self._lock:
                    self._runners.pop(branch, None)
                    self._turn_claims.pop(branch, None)
                claim.release()
                raise self._loop_gone() from None
            turn.attach(future, runner.request_cancel)
        ctrl_c.raise_pending(
            f"interrupted as the reply on branch {branch!r} started: it goes on "
            f"(session.turn({branch!r}) is it; session.stop(branch={branch!r}) stops it)"
        )
        return turn

    def _loop_gone(self) -> StateError:
        return StateError(
            f"the event loop this session of context {self.id!r} runs its turns on has "
            "ended (it was made inside an asyncio.run() that has returned). Close it and "
            f"open the context again with ContextSession.open({self.id!r}) where you use it"
        )

    def _saved_copies_up_to_date(self) -> None:
        # Run by the cell awaiting a turn: the saved copies of this conversation get the
        # turn's update now, as that cell. A headless run (nbclient: nbconvert, papermill,
        # nbval) keeps only the running cell's messages, and the throttled update would
        # come after the notebook ended. Only if views were shown (never loaded here).
        live = sys.modules.get("cm_notebook.widgets._live_output")
        if live is not None:
            live.flush_copies(self)

    async def _after(
        self, prologue: Callable[[Turn], Awaitable[None]], runner: TurnRunner
    ) -> Message:
        turn = runner.turn
        try:
            await prologue(turn)
        except BaseException as exc:
            # Nothing was asked of the model: free the branch, tell the views why.
            turn.progress.finish()
            self._turn_finished(turn)
            if isinstance(exc, Exception):
                error = ev.ErrorReported(branch=turn.branch, kind="internal", message=str(exc))
                self._publish(error)
            raise
        return await runner.run()

    def _rewind_to_prompt(self, branch: str) -> str:
        # Move the head back past the last assistant reply (and anything after the
        # prompt it answered), so the next reply becomes its sibling; returns the prompt.
        ids, history = self._io.call(self._messages.path_messages(self._store, self.id, branch))
        head = ids[-1] if ids else None
        while history and history[-1].role == "assistant":
            history.pop()
        if not history:
            raise StateError(f"branch {branch!r} has no message to reply to")
        prompt = history[-1].id
        if prompt != head:
            self._io.call(self._store.set_branch_head(self.id, branch, prompt, expected_head=head))
            self._publish_branch_update(branch, ["head"], head=prompt)
        return prompt

    def _forget_branch(self, branch: str) -> None:
        self._machines.forget(branch)
        self._messages.forget_path(branch)
        with self._lock:
            self._last_request.pop(branch, None)
