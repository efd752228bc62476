"""cm_notebook: a conversation workbench for LLM research inside Jupyter.

>>> from cm_notebook import ContextSession
>>> session = ContextSession.create("Capitals")          # the offline model by default
>>> reply = await session.send("What is the capital of France?")   # in a notebook
>>> reply = session.send("And of Italy?").result(60)               # in a script

Everything is importable lazily: ``import cm_notebook`` loads no model SDK.
"""

from __future__ import annotations

from typing import Any

from .compare import Comparison
from .errors import CMError
from .fsm import State
from .model import Branch, ContextMetadata, Message, MessageStatus, ToolCall, ToolCallStatus
from .retry import RetryPolicy
from .scores import Score
from .session import ContextSession
from .stability import Stability, stability
from .tools import ToolPolicy, tool
from .turn import Turn

__version__ = "0.1.0"


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext cm_notebook``: register the ``%cm`` / ``%%cm`` magics."""
    # Imported here: IPython and the views load only when the magics are wanted.
    from .magics import load_ipython_extension as load

    load(ipython)


__all__ = [
    "Branch",
    "CMError",
    "Comparison",
    "ContextMetadata",
    "ContextSession",
    "Message",
    "MessageStatus",
    "RetryPolicy",
    "Score",
    "Stability",
    "State",
    "ToolCall",
    "ToolCallStatus",
    "ToolPolicy",
    "Turn",
    "__version__",
    "load_ipython_extension",
    "stability",
    "tool",
]
