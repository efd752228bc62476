"""Text a view took from its input box, given back when the store refuses the message.

A view empties its box as soon as Send is clicked, while the message is stored in the
background (a notebook's event loop never waits for the disk). Where the store refuses
it (a read-only folder, a full disk) the status bar says nothing was sent and to send it
again: the text goes back in the box for that, before anything typed since.
"""

from __future__ import annotations

from collections.abc import Callable

import ipywidgets as w

from ..turn import Turn

__all__ = ["give_back_if_refused"]


def give_back_if_refused(
    turn: Turn, text: str, box: w.Textarea, on_loop: Callable[[Callable[[], None]], None]
) -> None:
    """Put ``text`` back in ``box`` (on the view's loop) if ``turn``'s message is refused.

    Also takes the turn's error once it ends: nobody awaits a turn a view started (the
    status bar shows its error), so it must not end the process with "Task exception
    was never retrieved".
    """

    def put_back() -> None:
        typed = box.value
        box.value = f"{text}\n{typed}" if typed.strip() else text

    def accepted(error: BaseException | None) -> None:
        if error is not None:
            on_loop(put_back)

    def taken() -> None:
        turn.exception()

    turn.when_accepted(accepted)
    turn.when_done(taken)
