"""Cells that wait their turn, so Run All over a notebook of questions asks them in order.

A ``%%cm`` cell (``%cm send``, ``--system``, ``--ab`` / ``--fanout``) run while this
kernel's previous cell on the same branch has not let go of it yet does not fail as
busy: its view is made at once, says that it waits, and sends once the cell before it
has. A reply lets go of its branch when its turn has ended (complete, failed or
stopped); an A/B cell once its arms are forked (they are new branches, so the next
question on the base branch need not wait for their replies); a ``%cm branch`` or
``%cm switch`` run after replies (:mod:`._deferred`) once it has run, and the cells after
it go on the branch it left active. A command that reads the context after the replies
above it (``%cm history``, ``branches``, ``export``, ``compare``; ``ls`` reads every
context) is a read: every later cell and command in the context, on any branch, waits
until it has read, so it shows the context as of its place in the notebook, not what
the cells below it did. A bare ``%cm`` below a command or queued ``--system`` cell that
may move the active branch (a move) waits for it, then shows the branch active then,
and is a read too until it has. A turn
started from code or by another process is not this queue's: a cell then fails saying
what to do. (A cell also waits for the cells whose ``--var`` it reads: :mod:`._sending`.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from IPython.core.error import UsageError

if TYPE_CHECKING:
    from ..session import ContextSession

__all__ = [
    "CellQueue",
    "CellTask",
    "NotSet",
    "Queued",
    "Setter",
    "awaited_error",
    "not_set",
    "polled",
    "release",
    "release_after",
    "say_what_goes_on",
    "wait_for",
]

T = TypeVar("T")

#: How often a wait wakes up (see :func:`polled`).
POLL_SECONDS = 0.1

# What a cell awaiting a queued view says when interrupted.
_STILL_QUEUED = (
    "… stopped waiting; the cell still asks once the replies above it have ended "
    "(`%cm stop --all` stops them all)"
)


class Queued(Protocol):
    """A cell's view that a later cell on its branch may wait for."""

    #: The branch a later cell that names none continues on once this one let go.
    branch: str

    @property
    def released(self) -> concurrent.futures.Future[None]:
        """Done once the cell has let go of its branch (the next cell may send)."""
        ...

    @property
    def finished(self) -> concurrent.futures.Future[None]:
        """Done once the cell's reply (or every arm's) has ended: its ``--var`` is set."""
        ...

    def stop(self) -> None:
        """Stop the cell: one still waiting is not sent (nor run); a reply under way is
        stopped, its text so far kept. Call on the session's loop."""
        ...


class Setter(Queued, Protocol):
    """A cell's view whose reply sets a ``--var`` (a ``%%cm`` reply, an ``--ab`` /
    ``--fanout`` comparison)."""

    @property
    def unset(self) -> str | None:
        """Once the cell has ended without setting its ``--var``, how, as the view
        says it ("the reply that sets {} failed", ``{}`` where the variable goes);
        else None."""
        ...


class NotSet(UsageError):
    """What a queued ``%%cm`` cell that reads a ``--var`` says when every cell above it
    that was to set the variable ended without setting it: the variable holds no new
    value (Run All would go on with an earlier run's). Its words say what to do."""


def awaited_error(exc: BaseException) -> BaseException:
    """``exc`` as ``await view`` raises it: a :class:`NotSet` as a plain usage error
    (IPython shows only those as one line, with no traceback)."""
    return UsageError(str(exc)) if isinstance(exc, NotSet) else exc


def not_set(name: str, setters: Sequence[Setter]) -> NotSet | None:
    """Why ``name`` has no new value once ``setters`` (the cells that were to set it)
    have ended: when none of them set it, the last one's outcome and what to do."""
    whys = [setter.unset for setter in setters]
    last = whys[-1] if whys else None
    if last is None or not all(whys):
        return None
    var = f"`{name}`"
    what = (
        "retry it (`%cm retry`) or run its cell again"
        if "failed" in last
        else ("run its cell again")
    )
    return NotSet(
        f"{last.format(var)}, so {var} has no new value: {what}, then run this cell again"
    )


