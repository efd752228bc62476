"""Rating buttons for assistant messages: thumbs up/down and a 1-5 score.

A click calls :meth:`~cm_notebook.session.ContextSession.rate` on the session's loop;
the buttons then show what the ``ScoreUpdated`` signal says, so a rating given from
code (or from another view, or another process) shows here too. :class:`RatingBar` is
made of stock ipywidgets (the compare view uses it); the chat's transcript draws the
same controls in its own front end and sends ``{"event": "rate", ...}``
(:func:`rate_from_front_end`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from .._theme import ERROR
from ..errors import CMError, InvalidInputError
from ._base import close_parts

if TYPE_CHECKING:
    from ..scores import Score
    from ..session import ContextSession
    from ._base import SessionFollower

__all__ = ["RatingBar", "rate_from_front_end", "rating_of", "stored_rating"]
_SCORES = (1, 2, 3, 4, 5)


def rating_of(score: Score | None) -> dict[str, Any]:
    """``{"thumbs": "up"|"down"|None, "score": 1-5|None}`` of a stored score (or None)."""
    if score is None:
        return {"thumbs": None, "score": None}
    return {"thumbs": score.thumbs, "score": score.score}


def stored_rating(session: ContextSession, message_id: str) -> dict[str, Any]:
    """The rating stored for ``message_id`` (nothing given: both None)."""
    return rating_of(session.scores(message_id))


def _rate_arguments(content: Mapping[str, Any]) -> dict[str, Any]:
    # What the front end asked for, checked: one of thumbs or score.
    thumbs, score = content.get("thumbs"), content.get("score")
    if thumbs in ("up", "down"):
        return {"thumbs": thumbs}
    if isinstance(score, int) and not isinstance(score, bool) and score in _SCORES:
        return {"score": score}
    raise InvalidInputError(f"a rating is thumbs 'up'/'down' or a score 1-5; got {dict(content)}")


def rate_from_front_end(session: ContextSession, content: Mapping[str, Any]) -> None:
    """Carry out ``{"event": "rate", "id": message id, "thumbs"|"score": ...}``."""
    message_id = content.get("id")
    if not isinstance(message_id, str):
        raise InvalidInputError("a rating needs the id of the message it is for")
    session.rate(message_id, **_rate_arguments(content))


class RatingBar(w.HBox):  # type: ignore[misc]
    """Thumbs up, thumbs down and 1-5 for one assistant message; the pressed ones show
    its rating. The thumbs are icons (Font Awesome, as on Approve and Send), not emoji,
    which a machine without a color-emoji font shows as empty boxes.

    The buttons are named for screen readers by their tooltips and say whether they
    are pressed (class ``cm-pressed``), and the bar is a group named by :attr:`name`
    (which answer it rates; read, not shown): the view's ``ConnectionWatch`` turns these
    into ARIA attributes, which stock widgets do not take."""

    def __init__(self, session: ContextSession, follower: SessionFollower, message_id: str) -> None:
        self.session = session
        self.message_id = message_id
        self._follower = follower
        small = w.Layout(width="34px", padding="0")
        self.up = w.Button(icon="thumbs-up", tooltip="a good answer", layout=small)
        self.down = w.Button(icon="thumbs-down", tooltip="a bad answer", layout=small)
        self.scores = [
            w.Button(description=str(n), tooltip=f"score {n} of 5", layout=small) for n in _SCORES
        ]
        self.note = w.HTML("")
        # The group's name (a Box's own tooltip breaks its view in ipywidgets 8.1).
        self._name = w.Label("")
        self._name.add_class("cm-sr-only")
        self._name.add_class("cm-rating-name")
        super().__init__([self.up, self.down, *self.scores, self.note, self._name])
        self.add_class("cm-rating")
        self.up.on_click(lambda _b: self._rate({"thumbs": "up"}))
        self.down.on_click(lambda _b: self._rate({"thumbs": "down"}))
        for n, button in zip(_SCORES, self.scores, strict=True):
            button.on_click(lambda _b, n=n: self._rate({"score": n}))
        self.show(stored_rating(session, message_id))

    def __repr__(self) -> str:
        return "<cm_notebook rating>"

    @property
    def name(self) -> str:
        """What a screen reader calls the bar (which answer it rates)."""
        return str(self._name.value)

    @name.setter
    def name(self, text: str) -> None:
        self._name.value = text

    def close(self) -> None:
        """Close the bar and its buttons (harmless twice)."""
        close_parts(self)
        super().close()

    def _rate(self, content: dict[str, Any]) -> None:
        # A click may come on the comm thread: rate on the session's loop.
        def carry_out() -> None:
            self.note.value = ""
            try:
                rate_from_front_end(self.session, {"id": self.message_id, **content})
            except CMError as exc:
                self.note.value = f'<span style="color:{ERROR}">{html.escape(str(exc))}</span>'

        self._follower.on_loop(carry_out)

    def show(self, rating: Mapping[str, Any]) -> None:
        """Press the buttons of ``rating`` (``{"thumbs", "score"}``)."""
        self.up.button_style = "success" if rating.get("thumbs") == "up" else ""
        self.down.button_style = "danger" if rating.get("thumbs") == "down" else ""
        _press(self.up, rating.get("thumbs") == "up")
        _press(self.down, rating.get("thumbs") == "down")
        for n, button in zip(_SCORES, self.scores, strict=True):
            button.button_style = "info" if rating.get("score") == n else ""
            _press(button, rating.get("score") == n)


def _press(button: w.Button, pressed: bool) -> None:
    # Pressed or not, said by a class the front end reads (aria-pressed): the colour
    # alone says nothing to a screen reader, nor to someone who cannot tell the colours.
    if pressed:
        button.add_class("cm-pressed")
    else:
        button.remove_class("cm-pressed")
