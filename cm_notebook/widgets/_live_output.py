"""A plain output that is replaced in place, in every front end and in saved notebooks.

The static HTML a view leaves for a saved notebook (a ``%%cm`` reply, a conversation's
snapshot, a comparison) is a ``display_data`` output updated through its display id
when a turn ends. The turn usually ends while a *later* cell runs (the one that
awaits it, say). An update sent from the turn's task belongs, as ipykernel sees it, to
the cell that started the turn: JupyterLab keeps listening to that cell and applies
it, but a front end that only takes the running cell's messages (nbclient, which is
what ``jupyter nbconvert --execute``, papermill and nbval use) drops it, and the
notebook it saves shows the reply as it was when its own cell ended (often empty).

So :class:`LiveOutput` sends each update as the cell that showed the output, and once
more as the cell running now when that is another one. ipykernel gives output made on a
thread without a context of its own to the latest request, so the second update is made
on such a thread: one long-lived publisher thread per kernel, which runs each update in
a fresh, empty context (:class:`_Publisher`; a thread per update ran the kernel out of
sockets in a Run All). Both carry the same display id and content: a front end that
takes both shows the same thing.

An update made between cells (a reply that ends after its cell and before the next
one starts, or while a cell that does not await it runs and blocks the loop until it
ends) belongs to a cell that is over: it is sent again, as the next cell, when that
cell starts. (After the notebook's last cell, nothing follows to send it.)

Copies that re-render a whole conversation are throttled, so the update for a turn
that just ended may still be waiting when the cell awaiting the turn ends. Awaiting a
reply or a comparison therefore sends the waiting updates of its session's copies at
once (:func:`flush_copies`), as the awaiting cell.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from IPython.display import DisplayHandle, display

from ..redact import get_logger

__all__ = ["LiveOutput", "SavedCopy", "flush_copies", "register_copy"]


class SavedCopy(Protocol):
    """A throttled saved copy of a session's conversation or comparison."""

    @property
    def session(self) -> object: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    def flush_pending(self) -> None: ...


_COPIES: weakref.WeakSet[Any] = weakref.WeakSet()


def register_copy(copy: SavedCopy) -> None:
    """Let :func:`flush_copies` of its session bring ``copy`` up to date."""
    _COPIES.add(copy)


def flush_copies(session: object) -> None:
    """Send the waiting update of every shown copy of ``session`` now.

    Called on the session's loop (by the cell awaiting a reply); copies following a
    session on another loop are left to their own timers.
    """
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return
    for copy in list(_COPIES):
        if copy.session is session and copy.loop is running:
            copy.flush_pending()


class _Cells:
    """Whether a cell is running, from IPython's events; outputs updated between cells,
    sent again when the next cell starts."""

    def __init__(self) -> None:
        self.hooked = False
        self.running = False
        self.between: weakref.WeakSet[LiveOutput] = weakref.WeakSet()

    def hook(self) -> None:
        # Once per kernel, from inside a cell (where an output is first shown).
        if self.hooked:
            return
        try:
            from IPython import get_ipython
        except ImportError:  # pragma: no cover - the package depends on IPython
            return
        shell = get_ipython()
        if shell is None:
            return
        shell.events.register("pre_run_cell", self._starts)
        shell.events.register("post_run_cell", self._ends)
        self.hooked = self.running = True

    def _starts(self, *_info: Any) -> None:
        self.running = True
        waiting, self.between = list(self.between), weakref.WeakSet()
        for output in waiting:
            output.send_again()  # as this cell: a front end following it applies it

    def _ends(self, *_result: Any) -> None:
        self.running = False


_CELLS = _Cells()

logger = get_logger(__name__)