class CellQueue:
    """The last cell of this kernel on each (context, branch), and every cell of a
    context still under way."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], Queued] = {}
        self._all: dict[str, list[Queued]] = {}
        # Per context: when each read still to come will have read (see add_read); and
        # those of every context (``%cm ls``).
        self._reads: dict[str, list[concurrent.futures.Future[None]]] = {}
        self._reads_of_all: list[concurrent.futures.Future[None]] = []
        # Per context: when each move of the active branch still to come has moved it.
        self._moves: dict[str, list[concurrent.futures.Future[None]]] = {}

    def before(self, session: ContextSession, branch: str) -> Queued | None:
        """The cell a new cell on ``branch`` must wait for, or None: send now."""
        last = self._last.get((session.id, branch))
        return last if last is not None and not last.released.done() else None

    def last(self, session: ContextSession, branch: str) -> Queued | None:
        """This kernel's last cell on ``branch``, ended or not (None: none yet)."""
        return self._last.get((session.id, branch))

    def add(self, session: ContextSession, branch: str, view: Queued) -> None:
        """``view`` is now the last cell on ``branch`` (the next one waits for it)."""
        self._last[(session.id, branch)] = view
        cells = self._all.setdefault(session.id, [])
        if not any(cell is view for cell in cells):  # once, though last on two branches
            cells.append(view)

    def add_read(
        self, session: ContextSession | None, read: concurrent.futures.Future[None]
    ) -> None:
        """A command that reads the context (None: every context) once the cells above
        it have run is done reading when ``read`` is: the cells and commands after it
        wait for that."""
        if session is None:
            self._reads_of_all.append(read)
        else:
            self._reads.setdefault(session.id, []).append(read)

    def reads(self, session: ContextSession | None) -> list[concurrent.futures.Future[None]]:
        """The reads still to come in ``session``'s context (None: in any context),
        those of every context included."""
        self._reads_of_all = [read for read in self._reads_of_all if not read.done()]
        return [*_coming(self._reads, session), *self._reads_of_all]

    def add_move(self, session: ContextSession, moved: concurrent.futures.Future[None]) -> None:
        """A command or cell that may change the active branch once the cells above it
        have run (``%cm branch``, ``%cm switch``, a queued ``--system`` cell) has when
        ``moved`` is done: a view of the context below it attaches after that."""
        self._moves.setdefault(session.id, []).append(moved)

    def moves(self, session: ContextSession) -> list[concurrent.futures.Future[None]]:
        """The moves of ``session``'s active branch still to come."""
        return _coming(self._moves, session)

    def stop_all(self, session: ContextSession) -> int:
        """Stop every cell of ``session``'s context under way, the newest first (so none
        is sent as the one before it stops); how many there were."""
        cells = self.under_way(session)
        for cell in reversed(cells):
            cell.stop()
        return len(cells)

    def under_way(self, session: ContextSession | None) -> list[Queued]:
        """This kernel's cells in ``session``'s context (None: in any context) not
        finished yet, oldest first."""
        if session is None:
            return [cell for ids in list(self._all) for cell in self._under_way_in(ids)]
        return self._under_way_in(session.id)

    def _under_way_in(self, context_id: str) -> list[Queued]:
        cells = [cell for cell in self._all.get(context_id, []) if not cell.finished.done()]
        self._all[context_id] = cells
        return cells


def _coming(
    futures: dict[str, list[concurrent.futures.Future[None]]], session: ContextSession | None
) -> list[concurrent.futures.Future[None]]:
    # Those of ``futures`` in ``session``'s context (None: in any) not done yet; the
    # done ones are forgotten.
    ids = list(futures) if session is None else [session.id]
    found: list[concurrent.futures.Future[None]] = []
    for context_id in ids:
        coming = [future for future in futures.get(context_id, []) if not future.done()]
        futures[context_id] = coming
        found += coming
    return found


