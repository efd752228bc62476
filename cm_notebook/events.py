"""The signal bus: numbered signals that tell views what changed, so they pull the data.

The last step of the send path (session -> turn runner -> state machine -> provider
-> store -> **signals**). The signal classes live in :mod:`cm_notebook.signals` and
are re-exported here, so ``from cm_notebook.events import ContentDelta`` works.

A context's :class:`EventBus` stamps every signal with a per-context sequence number
(``seq``, 1, 2, 3, ...), the context id and the time, keeps the most recent ones in a
bounded history, and hands them to subscribers. Signals carry ids and deltas, never
whole message contents: a view that wants a message pulls it from the session.

Self-healing: a view that misses signals sees a gap in ``seq`` (or, for text, a gap in
:attr:`ContentDelta.offset`) and re-pulls. When the bus itself has to drop events for
a subscriber (its buffer overflowed, or it asked for history older than the bus keeps)
it sends a :class:`Resync` instead: "your picture is stale; re-pull the state, then
carry on with the events after ``Resync.seq``".

Publishing::

    bus = EventBus(context_id)
    stamped = bus.publish(ContentDelta(message_id=mid, text="Hel", offset=0, branch="main"))
    stamped.seq  # assigned by the bus

The caller builds the event with its own fields (checked by pydantic and mypy);
``seq``, ``context_id`` and ``at`` are left at their defaults and set by the bus on a
copy. Clients reading JSON (SSE, REST) turn it back into a model with
:func:`parse_event`.

Threads: :meth:`EventBus.publish` and reading a stream belong to the thread running
the event loop (in a notebook, the kernel's); code on other threads hands signals over
with ``loop.call_soon_threadsafe(bus.publish, event)``, so the hot path pays no
locking. Registering and unregistering (:meth:`EventBus.subscribe`,
:meth:`EventBus.stream`, the returned unsubscribe function) are safe from any thread
(a comm handler may run on a subshell thread); callbacks always run on the thread
that publishes.

Deltas in batches: on a bus with a recorder (the context's signal log), a
:class:`ContentDelta` published on a running event loop is held back and written, with
the deltas that follow it, in one batch (one lock, one write) once the publishing code
yields to the loop, before the next signal of another kind, every
:data:`DELTA_BATCH` deltas or :data:`DELTA_HOLD` seconds (a publisher that does not
yield), and at :meth:`EventBus.close`. It is numbered then and
reaches subscribers then, in order: every subscriber, and every reader of the log,
sees the signals in the order of their numbers. Held deltas of one message that
continue each other (each at the offset where the one before it ended) become one
delta with their texts joined (:mod:`cm_notebook._delta_runs`): a fast model's
chunks cost a number, a record and a delivery per batch, not per chunk.
:meth:`EventBus.publish` returns such a delta unnumbered (``seq`` 0). Readers of the
reply's text in this process (``session.stream()``) do not wait for this: they read
the turn's progress.
A reply's reasoning (:class:`ReasoningDelta`) is held and batched in the same way, in
runs of its own.
Batches of deltas alone are at least ``delta_interval`` seconds apart
(:data:`DELTA_INTERVAL`): a model whose tokens arrive one per loop turn would otherwise
cost a write per token, and wake every follower of the log for each.

Filtering: ``bus.subscribe(callback, branch="main", kinds={"ContentDelta"})`` calls
``callback`` only for the signals of that branch and of those kinds (the names in
:data:`SIGNAL_KINDS`).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Protocol, TypeAlias, TypeVar, cast

from ._delta_runs import DeltaRun
from ._event_filters import EventCallback, check_kinds, filtered
from ._event_stream import EventStream, _Buffer
from .errors import InvalidInputError, StateError
from .model import utcnow
from .redact import get_logger
from .signals import (
    EVENT_TYPES,
    SIGNAL_KINDS,
    BaseEvent,
    BranchCreated,
    BranchDeleted,
    BranchSwitched,
    BranchUpdated,
    ContentDelta,
    ContextUpdated,
    ErrorReported,
    Event,
    MessageAdded,
    MessageCompleted,
    ReasoningDelta,
    Resync,
    ScoreUpdated,
    StateChanged,
    ToolApprovalRequested,
    ToolCallResolved,
    parse_event,
    restamped,
    trusted_delta,
    trusted_reasoning_delta,
)

__all__ = [
    "DELTA_BATCH",
    "DELTA_HOLD",
    "DELTA_INTERVAL",
    "SIGNAL_KINDS",
    "BaseEvent",
    "BranchCreated",
    "BranchDeleted",
    "BranchSwitched",
    "BranchUpdated",
    "ContentDelta",
    "ContextUpdated",
    "ErrorReported",
    "Event",
    "EventBus",
    "EventCallback",
    "EventStream",
    "MessageAdded",
    "MessageCompleted",
    "ReasoningDelta",
    "Resync",
    "ScoreUpdated",
    "SignalRecorder",
    "StateChanged",
    "ToolApprovalRequested",
    "ToolCallResolved",
    "parse_event",
]

logger = get_logger(__name__)


EventT = TypeVar("EventT", bound=BaseEvent)

#: The most text deltas a bus with a recorder holds back before writing them.
DELTA_BATCH = 256
#: The longest (seconds) a held delta waits when the publisher never yields to the loop.
DELTA_HOLD = 0.02
#: The least time (seconds) between two batches of deltas written on their own: at most
#: 40 a second per context, whatever the model's speed (views redraw at 20 a second).
DELTA_INTERVAL = 0.025

# A text delta waiting for its number: ``stamp(seq)`` builds it (see EventBus._delta).
_Stamp: TypeAlias = Callable[[int], Event]


class SignalRecorder(Protocol):
    """Numbers and keeps a bus's signals (e.g. the :class:`~cm_notebook.signal_log.SignalLog`).

    With a recorder, the bus's numbers are the recorder's: shared with other
    processes and kept across restarts.
    """

    @property
    def last_seq(self) -> int:
        """The number of the last signal recorded so far."""
        ...

    def record(self, stamp: Callable[[int], Event]) -> Event:
        """Record ``stamp(n)`` for the next number ``n`` and return it."""
        ...

    def record_all(
        self, stamps: Sequence[Callable[[int], Event]], *, after: int = 0
    ) -> list[Event]:
        """Record each ``stamp(n)`` with consecutive next numbers, all above ``after``;
        return them in order. If it raises, none of them is recorded."""
        ...

    def close(self) -> None:
        """Release what the recorder holds open."""
        ...


class EventBus:
    """Numbers, stores and distributes one context's signals.

    Args:
        context_id: stamped on every event.
        history: how many recent events :meth:`events` and :meth:`stream` can replay.
        subscriber_buffer: how many unread events one async stream may hold before it
            is reset to a single :class:`Resync`. Publishing never waits for a reader.
        clock: returns the current UTC time; replace it for deterministic tests.
        recorder: numbers and keeps every signal (the context's signal log); the bus
            then starts from the recorder's last number instead of 0.
        delta_interval: the least time in seconds between two batches of text deltas
            written on their own (see the module docstring).

    Not thread-safe: use it from the event loop's thread (see the module docstring).
    """

    def __init__(
        self,
        context_id: str,
        *,
        history: int = 10_000,
        subscriber_buffer: int = 1_000,
        clock: Callable[[], datetime] = utcnow,
        recorder: SignalRecorder | None = None,
        delta_interval: float = DELTA_INTERVAL,
    ) -> None:
        if history < 0:
            raise InvalidInputError(f"history must be >= 0, got {history!r}")
        if subscriber_buffer < 1:
            raise InvalidInputError(f"subscriber_buffer must be >= 1, got {subscriber_buffer!r}")
        if not 0 <= delta_interval < 60:
            raise InvalidInputError(
                f"delta_interval must be >= 0 and < 60 seconds, got {delta_interval!r}"
            )
        self.context_id = context_id
        self._clock = clock
        self._recorder = recorder
        self._record_failing = False  # the last record failed (said once in the log)
        self._seq = 0
        if recorder is not None:
            try:
                self._seq = recorder.last_seq
            except OSError as exc:
                logger.warning(
                    "could not read the last signal number of %s: %s",
                    getattr(recorder, "path", recorder),
                    exc,
                )
        self._history: deque[Event] = deque(maxlen=history)
        self._buffer_limit = subscriber_buffer
        self._tokens = itertools.count()
        # Guards registration only; publish iterates immutable snapshots without it.
        self._registry_lock = threading.Lock()
        self._callbacks: dict[int, EventCallback] = {}
        self._buffers: dict[int, _Buffer] = {}
        # Snapshots iterated by publish: subscribing, unsubscribing or a stream being
        # garbage-collected during delivery then cannot disturb the loop in progress.
        self._callback_list: tuple[EventCallback, ...] = ()
        self._buffer_list: tuple[_Buffer, ...] = ()
        self._queue: deque[Event] = deque()
        # Text deltas waiting to be numbered and recorded in one batch (see _hold).
        self._held: list[DeltaRun] = []
        self._held_deltas = 0  # how many deltas were merged into those held
        self._held_since = 0.0  # time.monotonic() when the first of them was held
        self._delta_interval = delta_interval
        self._batch_written_at = -delta_interval  # when _write_held last wrote deltas
        self._dispatching = False
        self._closed = False

    def __repr__(self) -> str:
        return (
            f"<EventBus {self.context_id!r} last_seq={self._seq} "
            f"callbacks={len(self._callbacks)} streams={len(self._buffers)}>"
        )

    @property
    def last_seq(self) -> int:
        """The sequence number of the last published event (0 before the first)."""
        return self._seq

    @property
    def subscriber_count(self) -> int:
        """Callbacks plus open streams currently registered."""
        return len(self._callbacks) + len(self._buffers)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    def publish(self, event: EventT) -> EventT:
        """Stamp ``event`` with the next ``seq``, ``context_id`` and time, and deliver it.

        Returns the stamped copy (``event`` itself is not changed). Callbacks run before
        this returns; async streams get it in their buffers. A :class:`ContentDelta` on a
        bus with a recorder, published on a running loop, is the exception: it is
        numbered and delivered with its batch, joined to the held delta it continues
        (see the module docstring), and returned as given. A callback that publishes
        does not reorder delivery: its event is delivered after the current one.

        Raises:
            InvalidInputError: ``event`` is not one of the event types of :data:`Event`.
            StateError: the bus is closed.
        """
        if type(event) not in EVENT_TYPES:
            raise InvalidInputError(f"{type(event).__name__} is not a publishable event type")
        if self._closed:
            raise StateError(f"the event bus of context {self.context_id!r} is closed")
        if isinstance(event, (ContentDelta, ReasoningDelta)):
            reasoning = isinstance(event, ReasoningDelta)
            if self._hold(event.branch, event.message_id, event.text, event.offset, reasoning):
                return event
            stamp: _Stamp = self._delta(
                event.branch, event.message_id, event.text, event.offset, self._clock(), reasoning
            )
        else:
            stamp = functools.partial(self._restamp, event, self._clock())
        return cast(EventT, self._emit(stamp))

    def publish_delta(self, branch: str | None, message_id: str, text: str, offset: int) -> None:
        """Publish ``ContentDelta(branch=..., message_id=..., text=..., offset=...)``.

        The same as :meth:`publish` with that delta, at half the cost (the delta is
        built once, already numbered): what a streaming reply calls for every chunk.
        Ignored once the bus is closed.

        Raises:
            InvalidInputError: ``offset`` is negative or a field has the wrong type.
        """
        if self._closed:
            return
        if not (
            isinstance(message_id, str)
            and isinstance(text, str)
            and isinstance(offset, int)
            and offset >= 0
            and (branch is None or isinstance(branch, str))
        ):
            raise InvalidInputError(
                "a text delta needs a branch name (or None), a message id, a text and an "
                f"offset >= 0, got {(branch, message_id, text, offset)!r}"
            )
        if not self._hold(branch, message_id, text, offset):
            self._emit(self._delta(branch, message_id, text, offset, self._clock()))

    def _emit(self, stamp: _Stamp) -> Event:
        # Number and deliver one signal, after the deltas held back for the next batch:
        # they come first, numbered and written with it (one lock, one write).
        held, self._held = self._held, []
        self._held_deltas = 0
        events = self._number([*held, stamp])
        self._dispatch(events)
        return events[-1]

    def _number(self, stamps: Sequence[_Stamp]) -> list[Event]:
        # Number ``stamps`` through the recorder if there is one (which also writes
        # them), else here.
        events: list[Event] | None = None
        if self._recorder is not None:
            try:
                # After the bus's own last number too: signals it had to number itself
                # (the log could not take them) keep numbers nobody else gets.
                events = self._recorder.record_all(stamps, after=self._seq)
            except OSError as exc:
                # A full or broken disk (or a context folder removed on disk) must not
                # stop the session: this process still sees the signals, numbered
                # locally (other processes do not). Said once, not for every signal.
                if not self._record_failing:
                    logger.warning(
                        "could not record signals in %s (%s); until it can again, only this "
                        "process sees them",
                        self._recorder,
                        exc,
                    )
                self._record_failing = True
            else:
                if self._record_failing:
                    logger.info("recording signals in %s again", self._recorder)
                self._record_failing = False
        if events is None:
            events = [stamp(self._seq + n) for n, stamp in enumerate(stamps, 1)]
        self._seq = max(self._seq, events[-1].seq)
        return events

    def _restamp(self, event: BaseEvent, at: datetime, seq: int) -> Event:
        # publish checked the type against EVENT_TYPES
        return cast(Event, restamped(event, seq, self.context_id, at))

    def _delta(
        self,
        branch: str | None,
        message_id: str,
        text: str,
        offset: int,
        at: datetime,
        reasoning: bool = False,
    ) -> _Stamp:
        # One object per delta until it is numbered; then the delta is built once,
        # without validation: every field comes from the engine (a number the bus gave, a
        # text offset it counted, its own clock's aware time), and validating them was a
        # third of what a streamed chunk cost.
        build = trusted_reasoning_delta if reasoning else trusted_delta
        return functools.partial(build, self.context_id, branch, at, message_id, text, offset)

    def _hold(
        self,
        branch: str | None,
        message_id: str,
        text: str,
        offset: int,
        reasoning: bool = False,
    ) -> bool:
        # Keep a delta for the next batch (see the module docstring), merged into the
        # run it continues if there is one; False when there is no recorder to batch
        # for, or no loop on this thread to write the batch on.
        if self._recorder is None:
            return False
        held = self._held
        now = time.monotonic()
        if not held:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return False
            wait = self._batch_written_at + self._delta_interval - now
            if wait > 0:
                loop.call_later(wait, self._write_held)
            else:
                loop.call_soon(self._write_held)
            self._held_since = now
        if held and held[-1].continued_by(branch, message_id, text, offset, reasoning):
            held[-1].add(text)
        else:
            held.append(
                DeltaRun(
                    self.context_id, branch, message_id, text, offset, self._clock(), reasoning
                )
            )
        self._held_deltas += 1
        if self._held_deltas >= DELTA_BATCH or now - self._held_since >= DELTA_HOLD:
            self._write_held()
        return True

    def _write_held(self) -> None:
        # Number, record and deliver the deltas held back, as one batch.
        held, self._held = self._held, []
        self._held_deltas = 0
        if not held or self._recorder is None:
            return
        self._batch_written_at = time.monotonic()
        self._dispatch(self._number(held))

    def relay(self, event: Event) -> None:
        """Deliver a signal numbered elsewhere (another process's, read from the log).

        It keeps its number; the bus's :attr:`last_seq` moves up to it. Ignored once
        the bus is closed.
        """
        if self._closed:
            return
        self._seq = max(self._seq, event.seq)
        self._dispatch([event])

    def _dispatch(self, events: list[Event]) -> None:
        # Queued together, so a signal a callback publishes meanwhile comes after all of
        # them, as its number does.
        self._history.extend(events)
        self._queue.extend(events)
        if not self._dispatching:
            self._drain()

    def _drain(self) -> None:
        self._dispatching = True
        try:
            while self._queue:
                event = self._queue.popleft()
                for buffer in self._buffer_list:
                    self._deliver(buffer, event)
                for callback in self._callback_list:
                    try:
                        callback(event)
                    except Exception:
                        # A broken view must not break the session or the other views.
                        logger.exception(
                            "event callback %r failed on %s #%d", callback, event.type, event.seq
                        )
        finally:
            self._dispatching = False

    def _deliver(self, buffer: _Buffer, event: Event) -> None:
        if buffer.closed:
            return
        if len(buffer.events) >= self._buffer_limit:
            # The reader fell behind: drop what it has not read rather than block or grow.
            buffer.backlog.clear()
            buffer.events.clear()
            buffer.events.append(
                self._resync(f"subscriber fell more than {self._buffer_limit} events behind")
            )
        else:
            buffer.events.append(event)
        buffer.wake()

    def _resync(self, reason: str) -> Resync:
        return Resync(seq=self._seq, context_id=self.context_id, at=self._clock(), reason=reason)

    def subscribe(
        self,
        callback: EventCallback,
        *,
        branch: str | None = None,
        kinds: Iterable[str] | None = None,
    ) -> Callable[[], None]:
        """Call ``callback(event)`` inline for every event published from now on.

        ``branch`` keeps only the signals of that branch (``event.branch == branch``);
        ``kinds`` only the signals of those kinds (names from :data:`SIGNAL_KINDS`).
        Safe to call from any thread; the callback runs on the publishing thread.
        Exceptions from the callback are logged and otherwise ignored. Returns a function
        that unsubscribes (calling it twice, or from another thread, is harmless).

        Raises:
            InvalidInputError: ``kinds`` names an unknown signal, or ``branch`` is not
                a string.
        """
        if not callable(callback):
            raise InvalidInputError(f"callback must be callable, got {callback!r}")
        if branch is not None and not isinstance(branch, str):
            raise InvalidInputError(f"branch must be a branch name, got {branch!r}")
        wanted = check_kinds(kinds)
        if branch is not None or wanted is not None:
            callback = filtered(callback, branch, wanted)
        with self._registry_lock:
            token = next(self._tokens)
            self._callbacks[token] = callback
            self._callback_list = tuple(self._callbacks.values())

        def unsubscribe() -> None:
            with self._registry_lock:
                if self._callbacks.pop(token, None) is not None:
                    self._callback_list = tuple(self._callbacks.values())

        return unsubscribe

    def stream(self, since: int | None = None) -> EventStream:
        """An async iterator of events published from now on.

        With ``since`` (e.g. an SSE ``Last-Event-ID``), the events after ``since`` from
        the history come first, exactly as :meth:`events` would return them, with no gap
        or overlap with the live events that follow.

        If the reader falls more than ``subscriber_buffer`` events behind, its unread
        events are replaced by one :class:`Resync`. After :meth:`close` the stream ends
        once its buffered events are read.
        """
        backlog = self.events(since) if since is not None else []
        buffer = _Buffer(backlog)
        with self._registry_lock:
            if self._closed:
                buffer.closed = True
            else:
                token = next(self._tokens)
                self._buffers[token] = buffer
                self._buffer_list = tuple(self._buffers.values())
        return EventStream(self._discard, buffer)

    def _discard(self, buffer: _Buffer) -> None:
        with self._registry_lock:
            for token, candidate in list(self._buffers.items()):
                if candidate is buffer:
                    del self._buffers[token]
                    self._buffer_list = tuple(self._buffers.values())

    def events(self, since: int = 0) -> list[Event]:
        """The events published after sequence number ``since``, oldest first.

        If some of them are no longer in the history (it keeps the last ``history``
        events), or ``since`` is ahead of this bus (the kernel restarted and numbering
        began again), the answer is a single :class:`Resync` carrying the current
        ``last_seq``: re-pull the state, then continue from that number.

        Raises:
            InvalidInputError: ``since`` is negative.
        """
        if since < 0:
            raise InvalidInputError(f"since must be >= 0, got {since!r}")
        last = self._seq
        if since > last:
            return [
                self._resync(
                    f"asked for events after #{since} but this bus is at #{last} "
                    "(numbering restarted, e.g. after a kernel restart)"
                )
            ]
        first = self._history[0].seq if self._history else last + 1
        if since < first - 1:
            return [
                self._resync(
                    f"events after #{since} are no longer kept "
                    f"(the history holds the last {self._history.maxlen})"
                )
            ]
        # Numbers from a shared log may have gaps (other processes' signals) and relayed
        # ones may arrive late, so select and order rather than slice.
        return sorted((e for e in self._history if e.seq > since), key=lambda e: e.seq)

    def close(self) -> None:
        """Stop the bus: callbacks are dropped, streams end after their buffered events,
        and :meth:`publish` raises :class:`~cm_notebook.errors.StateError`."""
        if self._recorder is not None and not self._closed:
            self._write_held()
            self._recorder.close()
        with self._registry_lock:
            self._closed = True
            self._callbacks.clear()
            self._callback_list = ()
            buffers = self._buffer_list
            self._buffers.clear()
            self._buffer_list = ()
        for buffer in buffers:
            buffer.closed = True
            buffer.wake()
