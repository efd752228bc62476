"""The options a session is built with, defined once for ``create``, ``open`` and the core.

:meth:`ContextSession.create <cm_notebook.session.ContextSession.create>` and
:meth:`ContextSession.open <cm_notebook.session.ContextSession.open>` take them as keyword
arguments (``**options: Unpack[SessionOptions]``, so type checkers and IDEs still know
each name and type) and hand them on unchanged; :class:`~cm_notebook._session_core.SessionCore`
validates them, once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypedDict

from .errors import InvalidInputError
from .providers.pool import ProviderLike
from .retry import RetryPolicy
from .tools import Policy, ToolPolicy

if sys.version_info >= (3, 11):
    from typing import Unpack
else:  # pragma: no cover - Python 3.10
    from typing_extensions import Unpack

__all__ = [
    "DEFAULTS",
    "SessionOptions",
    "Unpack",
    "check_max_tool_rounds",
    "check_names",
    "departs_from_defaults",
]


class SessionOptions(TypedDict, total=False):
    """Keyword options of a session; each may be left out.

    * ``provider``: a spec (``"local"``, ``"openai:gpt-4o-mini"``, ``"anthropic:..."``)
      or a Provider instance (e.g. a ScriptedProvider); when opening, it overrides the
      context's stored default for this session.
    * ``tools``: tools on offer (functions or :class:`~cm_notebook.tools.Tool`).
    * ``approval``: which tool calls need approval (a policy, or one per tool name).
    * ``retry``: a :class:`~cm_notebook.retry.RetryPolicy` for failed provider calls.
    * ``max_tool_rounds``: tool call rounds a turn may take (default 10, at least 1).
    * ``tool_timeout``: seconds a tool call may run (default: no limit, or the tool's own
      ``@tool(timeout=...)``). A call cut off at the limit fails, and the model is told
      the tool may still be running: Python cannot stop a sync tool's thread.
    * ``auto_title``: ask the model for a better title for an untitled context.
    """

    provider: ProviderLike | None
    tools: Iterable[Any]
    approval: ToolPolicy | Policy | Mapping[str, Policy] | None
    retry: RetryPolicy | None
    max_tool_rounds: int
    tool_timeout: float | None
    auto_title: bool


# The value of each option when it is left out.
DEFAULTS: Final[SessionOptions] = {
    "provider": None,
    "tools": (),
    "approval": None,
    "retry": None,
    "max_tool_rounds": 10,
    "tool_timeout": None,
    "auto_title": False,
}


def check_names(options: Mapping[str, object], where: str) -> None:
    """Refuse a keyword that is not an option, as Python does for a misspelt argument."""
    for name in options:
        if name not in DEFAULTS:
            raise TypeError(f"{where}() got an unexpected keyword argument {name!r}")


def departs_from_defaults(options: SessionOptions) -> bool:
    """Whether ``options`` ask for anything a session opened without options would not have.

    Empty ``tools`` and a false ``auto_title`` count as left out.
    """
    return any(
        bool(value) if name in ("tools", "auto_title") else value != DEFAULTS[name]  # type: ignore[literal-required]
        for name, value in options.items()
    )


def check_max_tool_rounds(value: object) -> int:
    """``value`` if it is a whole number of tool rounds, at least 1; else raise.

    Zero is refused: every reply asking for a tool would end its turn in an error that
    no message sent after it could get past (each new turn would fail the same way).
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"max_tool_rounds must be an integer, got {value!r}")
    if value < 1:
        raise InvalidInputError(
            f"max_tool_rounds must be at least 1, got {value}: with no tool rounds, every "
            "turn in which the model asks for a tool fails. To keep the model from running "
            "tools, pass approval='deny' (each call is refused and the model told so) or "
            "leave the tools out (tools=[])"
        )
    return value
