"""What a ``%%cm`` cell shows: the reply streaming in, kept in the saved notebook.

The cell returns a :class:`ReplyView` at once (DESIGN fact 7) and the turn carries on in
the background. The reply is an ordinary ``display_data`` output (``text/html``, with a
short, stable ``text/plain`` for nbval) that the view replaces in place through its
display id as the text arrives: every front end shows it, the saved notebook keeps the
final reply (widget state is not saved by default, DESIGN fact 10), and nothing is shown
twice. The output's metadata records the reply's provenance under ``cm_notebook``
(:meth:`ReplyView.provenance`), so a saved notebook says what produced each reply.
Its form is Markdown, plain text or a code block (``-f``); the turn's outcome (an
error and what to do, a stop) is appended. When the session has tools, Approve / Deny
buttons (:class:`~cm_notebook.widgets.ToolApproval`) follow the reply; ``%cm approve``
works as well.

Updates are throttled (DESIGN fact 4) and each re-sends the text shown, so the gap
between two updates grows with the text (a long reply costs a bounded number of
messages, not one per token) and with what the last update took to render (rendering
takes a bounded share of the kernel's time, :data:`RENDER_SHARE`); the final text is
always sent. The view is awaitable: ``await view`` gives the final message; ``--var``
stores its text in a kernel variable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import html
import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import ipywidgets as w
from IPython.display import display

from .._html_text import WRAP_ANYWHERE, isolated, json_text_html
from .._reasoning_html import reasoning_html
from .._theme import MUTED
from ..errors import CMError
from ..model import Message, MessageStatus, ToolCallStatus
from ..provenance import provenance_of
from ..render import code_fence, one_line, shown_call, status_label, tool_results
from ..widgets import ToolApproval
from ..widgets._base import SessionFollower, Throttle, close_parts
from ..widgets._live_output import LiveOutput, flush_copies
from ..widgets.markdown import render_markdown
from ._queue import (
    CellTask,
    NotSet,
    awaited_error,
    polled,
    release,
    release_after,
    say_what_goes_on,
    wait_for,
)
from ._remedies import for_magics, said
from ._shown import given_by_view
from ._thinking import THINKING_TAIL, thinking_html

if TYPE_CHECKING:
    from collections.abc import Generator

    from .. import events as ev
    from ..session import ContextSession
    from ..turn import Turn

__all__ = ["PLAIN", "ReplyView", "after_wind_down", "note", "render_reply", "tool_rounds_html"]

T = TypeVar("T")

#: The ``text/plain`` of a reply's output: short and stable, so nbval does not churn.
PLAIN = "<cm_notebook reply (HTML)>"

#: Seconds between two updates of a short reply; longer replies wait longer (see
#: :data:`CHARS_PER_SECOND_OF_GAP`), since every update re-sends the text shown.
UPDATE_INTERVAL = 0.2
CHARS_PER_SECOND_OF_GAP = 4_000
MAX_UPDATE_INTERVAL = 2.0
#: At most this share of the kernel loop's time goes to updating a streaming reply.
#: Each update renders the whole text so far (Markdown: ~1 s per MB), on the loop that
#: also receives the reply: a reply of megabytes would otherwise be rendered nearly
#: back to back and stream several times slower shown than not. So the gap after an
#: update is also at least its cost times ``1 / RENDER_SHARE - 1``.
RENDER_SHARE = 0.2

_KINDS = {
    "ContentDelta",
    "ReasoningDelta",
    "MessageAdded",
    "MessageCompleted",
    "StateChanged",
    "Error",
}


#: A reply that opens with a code fence (its first line, after blank lines).
_FENCED = re.compile(r"\s*(?:```|~~~)")


def render_reply(text: str, form: Literal["markdown", "text", "code"]) -> str:
    """``text`` as HTML in the chosen form (Markdown rendered kernel-side)."""
    if form == "markdown":
        return render_markdown(text)
    if form == "code":
        if _FENCED.match(text):  # the model fenced its code itself: shown as it meant
            return render_markdown(text)
        return render_markdown(code_fence(text))
    return f'<pre style="white-space:pre-wrap;margin:0">{html.escape(text)}</pre>'


#: What a cell awaiting the view says when interrupted while the reply goes on.
_GOES_ON = "… stopped waiting; the reply goes on (`%cm stop` stops it)"


class ReplyView:
    """The reply of one ``%%cm`` turn, live; ``await view`` gives the final message.

    A view made with no turn queues (:mod:`._queue`): it shows that it waits, and once
    every one of ``waits`` is done (the cell before it on the branch has let go of it,
    the replies whose ``--var`` its message reads have ended) it sends, calling
    ``send`` (on the session's loop), so that Run All over cells of questions asks them
    one after another instead of refusing the second as busy. The branch is then the
    sent turn's (``--system`` may fork one), and the view's Approve / Deny buttons are
    made for it.
    """

    #: The ``--var`` the reply's text goes to (None: none).
    var: str | None = None

    def __init__(
        self,
        session: ContextSession,
        turn: Turn | None,
        *,
        form: Literal["markdown", "text", "code"] = "markdown",
        on_done: Callable[[Message], None] | None = None,
        variables: Mapping[str, str] | None = None,
        branch: str | None = None,
        waits: Sequence[concurrent.futures.Future[None]] = (),
        send: Callable[[], Turn] | None = None,
    ) -> None:
        if turn is None and (send is None or branch is None):
            raise ValueError("a queued reply needs the branch and send")
        self.session = session
        #: The turn, once sent (a queued view has none until the one before it ends).
        self.turn = turn
        #: The branch the reply is on.
        self.branch: str = turn.branch if turn is not None else str(branch)
        self._waits = list(waits)
        self._send = send
        self._sent: concurrent.futures.Future[Turn] = concurrent.futures.Future()
        if turn is not None:
            self._sent.set_result(turn)
        self.form = form
        self._on_done = on_done
        #: The kernel variables that fed the message (recorded with the reply's
        #: provenance); a queued cell's are known once it is sent.
        self.variables = dict(variables or {})
        self._final: Message | None = None
        # The provenance of a reply that ended without one (failed, stopped).
        self._ended: dict[str, str] = {"status": "streaming"}
        self._wound_down: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._outcome = ""
        self._rendered = ("", "")  # the text last rendered, and its HTML
        self._notices: list[str] = []
        self._rounds = ""  # the tool calls made up to the final reply (see tool_rounds_html)
        self._task = CellTask()
        self._output = LiveOutput()
        #: The Approve / Deny buttons of this turn's calls, when the session has tools:
        #: its own branch only (a branch runs one turn at a time), closed when it ends,
        #: so a later cell's call is not offered under every earlier cell. A queued
        #: view has none until it is sent (until then the branch's calls are the reply's
        #: before it, offered there); they then appear in ``_approval_slot``.
        self.approvals: ToolApproval | None = None
        self._approval_slot: w.VBox | None = None
        if len(session.tools):
            if turn is not None:
                self.approvals = ToolApproval(session, branch=self.branch)
            else:
                self._approval_slot = w.VBox()
        self._follower = SessionFollower(session, self._on_event, self._show_error)
        self._throttle = Throttle(
            self._follower.loop, self._interval, self._render, max_share=RENDER_SHARE
        )
        self._follower.on_loop(self._start)

    def __repr__(self) -> str:
        return f"<cm_notebook reply on branch {self.branch!r}>"

    def __await__(self) -> Generator[Any, None, Message]:
        return self._awaited().__await__()

    async def _awaited(self) -> Message:
        try:
            turn = await self.started()
            final = await after_wind_down(turn, self._wound_down)
        except asyncio.CancelledError as interrupt:
            raise say_what_goes_on(
                self._task,
                interrupt,
                queued=self.turn is None,
                under_way=self.turn is not None and not self.turn.done(),
                goes_on=_GOES_ON,
            ) from None
        # Shown once more, and the session's copies brought up to date, as the awaiting
        # cell: a headless run keeps only that cell's output messages (see LiveOutput).
        self._render()
        flush_copies(self.session)
        return given_by_view(final)

    async def started(self) -> Turn:
        """The reply's turn, once it is sent (a queued view's when its turn comes);
        raises why a queued send failed."""
        return await polled(self._sent)

    @property
    def sent(self) -> concurrent.futures.Future[Turn]:
        """Done once the reply is sent (its turn), or will not be (why not)."""
        return self._sent

    @property
    def released(self) -> concurrent.futures.Future[None]:
        """Done once the reply's turn has ended: a later cell on the branch may send."""
        return self._wound_down

    @property
    def finished(self) -> concurrent.futures.Future[None]:
        """Done once the reply's turn has ended (``--var`` set), as :attr:`released`."""
        return self._wound_down

    def notice(self, text: str) -> None:
        """Show ``text`` above the reply (e.g. that a queued ``--system`` cell forked a
        branch: a ``print`` after the cell has ended would be lost)."""
        self._notices.append(text)
        self._throttle.poke()

    @property
    def asks_for_tools(self) -> bool:
        """Whether a tool call of this reply waits for Approve or Deny in its view."""
        rows = self.approvals.rows.values() if self.approvals is not None else ()
        return any(not row.decided for row in rows)

    @property
    def text(self) -> str:
        """The reply's text so far."""
        return self.turn.text if self.turn is not None else ""

    @property
    def display_id(self) -> str | None:
        """The id of the reply's output (None until the view is displayed)."""
        return self._output.display_id

    def html(self) -> str:
        """The reply as it is shown now (HTML)."""
        text = self.text
        if text.strip():
            if text != self._rendered[0]:
                # Rendered once per text: the final reply is shown by the turn's end and
                # again as the cell awaiting it, and a long one takes seconds to render.
                self._rendered = (text, render_reply(text, self.form))
            body = self._rendered[1]
        elif self._outcome:  # ended with no text (not sent, stopped, failed): it says why
            body = ""
        elif self.turn is None:  # queued
            body = note("… waits for the replies above it, then asks")
        elif not self._wound_down.done():
            body = note("…")
        else:  # (not "…" for good: that says the reply is still coming)
            body = note(EMPTY)
        outcome = f"<div>{note(self._outcome)}</div>" if self._outcome else ""
        notices = "".join(f"<div>{note(text)}</div>" for text in self._notices)
        # The reply's reasoning, collapsed, before its answer (once the reply is stored);
        # while it streams, a short "Thinking…" line that grows with it.
        if self._final is not None:
            thought = reasoning_html(self._final)
        elif self.turn is not None and not self.turn.done():
            thought = thinking_html(self.turn.reasoning)
        else:  # over with no reply stored (never sent, failed to store): no "Thinking…"
            thought = ""
        return f'<div class="cm-reply">{notices}{self._rounds}{thought}{body}{outcome}</div>'

    def provenance(self) -> dict[str, Any]:
        """What the output's metadata records under ``cm_notebook``: the context and
        branch, and once the reply is stored its provenance (provider, model,
        parameters, seed, request id and hash, the kernel variables that fed it)."""
        where = {"context_id": self.session.id, "branch": self.branch}
        if self._final is None:
            # Still streaming, or ended with no reply to show (failed, stopped).
            return {**where, **self._ended, "variables": dict(self.variables)}
        return {**where, **provenance_of(self._final, self.variables)}

    def _ipython_display_(self) -> None:
        # The reply as a plain output, replaced in place as it grows; then the buttons.
        bundle = {"text/html": self.html(), "text/plain": PLAIN}
        self._output.show(bundle, {"cm_notebook": self.provenance()})
        buttons = self.approvals if self.approvals is not None else self._approval_slot
        if buttons is not None:
            # The widget alone, without the saved copy a ToolApproval shown on its own
            # leaves: the reply's output above already shows its calls and outcomes.
            display(buttons._repr_mimebundle_(), raw=True)  # type: ignore[no-untyped-call]

    def close(self) -> None:
        """Stop following the session (the output keeps its last content)."""
        self._follower.close()
        self._throttle.cancel()
        if self.approvals is not None:
            self.approvals.close()
        if self._approval_slot is not None:
            close_parts(self._approval_slot)  # a box closes neither children nor layout
            self._approval_slot.close()

    # -- on the session's loop ---------------------------------------------------------

    def stop(self) -> None:
        """Stop the reply (its text so far is kept); a queued one is not sent."""
        if self.turn is not None:
            self.turn.cancel()
        else:
            self._task.stop()

    def _start(self) -> None:
        self._throttle.poke()
        self._task.start(self._finish, self._never_sent)

    def _never_sent(self) -> None:
        # Stopped while it waited its turn: the cell after it goes once the cells this
        # one waited for have (a reply above being stopped ends first).
        self._outcome = "stopped before it was sent"
        self._ended = {"status": "not sent"}
        if not self._sent.done():
            self._sent.set_exception(asyncio.CancelledError())
        self._throttle.now()
        self._follower.close()
        release_after(self._waits, self._wound_down)

    async def _send_when_free(self) -> Turn:
        # A queued view: once the cell before it has let go of the branch, send.
        assert self._send is not None
        try:
            await wait_for(self._waits)
            turn = self._send()
        except BaseException as exc:  # an ``await view`` raises it (a stop included)
            self._sent.set_exception(awaited_error(exc))
            raise
        self.turn = turn
        self.branch = turn.branch
        if self._approval_slot is not None:
            # Made before the turn's task first runs (it was only scheduled), so no call
            # of this turn is asked before the buttons listen.
            self.approvals = ToolApproval(self.session, branch=turn.branch)
            self._approval_slot.children = (self.approvals,)
        self._sent.set_result(turn)
        self._throttle.poke()
        return turn

    @property
    def on_done(self) -> Callable[[Message], None] | None:
        """What the reply's final message is handed to (``--var`` sets its text)."""
        return self._on_done

    @property
    def unset(self) -> str | None:
        """Once the reply has ended with no final message for its ``--var`` (failed,
        stopped, not sent): what happened, ``{}`` standing for the variable; else
        None."""
        if not self._wound_down.done() or self._final is not None:
            return None
        how = {"failed": "failed", "stopped": "was stopped"}.get(
            self._ended.get("status", ""), "was not sent"
        )
        return f"the reply that sets {{}} {how}"

    @property
    def failed(self) -> bool:
        """Whether the reply failed (``%cm retry`` tries it again)."""
        return self._ended.get("status") == "failed"

    async def _finish(self) -> None:
        try:
            turn = self.turn if self.turn is not None else await self._send_when_free()
        except asyncio.CancelledError:
            self._never_sent()
            return
        except Exception as exc:  # not sent: the cell, not the reply, is what to rerun
            message = said(exc, self.session)
            again = "" if isinstance(exc, NotSet) else " (run the cell again to ask)"
            self._outcome = f"not sent: {message}{again}"
            self._ended = {"status": "not sent", "error": message}
            self._wind_down()
            return
        try:
            final = await turn
        except asyncio.CancelledError:
            self._outcome = "stopped; the text so far is kept"
            self._ended = {"status": "stopped"}
        except CMError as exc:
            self._outcome = f"{for_magics(str(exc), self.session)} (after fixing it: %cm retry)"
            self._ended = {"status": "failed", "error": str(exc)}
        except Exception as exc:  # a view must never take the kernel down
            self._outcome = f"{type(exc).__name__}: {exc}"
            self._ended = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        else:
            self._final = final
            self._rounds = tool_rounds_html(self.session, final)
            if self._on_done is not None:
                self._on_done(final)
            self._outcome = _outcome_of(final)
        finally:
            self._wind_down()

    def _wind_down(self) -> None:
        self._throttle.now()
        self._follower.close()
        if self.approvals is not None:
            self.approvals.finish()
        release(self._wound_down)

    def _on_event(self, event: ev.Event) -> None:
        # A queued view (not sent yet) shows only that it waits: the branch's signals
        # are the turns' before it, and re-rendering it on each would make a Run All of
        # n cells send O(n²) updates. It is re-rendered when it is sent, stopped, fails
        # to send or is given a notice (each of those asks for it).
        if self.turn is not None and event.branch == self.branch and event.type in _KINDS:
            self._throttle.poke()

    def _interval(self) -> float:
        # Each update re-sends what is shown: the text, and the reasoning's tail.
        shown = len(self.text) + min(len(self.turn.reasoning), THINKING_TAIL) if self.turn else 0
        return min(MAX_UPDATE_INTERVAL, UPDATE_INTERVAL + shown / CHARS_PER_SECOND_OF_GAP)

    def _render(self) -> None:
        if self._output.shown:
            bundle = {"text/html": self.html(), "text/plain": PLAIN}
            self._output.update(bundle, {"cm_notebook": self.provenance()})

    def _show_error(self, text: str) -> None:
        self._outcome = text
        self._throttle.poke()


