"""``/contexts/{context_id}/branches``: list, fork, switch, change and delete branches.

Every change writes the context's metadata (waiting for another process's lock if
need be): on a worker thread, never on the server's event loop. The session's methods
may be called from any thread; it publishes their signals on its loop's thread.
"""

from __future__ import annotations

from ..errors import BranchNotFoundError
from ..ids import validate_branch_name
from ..model import Branch
from ..session import ContextSession
from .base import CMHandler, operation
from .bodies import BranchList, CreateBranch, UpdateBranch
from .provider_choice import check_client_choice

__all__ = ["BranchHandler", "BranchesHandler", "require_branch"]


def require_branch(session: ContextSession, name: str) -> Branch:
    """The branch ``name`` of ``session`` (400 for a hostile name, 404 if it has none)."""
    validate_branch_name(name)
    branches = session.branches
    if name not in branches:
        raise BranchNotFoundError(
            f"there is no branch {name!r}; the branches are {sorted(branches)}"
        )
    return branches[name]


def _update(session: ContextSession, branch: str, request: UpdateBranch) -> Branch:
    # Change the prompt and/or switch; the branch that has the new prompt is the answer.
    # The prompt first: it is what can be refused (BusyError mid-reply), and a refused
    # request must change nothing. A prompt change that forks makes the fork the one to
    # switch to, as editing the active branch's prompt does.
    changed = require_branch(session, branch)
    if "system" in request.model_fields_set:
        changed = session.edit_system(request.system, branch=branch)
    if request.active:
        session.switch(changed.name)
    return require_branch(session, changed.name)


class BranchesHandler(CMHandler):
    """A context's branches; a new one."""

    @operation("A context's branches", response=BranchList)
    async def get(self, context_id: str) -> None:
        metadata = (await self.session(context_id)).metadata
        self.reply(
            BranchList(active=metadata.active_branch, branches=list(metadata.branches.values()))
        )

    @operation(
        "Fork a branch (from a message, default the active head), with its own system "
        "prompt, provider and parameters if given",
        status=201,
        response=Branch,
        body=CreateBranch,
        errors=(400, 404, 409),
    )
    async def post(self, context_id: str) -> None:
        session = await self.session(context_id)
        request = self.body(CreateBranch)
        check_client_choice(request.provider, allowed=self.sessions.client_endpoints)
        created = await self.blocking(
            session,
            session.branch,
            request.name,
            request.from_message,
            switch=request.switch,
            description=request.description,
            system=request.system,
            provider=request.provider,
            **request.params,
        )
        self.reply(created, status=201)


class BranchHandler(CMHandler):
    """One branch."""

    @operation("One branch", response=Branch)
    async def get(self, context_id: str, branch: str) -> None:
        self.reply(require_branch((await self.session(context_id)), branch))

    @operation(
        "Switch to a branch, and/or change its system prompt (a branch with replies "
        "under the old prompt is forked: the answer is the branch that has the new one)",
        response=Branch,
        body=UpdateBranch,
        errors=(400, 404, 409),
    )
    async def put(self, context_id: str, branch: str) -> None:
        session = await self.session(context_id)
        request = self.body(UpdateBranch)
        self.reply(await self.blocking(session, _update, session, branch, request))

    @operation(
        "Delete a branch pointer (its messages stay in the tree)",
        status=204,
        errors=(400, 404, 409),
    )
    async def delete(self, context_id: str, branch: str) -> None:
        session = await self.session(context_id)
        require_branch(session, branch)
        await self.blocking(session, session.delete_branch, branch)
        self.set_status(204)
        self.finish()
