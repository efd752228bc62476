"""``ReplyView``: what a ``%%cm`` cell shows, the reply streaming in as it is written.

The cell returns this view at once (DESIGN fact 7) and the turn carries on in the
background. The view follows the turn's branch: the reply's text (as Markdown, plain
text or a code block, ``-f``), then the turn's outcome (an error and what to do, a
stop). Tool calls waiting for a person appear below it as Approve / Deny buttons
(:class:`~cm_notebook.widgets.ToolApproval`); ``%cm approve`` works as well.

Updates are throttled (DESIGN fact 4); the gap between two updates grows with the text
already shown, so a long reply costs a bounded number of messages rather than one per
token, and the final text is always sent. The view is awaitable: ``await view`` waits
for the reply, so a later cell (or a test) can use it; ``--var`` stores its text in a
kernel variable when it completes.
"""

from __future__ import annotations

import asyncio
import html
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import ipywidgets as w

from .. import events as ev
from ..errors import CMError
from ..model import Message
from ..widgets import CompareView, ToolApproval
from ..widgets._base import SessionFollower, Throttle
from ..widgets.markdown import render_markdown

if TYPE_CHECKING:
    from collections.abc import Generator

    from ..compare import Comparison
    from ..fanout import FanOut
    from ..session import ContextSession
    from ..turn import Turn

__all__ = ["ComparisonView", "ReplyView", "render_reply"]

#: Seconds between two updates of a short reply; longer replies wait longer (see
#: :data:`CHARS_PER_SECOND_OF_GAP`), since every update re-sends the text shown.
UPDATE_INTERVAL = 0.2
CHARS_PER_SECOND_OF_GAP = 4_000
MAX_UPDATE_INTERVAL = 2.0

_KINDS = {"ContentDelta", "MessageAdded", "MessageCompleted", "StateChanged", "Error"}


def render_reply(text: str, form: Literal["markdown", "text", "code"]) -> str:
    """``text`` as HTML in the chosen form (Markdown rendered kernel-side)."""
    if form == "markdown":
        return render_markdown(text)
    if form == "code":
        return render_markdown(f"```\n{text}\n```" if "```" not in text else text)
    return f'<pre style="white-space:pre-wrap;margin:0">{html.escape(text)}</pre>'


class ReplyView(w.VBox):  # type: ignore[misc]
    """The reply of one ``%%cm`` turn, live; ``await view`` gives the final message."""

    def __init__(
        self,
        session: ContextSession,
        turn: Turn,
        *,
        form: Literal["markdown", "text", "code"] = "markdown",
        on_done: Callable[[Message], None] | None = None,
    ) -> None:
        self.session = session
        self.turn = turn
        self.form = form
        self._on_done = on_done
        self.body = w.HTML("")
        self.body.add_class("cm-reply")
        self.outcome = w.HTML("")
        self.approvals = ToolApproval(session)
        super().__init__([self.body, self.outcome, self.approvals])
        self._follower = SessionFollower(session, self._on_event, self._show_error)
        self._throttle = Throttle(self._follower.loop, self._interval, self._render)
        self._follower.on_loop(self._start)

    def __repr__(self) -> str:
        return f"<cm_notebook reply on branch {self.turn.branch!r}>"

    def __await__(self) -> Generator[Any, None, Message]:
        return self.turn.__await__()

    @property
    def text(self) -> str:
        """The reply's text so far."""
        return self.turn.text

    def close(self) -> None:
        """Stop following the session."""
        if hasattr(self, "_follower"):
            self._follower.close()
            self._throttle.cancel()
            self.approvals.close()
        super().close()

    # -- on the session's loop ---------------------------------------------------------

    def _start(self) -> None:
        self._render()
        asyncio.get_running_loop().create_task(self._finish())

    async def _finish(self) -> None:
        try:
            final = await self.turn
        except asyncio.CancelledError:
            self.outcome.value = _note("stopped; the text so far is kept")
        except CMError as exc:
            self.outcome.value = _note(f"{exc} (after fixing it: %cm retry)")
        except Exception as exc:  # a view must never take the kernel down
            self.outcome.value = _note(f"{type(exc).__name__}: {exc}")
        else:
            if self._on_done is not None:
                self._on_done(final)
            if final.status.value != "complete":
                self.outcome.value = _note(f"reply {final.status.value}")
        finally:
            self._throttle.now()
            self._follower.close()

    def _on_event(self, event: ev.Event) -> None:
        if getattr(event, "branch", None) != self.turn.branch:
            return
        if event.type in _KINDS:
            self._throttle.poke()

    def _interval(self) -> float:
        return min(
            MAX_UPDATE_INTERVAL, UPDATE_INTERVAL + len(self.turn.text) / CHARS_PER_SECOND_OF_GAP
        )

    def _render(self) -> None:
        text = self.turn.text
        self.body.value = render_reply(text, self.form) if text else _note("…")

    def _show_error(self, text: str) -> None:
        self.outcome.value = _note(text)


def _note(text: str) -> str:
    return f'<span style="color:#888">{html.escape(text)}</span>'


class ComparisonView(w.VBox):  # type: ignore[misc]
    """What ``%%cm --ab`` / ``--fanout`` show: the arms side by side, live.

    ``await view`` gives the :class:`~cm_notebook.compare.Comparison` once every arm
    has replied; ``on_done`` gets it too (``--var``).
    """

    def __init__(
        self,
        compare: CompareView,
        fan: FanOut,
        on_done: Callable[[Comparison], None] | None = None,
    ) -> None:
        self.compare = compare
        self.fan = fan
        self._on_done = on_done
        self.outcome = w.HTML("")
        super().__init__([compare, self.outcome])
        compare.session._loop.call_soon_threadsafe(self._start)

    def __repr__(self) -> str:
        return f"<cm_notebook comparison of {len(self.fan.branches)} branches>"

    def __await__(self) -> Generator[Any, None, Comparison]:
        return self.fan.__await__()

    @property
    def branches(self) -> list[str]:
        """The branches of the experiment, one per arm."""
        return self.fan.branches

    def close(self) -> None:
        """Stop following the session."""
        if hasattr(self, "compare"):
            self.compare.close()
        super().close()

    def _start(self) -> None:
        asyncio.get_running_loop().create_task(self._finish())

    async def _finish(self) -> None:
        try:
            comparison = await self.fan
        except asyncio.CancelledError:
            self.outcome.value = _note("stopped; the text so far is kept")
        except CMError as exc:
            self.outcome.value = _note(str(exc))
        except Exception as exc:  # a view must never take the kernel down
            self.outcome.value = _note(f"{type(exc).__name__}: {exc}")
        else:
            if self._on_done is not None:
                self._on_done(comparison)