async def after_wind_down(work: Awaitable[T], wound_down: concurrent.futures.Future[None]) -> T:
    """What ``await view`` gives: ``work``'s result (a turn's, a fan-out's), once the
    view's own task has also seen it end, so ``--var`` has been set when the await
    returns (a fast reply could otherwise end before that task ran). Errors come
    straight away."""
    result = await work
    await polled(wound_down)
    return result


#: What a reply that ended with no text says.
EMPTY = "(empty reply)"


def _outcome_of(final: Message) -> str:
    # What the view says under a reply that ended ("": nothing to say): how it ended
    # (not complete, cut off, refused, reasoned but gave no answer), or why it is empty.
    label = status_label(final)
    if final.status is not MessageStatus.COMPLETE:
        return f"reply {label}"
    if label is None and not final.content.strip():
        return _why_empty(final)
    return label or ""


def _why_empty(final: Message) -> str:
    # A turn that ends on its tool calls' message was stopped before the model answered
    # them (a stop while a call waited for Approve or Deny leaves it denied).
    if any(call.status is ToolCallStatus.DENIED for call in final.tool_calls):
        return "stopped while waiting for a tool decision"
    if final.tool_calls:
        return "stopped before the model answered its tool calls"
    return EMPTY


#: How much of a tool call's arguments and result the saved reply shows.
MAX_CALL_CHARS = 300


