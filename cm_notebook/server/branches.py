"""``/contexts/{context_id}/branches``: list, fork, switch, change and delete branches."""

from __future__ import annotations

import inspect
from typing import Any

from ..errors import BranchNotFoundError, InvalidInputError
from ..ids import validate_branch_name
from ..model import Branch
from ..session import ContextSession
from .base import CMHandler, operation
from .bodies import BranchList, CreateBranch, UpdateBranch

__all__ = ["BranchHandler", "BranchesHandler"]


_NO_BRANCH_SYSTEM = (
    "this server's cm_notebook cannot give a branch its own system prompt; leave 'system' out"
)


def _supports(method: Any, parameter: str) -> bool:
    # Branch system prompts arrive with a newer session API; until then say so plainly.
    return parameter in inspect.signature(method).parameters


def _branch(session: ContextSession, name: str) -> Branch:
    validate_branch_name(name)
    branches = session.branches
    if name not in branches:
        raise BranchNotFoundError(
            f"there is no branch {name!r}; the branches are {sorted(branches)}"
        )
    return branches[name]


def _set_system(session: ContextSession, branch: str, system: str) -> None:
    edit_system = getattr(session, "edit_system", None)
    if edit_system is None:
        raise InvalidInputError(_NO_BRANCH_SYSTEM)
    edit_system(system, branch=branch)


class BranchesHandler(CMHandler):
    """A context's branches; a new one."""

    @operation("A context's branches", response=BranchList)
    async def get(self, context_id: str) -> None:
        metadata = self.session(context_id).metadata
        self.reply(
            BranchList(active=metadata.active_branch, branches=list(metadata.branches.values()))
        )

    @operation(
        "Fork a branch (from a message, default the active head)",
        status=201,
        response=Branch,
        body=CreateBranch,
        errors=(400, 404, 409),
    )
    async def post(self, context_id: str) -> None:
        session = self.session(context_id)
        request = self.body(CreateBranch)
        options: dict[str, Any] = {"switch": request.switch, "description": request.description}
        if request.system is not None:
            if not _supports(session.branch, "system"):
                raise InvalidInputError(_NO_BRANCH_SYSTEM)
            options["system"] = request.system
        created = session.branch(request.name, request.from_message, **options)
        self.reply(created, status=201)


class BranchHandler(CMHandler):
    """One branch."""

    @operation("One branch", response=Branch)
    async def get(self, context_id: str, branch: str) -> None:
        self.reply(_branch(self.session(context_id), branch))

    @operation(
        "Switch to a branch, or change its system prompt",
        response=Branch,
        body=UpdateBranch,
        errors=(400, 404, 409),
    )
    async def put(self, context_id: str, branch: str) -> None:
        session = self.session(context_id)
        request = self.body(UpdateBranch)
        _branch(session, branch)
        if request.system is not None:
            _set_system(session, branch, request.system)
        if request.active:
            session.switch(branch)
        self.reply(_branch(session, branch))

    @operation(
        "Delete a branch pointer (its messages stay in the tree)",
        status=204,
        errors=(400, 404, 409),
    )
    async def delete(self, context_id: str, branch: str) -> None:
        session = self.session(context_id)
        _branch(session, branch)
        session.delete_branch(branch)
        self.set_status(204)
        self.finish()
