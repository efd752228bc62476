"""``%cm`` commands that run after this kernel's cells before them, as one by one.

``%cm history`` and ``%cm branches`` read the conversation (``%cm ls``, every
context's branches); ``%cm branch`` and ``%cm switch`` change the branch the next cell
goes on. Run while this kernel's ``%%cm``
cells in the context are still under way (Run All runs them right after those cells),
they would read a conversation the replies have not reached yet, or fork before a
reply. So they wait for those cells (each reply, every arm's) and run then. The output
says that the command waits and is replaced in place by what it printed (a ``print``
after the cell has ended would be lost). The cells after a ``%cm branch`` or ``%cm
switch`` wait for it in turn and go on the branch it left active.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import io
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from IPython.core.error import UsageError

from ..errors import CMError
from ..widgets._live_output import LiveOutput
from ._queue import CellTask, polled, release, release_after, wait_for
from ._remedies import for_magics

if TYPE_CHECKING:
    from collections.abc import Generator

    from ..session import ContextSession

__all__ = ["DeferredCommand"]


class DeferredCommand:
    """``run`` (a command that prints, or returns something with Markdown to show),
    once every one of ``waits`` is done.

    ``what`` names the command in the waiting line. :attr:`branch`, where a later cell
    that names no branch goes, is the branch active when the cell ran until the command
    has run, then the one it left active (``%cm branch NAME`` and ``%cm switch NAME``
    switch to NAME; one that failed leaves the branch the cells before it left).
    """

    def __init__(
        self,
        session: ContextSession,
        waits: Sequence[concurrent.futures.Future[None]],
        run: Callable[[], object],
        what: str,
    ) -> None:
        self.session = session
        #: The branch a later cell that names none goes on (see :mod:`._queue`).
        self.branch = session.active_branch
        self._waits = list(waits)
        self._run = run
        self._text = f"… {what} once the cells above have run"
        self._markdown: str | None = None
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._output = LiveOutput()
        self._task = CellTask()
        session._loop.call_soon_threadsafe(self._begin)

    def __repr__(self) -> str:
        return "<cm_notebook command run after the cells above>"

    def __await__(self) -> Generator[Any, None, None]:
        # Nothing to show: the command's output is above (``.text`` holds it).
        return polled(self._done).__await__()

    @property
    def text(self) -> str:
        """What the output says now: the waiting line, then what the command printed."""
        return self._text

    @property
    def released(self) -> concurrent.futures.Future[None]:
        """Done once the command has run: a later cell on the branch may send."""
        return self._done

    @property
    def finished(self) -> concurrent.futures.Future[None]:
        """Done once the command has run (as :attr:`released`)."""
        return self._done

    def _ipython_display_(self) -> None:
        self._output.show({"text/plain": self._text})

    # -- on the session's loop ---------------------------------------------------------

    def stop(self) -> None:
        """Do not run the command (if it has not run yet)."""
        self._task.stop()

    def _begin(self) -> None:
        self._task.start(self._when_ready, self._never_run)

    def _never_run(self) -> None:
        # Stopped before it ran (its task may not even have started: see CellTask).
        self._show("not done: stopped (`%cm stop --all`)")
        release_after(self._waits, self._done)

    async def _when_ready(self) -> None:
        printed = io.StringIO()
        try:
            await wait_for(self._waits)
            # Nothing else runs on this thread meanwhile: what it prints is the command's.
            with contextlib.redirect_stdout(printed):
                result = self._run()
            to_markdown = getattr(result, "_repr_markdown_", None)
            if to_markdown is not None:
                self._markdown = str(to_markdown())
        except asyncio.CancelledError:
            self._never_run()
            return
        except CMError as exc:
            printed.write(f"not done: {for_magics(str(exc), self.session)}\n")
        except UsageError as exc:
            printed.write(f"not done: {exc}\n")
        except Exception as exc:  # a command must never take the kernel down
            printed.write(f"not done: {type(exc).__name__}: {exc}\n")
        # The cells after it go on the branch it leaves active: the one it made or
        # switched to, or, if it failed, the one the cells before it left (as one by one).
        self.branch = self.session.active_branch
        self._show(printed.getvalue().rstrip("\n") or self._markdown or "(nothing printed)")
        release(self._done)

    def _show(self, text: str) -> None:
        self._text = text
        if self._output.shown:
            bundle = {"text/plain": self._text}
            if self._markdown is not None:
                bundle["text/markdown"] = self._markdown
            self._output.update(bundle)