def tool_rounds_html(session: ContextSession, final: Message) -> str:
    """The tool calls a turn made up to its final reply ``final`` (its own, when it
    stopped at them), oldest first, one line each: the Approve / Deny buttons are a
    widget, which a saved notebook does not keep, so the reply's own output says what
    ran."""
    rounds: list[Message] = [final]
    parent = final.parent_id
    try:
        while parent is not None:
            message = session.get(parent)
            if message.role == "user":
                break
            rounds.append(message)
            parent = message.parent_id
    except CMError:
        pass  # unreadable: the calls found so far
    lines = []
    results = tool_results(rounds)  # what this branch holds (see shown_call)
    for message in reversed(rounds):
        for call in message.tool_calls:
            arguments = json.dumps(call.arguments, ensure_ascii=False)
            # Each piece of text the model or a tool wrote isolated in <bdi>:
            # an override in the arguments cannot reverse the status after them.
            # Its outcome and result on this branch: a counterfactual's edited result is
            # its own, not the shared call's.
            shown = shown_call(call, results)
            why = f" ({isolated(shown.reason)})" if shown.reason else ""
            # A denied call's result is what the model was told: the reason, again.
            text = shown.result if shown.status is not ToolCallStatus.DENIED else None
            result = f" → {isolated(one_line(text, MAX_CALL_CHARS))}" if text is not None else ""
            lines.append(
                # The gear outside the monospace run: monospace fonts often lack it.
                f'<div style="font-size:85%;color:{MUTED};{WRAP_ANYWHERE}">⚙ '
                f'<span style="font-family:monospace">{isolated(call.name)}'
                f"({json_text_html(one_line(arguments, MAX_CALL_CHARS))}) "
                f"[{shown.status.value}]{why}{result}</span></div>"
            )
    return "".join(lines)


def note(text: str) -> str:
    """``text`` as a grey line of HTML (a view's waiting line or outcome)."""
    return f'<span style="color:{MUTED}">{html.escape(text)}</span>'