async def wait_for(waits: Sequence[concurrent.futures.Future[None]]) -> None:
    """Return once every one of ``waits`` is done (what a queued cell waits for)."""
    for future in waits:
        await polled(future)


async def polled(
    future: concurrent.futures.Future[T], every_poll: Callable[[], None] | None = None
) -> T:
    """``future``'s result, awaited so that cancelling the waiter leaves ``future`` be.

    A bare ``await asyncio.wrap_future(future)`` cancelled (the kernel's Interrupt
    button on a cell awaiting a view) cancels ``future`` itself: a queued view could
    then never be sent, nor a cell after it. And a bare await ignores the Interrupt
    button until another message arrives, so this wakes every :data:`POLL_SECONDS`
    (and calls ``every_poll`` then, while ``future`` is not done).
    """
    wrapped = asyncio.wrap_future(future)
    while not wrapped.done():
        await asyncio.wait({wrapped}, timeout=POLL_SECONDS)
        if every_poll is not None and not wrapped.done():
            every_poll()
    return wrapped.result()


def release(released: concurrent.futures.Future[None]) -> None:
    """Mark ``released`` done (once; later calls do nothing)."""
    if not released.done():
        released.set_result(None)


class CellTask:
    """A cell's work on the session's loop, which a stop ends whether it has started
    or not.

    asyncio runs nothing of a task cancelled before its first step: not its body, so
    not the ``except CancelledError`` that would say the cell was stopped and let the
    cells after it go (``%cm stop --all`` right after a queued cell left it, and every
    cell after it, waiting forever). And a stop may come before the task exists: it is
    made on the loop, soon after the cell. So a stop that comes first calls
    ``if_stopped_first`` instead.
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    def start(
        self,
        work: Callable[[], Coroutine[Any, Any, None]],
        if_stopped_first: Callable[[], None],
    ) -> None:
        """Run ``work()`` as a task of the running loop (call on the session's loop)."""
        if self._stopped:
            if_stopped_first()
            return
        started = False

        async def run() -> None:
            nonlocal started
            started = True
            await work()

        def ended(_task: asyncio.Task[None]) -> None:
            if not started:
                if_stopped_first()

        self._task = asyncio.get_running_loop().create_task(run())
        self._task.add_done_callback(ended)

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called."""
        return self._stopped

    def stop(self) -> None:
        """Stop the work: cancel it if it runs, else see :meth:`start`."""
        self._stopped = True
        if self._task is not None:
            self._task.cancel()


def release_after(
    waits: Sequence[concurrent.futures.Future[None]], released: concurrent.futures.Future[None]
) -> None:
    """Mark ``released`` done once every one of ``waits`` is (call on a running loop).

    What a cell stopped before it was sent does: the cell after it then still waits for
    the cells this one waited for (a reply being stopped above it still ends first, so
    the next cell is not refused as busy).
    """

    async def later() -> None:
        try:
            await wait_for(waits)
        finally:
            release(released)

    asyncio.get_running_loop().create_task(later())


def say_what_goes_on(
    task: CellTask,
    interrupt: asyncio.CancelledError,
    *,
    queued: bool,
    under_way: bool,
    goes_on: str,
) -> asyncio.CancelledError:
    """What a cell awaiting a view prints when it is interrupted (not when the view was
    stopped: the view says so itself): that the queued cell still asks, or ``goes_on``
    while its reply (its arms) is ``under_way``. Returns the error to raise: one that
    says the same (``interrupt`` would advise a turn's ``.cancel()``, which a view has
    not), else ``interrupt``."""
    if task.stopped:
        return interrupt
    said = _STILL_QUEUED if queued else goes_on if under_way else None
    if said is None:
        return interrupt
    print(said)
    return asyncio.CancelledError(said.removeprefix("… "))
