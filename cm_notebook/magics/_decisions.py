"""``%cm approve`` / ``%cm deny`` run before the reply they decide for has asked.

Run All over a notebook runs ``%cm approve`` right after the ``%%cm`` cell whose reply
will ask for a tool, while that reply is still being written: no call waits yet. Run
one by one, the cell would have come after the buttons appeared. So when no call waits
and this kernel's reply on the branch is under way, the decision waits for that reply
to ask (or to end without asking) and is made then. Its output says that it waits and
is replaced in place by what was decided (a ``print`` after the cell has ended would be
lost); ``await`` it for the calls decided.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import CMError
from ..widgets._live_output import LiveOutput
from ._queue import polled
from ._remedies import for_magics

if TYPE_CHECKING:
    from collections.abc import Generator

    from ..model import ToolCall
    from ._reply import ReplyView

__all__ = ["PendingDecision", "decided_text"]


def decided_text(decided: builtins.list[ToolCall], verb: str) -> str:
    """What a decision says: each call decided, or that none waited."""
    if not decided:
        return f"nothing {verb}: no tool call is waiting"
    return "\n".join(f"{verb} {call.name} ({call.id})" for call in decided)


class PendingDecision:
    """A decision waiting for ``reply`` to ask for tools; ``decide()`` makes it then.

    ``verb`` is what it does (``approved``, ``denied``).
    """

    def __init__(
        self,
        reply: ReplyView,
        decide: Callable[[], builtins.list[ToolCall]],
        verb: str,
    ) -> None:
        self.reply = reply
        self.verb = verb
        self._decide = decide
        self._text = f"… {verb} once the reply above asks for a tool (it is still being written)"
        self._decided: concurrent.futures.Future[builtins.list[ToolCall]] = (
            concurrent.futures.Future()
        )
        self._output = LiveOutput()
        reply.session._loop.call_soon_threadsafe(self._begin)

    def __repr__(self) -> str:
        return f"<cm_notebook pending decision: {self.verb} on branch {self.reply.branch!r}>"

    def __await__(self) -> Generator[Any, None, builtins.list[ToolCall]]:
        return polled(self._decided).__await__()

    @property
    def text(self) -> str:
        """What the output says now."""
        return self._text

    def _ipython_display_(self) -> None:
        self._output.show({"text/plain": self._text})

    # -- on the session's loop ---------------------------------------------------------

    def _begin(self) -> None:
        asyncio.get_running_loop().create_task(self._when_asked())

    async def _when_asked(self) -> None:
        decided: builtins.list[ToolCall] = []
        try:
            turn = await self.reply.started()
            if await turn.wait_for_approval(timeout=None):
                decided = self._decide()
                self._text = decided_text(decided, self.verb)
            else:
                self._text = f"nothing {self.verb}: the reply ended without asking for a tool"
        except asyncio.CancelledError:
            self._text = f"nothing {self.verb}: the reply was stopped"
        except CMError as exc:
            self._text = f"nothing {self.verb}: {for_magics(str(exc), self.reply.session)}"
        except Exception as exc:  # a decision must never take the kernel down
            self._text = f"nothing {self.verb}: {type(exc).__name__}: {exc}"
        finally:
            if self._output.shown:
                self._output.update({"text/plain": self._text})
            if not self._decided.done():
                self._decided.set_result(decided)