class LiveOutput:
    """One ``display_data`` output: :meth:`show` it, then :meth:`update` it in place.

    Shown again (the same view displayed in a later cell), it is one more output with
    a display id of its own, and every update replaces each of them: a handle that
    was simply replaced would leave the earlier cell's copy frozen at its last
    content, and that stale copy is what the saved notebook would keep.
    """

    def __init__(self) -> None:
        # Each shown copy and the request (cell) that showed it, oldest first.
        self._shown: list[tuple[DisplayHandle, str | None]] = []
        self._last: tuple[dict[str, Any], dict[str, Any]] | None = None  # to send again

    @property
    def display_id(self) -> str | None:
        """The display id of the first shown copy (None until shown)."""
        return str(self._shown[0][0].display_id) if self._shown else None

    @property
    def shown(self) -> bool:
        """Whether :meth:`show` was called."""
        return bool(self._shown)

    def show(self, bundle: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> None:
        """Emit one more copy of the output in the current cell."""
        handle = display(  # type: ignore[no-untyped-call]
            dict(bundle), raw=True, display_id=True, metadata=dict(metadata or {})
        )
        self._shown.append((handle, _request_here()))
        _CELLS.hook()

    def update(self, bundle: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> None:
        """Replace every copy's content, also for a front end following a later cell."""
        if not self._shown:
            return
        content, extra = dict(bundle), dict(metadata or {})
        shown = list(self._shown)
        _update_all([handle for handle, _ in shown], content, extra)
        here = _request_here()

        def as_latest() -> None:
            # On the publisher thread, where "here" is the kernel's latest request. Only
            # the copies whose own cell is not the latest need the second update.
            latest = _request_here()
            if latest is not None:
                _update_all([h for h, by in shown if latest not in (by, here)], content, extra)

        _PUBLISHER.run(as_latest)
        if _CELLS.hooked and not _CELLS.running:
            self._last = (content, extra)
            _CELLS.between.add(self)

    def send_again(self) -> None:
        """Send the last update again, as the cell running now (see the module
        docstring: it was made between cells)."""
        last, self._last = self._last, None
        if last is not None:
            _update_all([handle for handle, _ in self._shown], *last)


def _update_all(
    handles: list[DisplayHandle], content: dict[str, Any], metadata: dict[str, Any]
) -> None:
    for handle in handles:
        handle.update(content, raw=True, metadata=metadata)  # type: ignore[no-untyped-call]


def _request_here() -> str | None:
    # The id of the execute request ipykernel ties output made here to (None outside a
    # kernel). On the publisher thread that is the kernel's latest request.
    try:
        from ipykernel.kernelbase import Kernel
    except ImportError:  # pragma: no cover - the package depends on ipykernel
        return None
    if not Kernel.initialized():
        return None
    parent = Kernel.instance().get_parent("shell")  # type: ignore[no-untyped-call]
    header = parent.get("header") if isinstance(parent, dict) else None
    msg_id = header.get("msg_id") if isinstance(header, dict) else None
    return msg_id if isinstance(msg_id, str) else None


class _Publisher:
    """The thread that sends updates as the kernel's latest request (one per process).

    ipykernel ties output to the request found in the context variables of the code
    making it, else to its latest request. So each job runs in a fresh, empty
    :class:`contextvars.Context` (a job cannot leave anything for the next, and a thread
    that inherits its starter's context, as Python 3.14 may make them, does not carry
    the cell it was started from), and on a thread of its own that never sets a request:
    ipykernel also keeps some output state per thread (display hooks), which the thread
    running the cells may have set.

    One long-lived thread, not one per update: ipykernel opens a ZeroMQ socket (an
    eventfd) for every thread that publishes and closes those of ended threads only
    every 10 s, so a thread per update piled up sockets until ZeroMQ's cap or the
    process's file limit was reached (a Run All of 30 ``%%cm`` cells reached a thousand
    descriptors, and replies then failed to be stored).

    :meth:`run` waits until its job has been sent. ipykernel sends iopub messages in
    the order they were handed to it from any thread, so waiting keeps the copy sent as
    the latest cell between the update before it and the one after it: a front end that
    takes both never ends on an older content. Waiting also means updates never pile up
    in the thread's queue (there is nothing to coalesce).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]] = (
            queue.SimpleQueue()
        )

    def run(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the publisher thread, in an empty context; return once it ran.

        A job that fails is logged: the second copy is a courtesy to front ends that
        follow only the running cell, and must not stop the view that asked for it.
        """
        if threading.current_thread() is self._thread:
            _run_job(job)  # a job's own update: already in order, and waiting would hang
            return
        done = threading.Event()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                # First use, or in a forked child (which has none of its parent's threads).
                self._jobs = queue.SimpleQueue()
                self._thread = threading.Thread(
                    target=_serve, args=(self._jobs,), name="cm-live-output", daemon=True
                )
                self._thread.start()
            self._jobs.put((job, done))
        done.wait()


def _serve(jobs: queue.SimpleQueue[tuple[Callable[[], None], threading.Event]]) -> None:
    # The publisher thread's loop: jobs in the order they came, for the process's life.
    while True:
        job, done = jobs.get()
        try:
            _run_job(job)
        finally:
            done.set()


def _run_job(job: Callable[[], None]) -> None:
    try:
        contextvars.Context().run(job)
    except Exception:
        logger.exception("sending an output's update as the running cell failed")


_PUBLISHER = _Publisher()
