"""Live notebook views of a :class:`~cm_notebook.session.ContextSession`.

One view per module; each only renders a session and reacts to its signals:

- :class:`ChatView` (:mod:`.chat`): a branch with the reply streaming in, send, stop,
  edit-and-resend, regenerate, siblings, fork.
"""

from __future__ import annotations

from .chat import ChatView

__all__ = ["ChatView"]
