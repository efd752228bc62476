"""``/contexts/{context_id}/compare``: the last answers of branches side by side."""

from __future__ import annotations

from ..compare import Comparison
from ..errors import BranchNotFoundError
from ..ids import validate_branch_name
from .base import CMHandler, operation
from .bodies import CompareQuery

__all__ = ["CompareHandler"]


class CompareHandler(CMHandler):
    """Compare branches."""

    @operation(
        "Compare the last answers of branches (?branch=a&branch=b; default: all)",
        response=Comparison,
        query=CompareQuery,
    )
    async def get(self, context_id: str) -> None:
        session = await self.session(context_id)
        query = self.query(CompareQuery)
        known = session.branches
        for name in query.branch:
            validate_branch_name(name)
            if name not in known:
                raise BranchNotFoundError(
                    f"there is no branch {name!r}; the branches are {sorted(known)}"
                )
        # Reads each branch's messages: on a worker thread, not the event loop.
        self.reply(await self.blocking(session, session.compare, *query.branch))
