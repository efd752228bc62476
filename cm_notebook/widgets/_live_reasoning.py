"""The reasoning of the reply streaming in a :class:`~.chat.ChatView`, as it arrives.

A thinking model may reason for a minute before its first word of answer; the
transcript shows that reasoning live, in a collapsed "Thinking…" section of the
streaming reply that grows as :class:`~cm_notebook.events.ReasoningDelta` signals come,
and becomes the reply's usual collapsed reasoning block once the reply is finished.

It travels as the reply's text does (see :mod:`.chat`): only what was appended since
the last update, as a custom message ``{"kind": "reasoning", "id", "offset", "text"}``
sent with the text's throttled updates (``offset`` in UTF-16 code units, as the front
end counts), and whole in the ``snapshot`` a front end pulls when its length does not
match. This class keeps the kernel side of it; the view decides when to send.
"""

from __future__ import annotations

from typing import Any

from .._unicode import without_surrogates

__all__ = ["LiveReasoning", "js_length", "sendable"]


def js_length(text: str) -> int:
    """The length of ``text`` in JavaScript: UTF-16 code units (an emoji counts two, a
    lone surrogate one)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def sendable(text: str) -> tuple[str, str]:
    """``(to_send, held)``: ``text`` as the front end can be sent it, and its end kept
    for the next piece.

    A provider passes on half of a surrogate pair when a JSON ``"\\ud83d"`` escape is
    split from its other half between chunks, and a lone surrogate cannot be encoded
    for the comm (nor measured): a high half at the end waits for its other half, pairs
    are joined into their character, and other lone halves become U+FFFD (the same
    number of UTF-16 code units, so the offsets agree).
    """
    held = ""
    if text and "\ud800" <= text[-1] <= "\udbff":
        text, held = text[:-1], text[-1]
    return without_surrogates(text), held


class LiveReasoning:
    """The streaming reply's reasoning on the kernel side (loop thread only)."""

    def __init__(self) -> None:
        self._chunks: list[str] = []
        self.length = 0  # in code points, as the session's offsets are
        self._pending: list[str] = []
        self.sent = 0  # in UTF-16 code units, as the front end's offsets are

    def start(self, text: str) -> None:
        """A new live reply (or one re-pulled whole) whose reasoning so far is ``text``."""
        self._chunks = [text] if text else []
        self.length = len(text)
        self._pending = []
        self.sent = 0

    def continues(self, offset: int) -> bool:
        """Whether a delta at ``offset`` continues the reasoning held here."""
        return offset == self.length

    def add(self, text: str) -> None:
        """Append a delta that :meth:`continues` the reasoning."""
        self._chunks.append(text)
        self.length += len(text)
        self._pending.append(text)

    def delta(self, message_id: str) -> dict[str, Any] | None:
        """The custom message for what arrived since the last one (None: nothing new)."""
        text, held = sendable("".join(self._pending))
        self._pending = [held] if held else []
        if not text:
            return None
        message = {"kind": "reasoning", "id": message_id, "offset": self.sent, "text": text}
        self.sent += js_length(text)
        return message

    def whole(self) -> str:
        """All the reasoning so far, for a snapshot: what was pending goes with it."""
        joined = "".join(self._chunks)
        self._chunks = [joined] if joined else []
        text, held = sendable(joined)
        self._pending = [held] if held else []
        self.sent = js_length(text)
        return text
