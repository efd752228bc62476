"""``ChatView``: one branch of a conversation, with the reply streaming in live.

The transcript is an anywidget (:class:`Transcript`) with two paths to the front end
(DESIGN facts 4, 5, 10-12):

- **authoritative state in synced traits**, changed at a low rate: ``frozen``, the
  finished messages, each its own small model (:class:`FrozenMessage`, Markdown already
  rendered) sent once and again only if that message changes (a tool call's status, a
  new sibling), so a turn costs the bytes of its own messages, not of the whole
  conversation; and ``live`` (which message is streaming). A front end that renders
  late gets these.
- **the fast path**: the text appended since the last update, as a custom message
  ``{"kind": "delta", "id", "offset", "text"}``, at most every :data:`DELTA_INTERVAL`
  seconds, and always flushed when the reply completes. A front end whose text length
  does not match ``offset`` (it rendered late, or missed a delta) asks for the whole
  live text (``{"event": "pull"}``) and gets ``{"kind": "snapshot"}``: it re-pulls
  rather than show a torn text. ``offset`` counts UTF-16 code units, as JavaScript's
  ``string.length`` does (an emoji is two), so the front end compares like with like.
  A snapshot is always sent after the ``live`` trait names its message: a front end
  drops a snapshot of a message it does not know is streaming. A thinking model's
  reasoning streams the same way, in a collapsed "Thinking…" section of the live reply
  (``{"kind": "reasoning", ...}`` messages, and in the snapshot; see
  :mod:`._live_reasoning`).

The live text itself is not a synced trait: re-sending it as it grows would cost
O(n^2) bytes per reply. It is pulled on demand instead, so one reply costs the deltas
(its length once) plus its frozen HTML once.

Actions arrive as custom messages from the front end (``edit``, ``regenerate``,
``sibling``, ``fork``, ``rate``) or as clicks on the stock Send / Stop buttons; all of
them run on the session's loop (see :class:`~cm_notebook.widgets._base.SessionFollower`).
Each complete reply with text carries its rating (``data["rating"]``), refreshed
by ``ScoreUpdated`` signals from any source.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anywidget
import ipywidgets as w
import traitlets as t

from .. import events as ev
from ..errors import BranchNotFoundError
from ..fsm import State
from ..model import Message, MessageStatus
from ..render import SAVED_MESSAGES, tool_results
from ..tree import MessageTree
from ._base import SessionFollower, Throttle, close_parts, fork_under_free_name, static_text
from ._live_reasoning import LiveReasoning, js_length, sendable
from ._messages import message_dict
from ._refused_input import give_back_if_refused
from .rating import rate_from_front_end, rating_of, stored_rating

if TYPE_CHECKING:
    from ..session import ContextSession

__all__ = ["DELTA_INTERVAL", "MESSAGES_SHOWN", "ChatView", "FrozenMessage", "Transcript"]

#: Front-end actions that make something new (a branch, a reply): done once per click.
_ONCE = frozenset({"edit", "fork", "regenerate"})
#: Seconds within which the same action again is a double click.
DOUBLE_CLICK = 1.0

#: Seconds between two text updates of a short streaming reply (at most 10 a second, so
#: a view stays well under ~20 comm messages a second with its other updates).
DELTA_INTERVAL = 0.1
#: The gap grows with the text already sent (one more second per this many characters,
#: up to :data:`MAX_DELTA_INTERVAL`): each message carries ~600 bytes of headers, so a
#: long reply sent at a fixed rate would cost far more in headers than in text.
CHARS_PER_SECOND_OF_GAP = 20_000
MAX_DELTA_INTERVAL = 2.0
#: Seconds between two re-renders of the finished messages for minor signals.
REFRESH_INTERVAL = 0.25
#: How many of a branch's last messages a view shows at first, and how many more each
#: "Show earlier" click adds: each shown message is a model in the front end, so a
#: conversation of thousands would cost the page (and every re-render) all of them.
#: As many as a saved copy holds.
MESSAGES_SHOWN = SAVED_MESSAGES


class FrozenMessage(w.Widget):  # type: ignore[misc]
    """One finished message of a transcript: a state-only model (no view of its own)."""

    data = t.Dict(help="the message as the transcript shows it (see _messages.py)").tag(sync=True)

    def __repr__(self) -> str:
        return "<cm_notebook message>"


class Transcript(anywidget.AnyWidget):
    """The message list of a :class:`ChatView` (front end in ``static/transcript.js``)."""

    _esm = static_text("cut_short.js") + static_text("transcript.js")
    _css = static_text("views.css")

    frozen = t.List(
        t.Instance(FrozenMessage), help="the finished messages of the branch, in order"
    ).tag(sync=True, **w.widget_serialization)
    last_reply = t.Unicode("", help="id of the branch's last reply (it offers ↻)").tag(sync=True)
    live = t.Dict(help="the streaming message: {id, role}, or {} when none").tag(sync=True)
    branch = t.Unicode("", help="the branch shown").tag(sync=True)
    busy = t.Bool(False, help="a reply is being generated on the branch").tag(sync=True)
    notice = t.Unicode("", help="the last action's error, with what to do").tag(sync=True)
    earlier = t.Int(0, help="how many earlier messages of the branch are not shown").tag(sync=True)

    def __repr__(self) -> str:
        return "<cm_notebook Transcript>"


class ChatView(w.VBox):  # type: ignore[misc]
    """A branch of ``session`` (default: follows the active branch), live.

    Send a message with the text box; Stop ends the reply in progress; each message
    offers edit-and-resend (user), ↻ regenerate (last reply), ``< 2/3 >`` between
    siblings and fork (a new branch from that message). A long branch shows its last
    :data:`MESSAGES_SHOWN` messages; "Show earlier messages" adds as many again.
    """

    def __init__(self, session: ContextSession, branch: str | None = None) -> None:
        if branch is not None and branch not in session.branch_names:
            # Refused here; a branch deleted while shown is said in the view instead.
            raise BranchNotFoundError(
                f"there is no branch {branch!r}; the branches are {sorted(session.branch_names)}"
            )
        self.session = session
        self.transcript = Transcript()
        # Named for screen readers by its description (a <label> of the box, which the
        # views' stylesheet hides from sight: the placeholder says it there).
        self.input = w.Textarea(
            description="Message",
            placeholder="Message…",
            layout=w.Layout(width="auto", flex="1 1 auto", height="60px"),
        )
        self.input.add_class("cm-message-box")
        self.input.add_class("cm-label-unseen")
        self.send_button = w.Button(description="Send", button_style="primary", icon="paper-plane")
        self.stop_button = w.Button(description="Stop", icon="stop", disabled=True)
        # The transcript's front end finds them by this class: focus on a button the
        # kernel disables goes to the message box.
        buttons = w.VBox([self.send_button, self.stop_button])
        buttons.add_class("cm-chat-controls")
        controls = w.HBox([self.input, buttons], layout=w.Layout(width="100%"))
        super().__init__([self.transcript, controls], layout=w.Layout(width="100%"))
        self.add_class("cm-chat")
        self._follow_active = branch is None
        self._branch = branch or session.active_branch
        # The streaming reply, as known on the kernel side (loop thread only).
        self._live_id: str | None = None
        self._live_chunks: list[str] = []
        self._live_len = 0
        self._pending: list[str] = []
        self._sent_len = 0
        self._need_snapshot = False
        self._reasoning = LiveReasoning()  # the streaming reply's reasoning so far
        self._frozen: dict[str, FrozenMessage] = {}  # message id -> its model, reused
        self._window = MESSAGES_SHOWN  # how many of the branch's last messages are shown
        self._ratings: dict[str, dict[str, Any]] = {}  # message id -> its rating, as read
        self._follower = SessionFollower(session, self._on_event, self._show_error)
        loop = self._follower.loop
        self._deltas = Throttle(loop, self._delta_interval, self._flush_text)
        self._refresh = Throttle(loop, REFRESH_INTERVAL, self._render)
        self.transcript.on_msg(self._on_front_end)
        # The branch the front end last said it shows. Clicks and that acknowledgement
        # reach the kernel in the order the person made them, so a click queued behind
        # a cell that moved the view to another branch still acts on the branch it was
        # made on (the stock buttons carry no data of their own).
        self._shown = self._branch
        # The last edit, fork or regenerate asked for, and when: a repeat within
        # DOUBLE_CLICK seconds is a double click, not a second action.
        self._last_action: tuple[tuple[str, str, str], float] | None = None
        # When the last Send sent (monotonic): a second click of a double click finds
        # the text box already emptied by the first and must not be told to type.
        self._sent_at: float | None = None
        # Whether the branch shown was deleted (a pinned view): the view says so.
        self._gone = False
        self.send_button.on_click(lambda _b: self._on_button(self._send_input))
        self.stop_button.on_click(lambda _b: self._on_button(self._stop_turn))
        self.transcript.branch = self._branch
        self._catch_up()
        self._render()

    def __repr__(self) -> str:
        return "<cm_notebook ChatView>"

    @property
    def branch(self) -> str:
        """The branch shown."""
        return self._branch

    def close(self) -> None:
        """Stop following the session and close the widgets (harmless twice)."""
        if hasattr(self, "_follower"):  # not when construction failed half-way
            self._follower.close()
            self._deltas.cancel()
            self._refresh.cancel()
            # Every message model made, also those of a branch no longer shown.
            for frozen in self._frozen.values():
                frozen.close()
        close_parts(self)
        super().close()

    # -- signals (session loop thread) ---------------------------------------------

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.Resync):
            self._ratings.clear()
            self._catch_up()
            self._refresh.now()
            return
        if isinstance(event, ev.ScoreUpdated):
            # Whichever branch the score names: the message may be on this one too.
            if event.message_id in self._frozen:
                self._ratings[event.message_id] = rating_of(event.score)
                self._refresh.poke()
            return
        if isinstance(event, ev.BranchSwitched):
            if self._follow_active and event.branch != self._branch:
                self._show_branch(event.branch)
            return
        if event.branch != self._branch:
            return
        if isinstance(event, (ev.BranchDeleted, ev.BranchCreated)):
            # Deleted: the view says so (see _render); made again: shown again.
            self._catch_up()
            self._refresh.now()
            return
        if isinstance(event, ev.ContentDelta):
            self._on_delta(event)
        elif isinstance(event, ev.ReasoningDelta):
            self._on_reasoning(event)
        elif isinstance(event, ev.MessageAdded):
            if event.role == "assistant":
                self._start_live(event.message_id, "")
            self._refresh.now()
        elif isinstance(event, ev.MessageCompleted):
            if event.message_id == self._live_id:
                self._deltas.now()
                self._live_id = None
            self._refresh.now()  # freeze it: final HTML and `live` cleared together
        elif isinstance(event, (ev.StateChanged, ev.BranchUpdated)):
            if isinstance(event, ev.StateChanged) and event.new is State.TRANSIENT_FAILURE:
                # Waiting to retry: the failed attempt's text (kept in the reply's
                # failed_attempts) is not the reply's, whose next attempt starts empty.
                self._restart_live()
            self._refresh.now()  # Send / Stop follow the state at once
        else:
            self._refresh.poke()

    def _show_branch(self, name: str) -> None:
        self._branch = name
        self._window = MESSAGES_SHOWN
        self.transcript.branch = name
        self._catch_up()
        self._refresh.now()

    def _catch_up(self) -> None:
        # A view attached (or switched) while a reply streams picks it up from the turn.
        self._live_id = None
        turn = self.session.turn(self._branch)
        if turn is not None and not turn.done() and turn.message_id is not None:
            self._start_live(turn.message_id, turn.text, turn.reasoning)

    def _start_live(self, message_id: str, text: str, reasoning: str = "") -> None:
        self._live_id = message_id
        self._live_chunks = [text] if text else []
        self._live_len = len(text)  # in code points, as the session's offsets are
        self._pending = []
        self._sent_len = 0  # in UTF-16 code units, as the front end's offsets are
        self._reasoning.start(reasoning)
        self._need_snapshot = bool(text or reasoning)
        if text or reasoning:
            self._deltas.poke()

    def _restart_live(self) -> None:
        if self._live_id is not None and (self._live_len or self._reasoning.length):
            self._start_live(self._live_id, "")
            self._need_snapshot = True  # the page drops the text it shows
            self._deltas.poke()

    def _on_delta(self, event: ev.ContentDelta) -> None:
        if event.message_id != self._live_id or event.offset != self._live_len:
            # Attached mid-reply, or a retry restarted the text: re-pull it whole.
            self._start_live(event.message_id, *self._text_of(event.message_id))
            return
        self._live_chunks.append(event.text)
        self._live_len += len(event.text)
        self._pending.append(event.text)
        self._deltas.poke()

    def _on_reasoning(self, event: ev.ReasoningDelta) -> None:
        if event.message_id != self._live_id or not self._reasoning.continues(event.offset):
            # As for the text: a gap (or a retry starting again) re-pulls both whole.
            self._start_live(event.message_id, *self._text_of(event.message_id))
            return
        self._reasoning.add(event.text)
        self._deltas.poke()

    def _text_of(self, message_id: str) -> tuple[str, str]:
        # The text and the reasoning of the reply so far.
        turn = self.session.turn(self._branch)
        if turn is not None and turn.message_id == message_id:
            return turn.text, turn.reasoning
        message = self.session.get(message_id)
        return message.content, message.metadata.reasoning or ""

    def _delta_interval(self) -> float:
        # The reasoning sent counts too: a long one costs headers as a long text does.
        grown = (self._sent_len + self._reasoning.sent) / CHARS_PER_SECOND_OF_GAP
        return min(MAX_DELTA_INTERVAL, max(DELTA_INTERVAL, grown))

    def _flush_text(self) -> None:
        if self._live_id is None:
            return
        if self._need_snapshot:
            self._send_snapshot()
            return
        # The reasoning first: it came before the text it led to.
        reasoning = self._reasoning.delta(self._live_id)
        if reasoning is not None:
            self.transcript.send(reasoning)
        text, held = sendable("".join(self._pending))
        self._pending = [held] if held else []
        if not text:
            return
        self.transcript.send(
            {"kind": "delta", "id": self._live_id, "offset": self._sent_len, "text": text}
        )
        self._sent_len += js_length(text)

    def _send_snapshot(self) -> None:
        if self._live_id is None:
            return
        joined = "".join(self._live_chunks)
        self._live_chunks = [joined]
        text, held = sendable(joined)
        self._pending = [held] if held else []
        self._sent_len = js_length(text)
        self._need_snapshot = False
        reasoning = self._reasoning.whole()
        # `live` first: the front end keeps only a snapshot of the message it knows is
        # streaming, and a view switched back to a branch mid-reply learns it here,
        # before _render runs. Unchanged, the trait sends nothing.
        self.transcript.live = {"id": self._live_id, "role": "assistant"}
        self.transcript.send(
            {"kind": "snapshot", "id": self._live_id, "text": text, "reasoning": reasoning}
        )

    def _render(self) -> None:
        try:
            history = self.session._read_path(self._branch)
        except BranchNotFoundError:
            self._render_gone()
            return
        if self._gone:  # the branch was made again under its name
            self._gone = False
            self.transcript.notice = ""
        streaming = next((m for m in history if m.id == self._live_id), None)
        if streaming is not None and streaming.status is not MessageStatus.STREAMING:
            # Over without a MessageCompleted (a full disk refused its final state, which
            # the session reads as its turn left it): shown as finished, not as live.
            self._live_id = None
        tree = self.session.tree()  # from the index: siblings without reading messages
        tool_names = {c.id: c.name for m in history for c in m.tool_calls}
        results = tool_results(history)
        last_reply = next((m.id for m in reversed(history) if m.role == "assistant"), None)
        items = []
        shown = history[-self._window :]
        for message in shown:
            if message.id == self._live_id and message.status is MessageStatus.STREAMING:
                continue
            data = message_dict(
                message,
                siblings=_siblings(tree, message),
                tool_names=tool_names,
                tool_results=results,
            )
            if _ratable(message):
                data["rating"] = self._rating(message.id)
            frozen = self._frozen.get(message.id)
            if frozen is None:
                frozen = self._frozen[message.id] = FrozenMessage(data=data)
            else:
                frozen.data = data  # sent only if this message changed
            items.append(frozen)
        # Busy while a turn runs; after a failure the person can retry, edit or send.
        busy = self.session.turn(self._branch) is not None
        live = {"id": self._live_id, "role": "assistant"} if self._live_id else {}
        with self.transcript.hold_sync():
            self.transcript.frozen = items
            self.transcript.earlier = len(history) - len(shown)
            self.transcript.last_reply = last_reply or ""
            self.transcript.live = live
            self.transcript.busy = busy
        self.send_button.disabled = busy
        self.stop_button.disabled = not busy

    def _render_gone(self) -> None:
        # The branch shown was deleted (only a pinned view can show a branch that is
        # not active): say so and what to do, instead of a traceback on every signal.
        self._gone = True
        self._live_id = None
        self._deltas.cancel()
        with self.transcript.hold_sync():
            self.transcript.frozen = []
            self.transcript.earlier = 0
            self.transcript.last_reply = ""
            self.transcript.live = {}
            self.transcript.busy = False
            self.transcript.notice = (
                f"Branch {self._branch!r} was deleted, so there is nothing to show or send "
                "here. Pick another branch: ChatView(session, branch=name) with a name "
                "from session.branch_names, or ChatView(session) to follow the active one."
            )
        self.send_button.disabled = True
        self.stop_button.disabled = True

    def _rating(self, message_id: str) -> dict[str, Any]:
        # Read once per message; ScoreUpdated signals keep it current afterwards.
        rating = self._ratings.get(message_id)
        if rating is None:
            rating = self._ratings[message_id] = stored_rating(self.session, message_id)
        return rating

    # -- actions (any thread in, session loop thread out) --------------------------

    def _show_error(self, text: str) -> None:
        self.transcript.notice = text

    def _on_front_end(self, _widget: Any, content: Any, _buffers: Any) -> None:
        if not isinstance(content, dict):
            return
        event = content.get("event")
        if not isinstance(event, str):
            return  # malformed (our front end never sends it): ignored, as other content
        target = content.get("id")
        # The branch the front end showed when the person clicked (sent with each
        # action); the message's id says which message, whatever the kernel shows now.
        hint = content.get("branch")
        shown = hint if isinstance(hint, str) and hint else self._shown
        if event == "showing" and isinstance(hint, str) and hint:
            self._shown = hint
        elif event == "pull":
            self._follower.on_loop(self._send_snapshot)
        elif event == "earlier":
            self._follower.on_loop(lambda: self._show_earlier(shown))
        elif event in _ONCE and isinstance(target, str) and self._again(event, target, content):
            return  # a double click: the first one acts
        elif event == "edit" and isinstance(target, str):
            text = content.get("text")
            if not isinstance(text, str):
                self._follower.on_loop(lambda: self._show_error("An edit needs its new text."))
                return
            self._follower.on_loop(lambda: self._edit(target, text, shown))
        elif event == "regenerate" and isinstance(target, str):
            self._follower.on_loop(lambda: self._regenerate(target, shown))
        elif event == "sibling" and isinstance(target, str):
            self._follower.on_loop(lambda: self._show_sibling(target))
        elif event == "fork" and isinstance(target, str):
            self._follower.on_loop(lambda: self._fork(target, shown))
        elif event == "rate":
            self._follower.on_loop(lambda: self._act(rate_from_front_end, self.session, content))

    def _show_earlier(self, branch: str) -> None:
        if branch == self._branch:  # not a click left over from another branch
            self._window += MESSAGES_SHOWN
            self._refresh.now()

    def _again(self, event: str, target: str, content: dict[str, Any]) -> bool:
        # Whether this action repeats the last one within a double click's time: each
        # would fork a branch (and an edit ask the model again).
        key = (event, target, repr(content.get("text")))
        now = time.monotonic()
        last, self._last_action = self._last_action, (key, now)
        return last is not None and last[0] == key and now - last[1] < DOUBLE_CLICK

    def _act(self, action: Any, *args: Any) -> Any:
        self.transcript.notice = ""
        return action(*args)

    def _on_button(self, action: Any) -> None:
        # On the comm thread, in the order of the person's clicks: take the branch and
        # the click's time now (the loop may run it later, e.g. after a busy cell).
        shown = self._shown
        clicked = time.monotonic()
        self._follower.on_loop(lambda: action(shown, clicked))

    def _send_input(self, branch: str, clicked: float) -> None:
        # Trailing blank lines and spaces say nothing (Enter in the box adds a line, it
        # does not send): not stored with the message. Leading ones may be indentation.
        text = self.input.value.rstrip()
        if not text.strip():
            sent = self._sent_at
            if sent is not None and clicked - sent < DOUBLE_CLICK:
                return  # a double click's second click: the first one sent the text
            self.transcript.notice = "Type a message first, then Send."
            return
        turn = self._act(lambda: self.session.send(text, branch=branch))
        self._sent_at = time.monotonic()
        self.input.value = ""
        give_back_if_refused(turn, text, self.input, self._follower.on_loop)

    def _stop_turn(self, branch: str, _clicked: float) -> None:
        # session.stop also reaches a reply another process (kernel, server) generates.
        self._act(lambda: self.session.stop(branch))

    def _holder(self, message_id: str, shown: str) -> str | None:
        # The branch holding ``message_id``: the one shown at the click first.
        tree = self.session.tree()  # from the index: no message file is read
        candidates = (shown, self._branch, self.session.active_branch, *sorted(tree.heads))
        return tree.first_holding(message_id, candidates)

    def _edit(self, message_id: str, text: str, shown: str) -> None:
        # The edit answers as the branch it was made on, and the view goes with it.
        turn = self._act(
            lambda: self.session.edit(message_id, text, from_branch=self._holder(message_id, shown))
        )
        if turn.branch != self._branch:
            self._show_branch(turn.branch)

    def _regenerate(self, reply_id: str, shown: str) -> None:
        # ↻ regenerates the reply clicked, on the branch whose last reply it still is,
        # never another branch's (the view may have moved since the click).
        self.transcript.notice = ""
        tree = self.session.tree()
        branch = None
        for name in (shown, self._branch, self.session.active_branch, *sorted(tree.heads)):
            if name not in tree.heads:
                continue
            replies = [n.id for n in tree.path(name) if n.role == "assistant"]
            if replies and replies[-1] == reply_id:
                branch = name
                break
        if branch is None:
            self.transcript.notice = (
                "That reply is no longer the last one of its branch (↻ makes a new last "
                "reply); fork from it to continue there."
                if reply_id in tree.nodes
                else "That reply no longer exists; nothing was regenerated."
            )
            return
        # A failed reply is asked again as it was (retry), also one that failed before
        # the kernel restarted or in another process, or was stopped while it waited to
        # try again (a try of it failed); any other gets a new sample.
        reply = self.session.get(reply_id)
        failed = reply.status is MessageStatus.ERROR or (
            reply.status is MessageStatus.INTERRUPTED and bool(reply.metadata.failed_attempts)
        )
        if failed or self.session.state_of(branch).value == "PermanentFailure":
            self._act(lambda: self.session.retry(branch=branch))
        else:
            self._act(lambda: self.session.regenerate(branch=branch))

    def _show_sibling(self, message_id: str) -> None:
        # Show the branch that holds this alternative (the active one first, then the
        # most recent); if none does, give it one.
        self.transcript.notice = ""
        tree = self.session.tree()
        holder = tree.first_holding(
            message_id, sorted(tree.heads, key=lambda n: (n != self._branch, n))
        )
        if holder is not None:
            if holder != self._branch:
                self.session.switch(holder)
            return
        fork_under_free_name(self.session, f"{self._branch}-alt", message_id)

    def _fork(self, message_id: str, shown: str) -> None:
        # The fork keeps the settings (prompt, provider, parameters) of its branch.
        self.transcript.notice = ""
        source = self._holder(message_id, shown)
        fork_under_free_name(
            self.session, f"{source or self._branch}-fork", message_id, from_branch=source
        )


def _ratable(message: Message) -> bool:
    # A reply with an answer to rate: not a failed, interrupted or tool-call-only one
    # (the compare view excludes those too).
    return (
        message.role == "assistant"
        and message.status is MessageStatus.COMPLETE
        and bool((message.content or "").strip())
    )


def _siblings(tree: MessageTree, message: Message) -> list[str]:
    # The alternatives of a user message or a reply, itself included, oldest first.
    if message.role not in ("user", "assistant"):
        return []
    return [node.id for node in tree.children(message.parent_id) if node.role == message.role]
