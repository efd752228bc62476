"""Refusing to send a stand-in's placeholder text to a model as what was said.

``cm-notebook check --repair`` writes a stand-in (:mod:`cm_notebook.store.stand_ins`) in
place of a message whose file could not be read, so that the messages after it read
again. Its text only says that the message was lost: a replay or a counterfactual that
sent it as a prompt (or edited it, to compare with what it stands for) would give the
model, and the comparison, a text nobody wrote. :func:`refuse_stand_in` says which
message it is and how to get the real one back; :func:`stand_in_error` is the error a
reader that reports unreadable files (a sweep's records and cells) gives for one.
"""

from __future__ import annotations

from .errors import CorruptDataError, StateError
from .model import Message
from .store.stand_ins import stand_in_file

__all__ = ["refuse_stand_in", "stand_in_error"]


def refuse_stand_in(message: Message, doing: str, what: str) -> None:
    """Raise a StateError if ``message`` is a stand-in for an unreadable message.

    ``doing`` is what was asked (``"replay branch 'main'"``), ``what`` the part
    ``message`` plays in it (``"one of its user turns"``)."""
    kept = stand_in_file(message)
    if kept is None:
        return
    before = (
        f"session.branch('<name>', from_message={message.parent_id!r})"
        if message.parent_id is not None
        else "a new branch"
    )
    raise StateError(
        f"cannot {doing}: {what}, {message.role} message {message.id!r}, is a stand-in "
        "that `cm-notebook check --repair` wrote because its file could not be read; "
        "its text is a placeholder, not what was said. Restore the message's file from a "
        f"backup (as messages/{message.id}.json in the context's folder; the damaged one "
        f"is kept as {kept}) and run `cm-notebook check --repair` again, then retry. "
        f"If you know what it said, send that yourself on {before}."
    )


def stand_in_error(message: Message) -> CorruptDataError:
    """The error of a stand-in ``message``, as for a message file that cannot be read:
    which message, where its damaged file is kept, and what to do."""
    kept = stand_in_file(message) or "damaged/"
    return CorruptDataError(
        f"{message.role} message {message.id!r} could not be read: it is a stand-in that "
        "`cm-notebook check --repair` wrote in place of its damaged file (kept as "
        f"{kept} in the context's folder), and its text is a placeholder. Restore the "
        f"message's file from a backup (as messages/{message.id}.json) to read it again."
    )
