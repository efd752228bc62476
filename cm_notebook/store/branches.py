"""The branch operations of :class:`~cm_notebook.store.filestore.FileStore`.

:class:`BranchWrites` is a base of ``FileStore``: creating, changing, moving and
deleting branch pointers (never their messages). Each runs one write of
:mod:`cm_notebook.store.ops` under the context's locks, on a worker thread.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import EllipsisType
from typing import Any, TypeVar

from pydantic import ValidationError

from ..errors import InvalidInputError
from ..ids import validate_branch_name, validate_message_id, validate_new_branch_name
from ..model import Branch, ContextMetadata, ProviderSettings
from . import ops

__all__ = ["BranchWrites", "check_message_ids"]

T = TypeVar("T")


def check_message_ids(*message_ids: str | None) -> None:
    """Validate each id that is not None (InvalidIdError for a bad one)."""
    for message_id in message_ids:
        if message_id is not None:
            validate_message_id(message_id)


class BranchWrites:
    """Branch pointers of a context (see the module docstring)."""

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError  # FileStore's: the work on a worker thread

    def _write(self, context_id: str, func: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError  # FileStore's: one write under the context's locks

    async def create_branch(
        self,
        context_id: str,
        name: str,
        *,
        head: str | None,
        forked_from: str | None = None,
        description: str = "",
        system_prompt: str | None = None,
        provider: ProviderSettings | None = None,
        params: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
    ) -> Branch:
        """Create a branch pointing at ``head``; raises BranchExistsError if taken.

        ``system_prompt``, ``provider`` and ``params`` are the branch's own defaults,
        ``labels`` its labels.
        """
        validate_new_branch_name(name)
        check_message_ids(head, forked_from)
        try:
            branch = Branch(
                name=name,
                head=head,
                forked_from=forked_from,
                description=description,
                system_prompt=system_prompt,
                provider=provider,
                params=dict(params or {}),
                labels=dict(labels or {}),
            )
        except ValidationError as exc:
            raise InvalidInputError(f"cannot create branch {name!r}: {exc}") from exc
        await self._run(self._write, context_id, ops.do_create_branch, branch)
        # A copy: ``branch`` is now the stored metadata's own object.
        return branch.model_copy(deep=True)

    async def create_branches(self, context_id: str, branches: Sequence[Branch]) -> None:
        """Create several branches in one write of the metadata: all of them, or (on
        any error, such as BranchExistsError for a taken name) none. For many branches
        at once (a sweep's cells): made one by one, each write would rewrite every
        branch made before it."""
        checked = []
        for branch in branches:
            validate_branch_name(branch.name)
            check_message_ids(branch.head, branch.forked_from)
            try:  # validated anew (a model may be built unchecked), and the caller's
                checked.append(Branch.model_validate(branch.model_dump()))  # stay theirs
            except ValidationError as exc:
                raise InvalidInputError(f"cannot create branch {branch.name!r}: {exc}") from exc
        if checked:
            await self._run(self._write, context_id, ops.do_create_branches, checked)

    async def update_branch(
        self,
        context_id: str,
        name: str,
        *,
        system_prompt: str | EllipsisType | None = ...,
        provider: ProviderSettings | EllipsisType | None = ...,
        params: dict[str, Any] | EllipsisType = ...,
        labels: dict[str, str] | EllipsisType = ...,
    ) -> Branch:
        """Change a branch's own defaults or labels (``...`` leaves one alone); never
        its head.

        Parameters that look like secrets are refused (InvalidInputError).
        """
        validate_branch_name(name)
        changes: dict[str, Any] = {
            key: value
            for key, value in (
                ("system_prompt", system_prompt),
                ("provider", provider),
                ("params", params),
                ("labels", labels),
            )
            if value is not ...
        }
        branch: Branch = await self._run(
            self._write, context_id, ops.do_update_branch, name, changes
        )
        return branch.model_copy(deep=True)

    async def change_labels(
        self,
        context_id: str,
        changes: Mapping[str, Mapping[str, str | None]],
        *,
        unique: str | None = None,
    ) -> dict[str, Branch]:
        """Set labels on branches (None removes one), merged under the context's lock
        with the labels they have then, so two processes labelling at once lose
        nothing. With ``unique``, a label only one branch may carry: every branch
        ``changes`` does not give it loses it. Returns the branches whose labels
        changed (InvalidInputError for labels that are not valid, then nothing changes).
        """
        checked = {
            validate_branch_name(name): {str(key): value for key, value in labels.items()}
            for name, labels in changes.items()
        }
        changed: dict[str, Branch] = await self._run(
            self._write, context_id, ops.do_change_labels, checked, unique
        )
        return {name: branch.model_copy(deep=True) for name, branch in changed.items()}

    async def set_branch_head(
        self,
        context_id: str,
        name: str,
        head: str | None,
        *,
        expected_head: str | EllipsisType | None = ...,
    ) -> Branch:
        """Point an existing branch at another message (or at nothing, with None).

        With ``expected_head`` it is a compare-and-set: ``BranchMovedError`` (and nothing
        written) if the head is no longer that id.
        """
        validate_branch_name(name)
        check_message_ids(head)
        if expected_head is not ...:
            check_message_ids(expected_head)
        branch: Branch = await self._run(
            self._write, context_id, ops.do_set_branch_head, name, head, expected_head
        )
        return branch.model_copy()

    async def set_active_branch(self, context_id: str, name: str) -> ContextMetadata:
        """Make ``name`` the active branch."""
        validate_branch_name(name)
        updated: ContextMetadata = await self._run(
            self._write, context_id, ops.do_set_active_branch, name
        )
        return updated.model_copy(deep=True)

    async def delete_branch(self, context_id: str, name: str) -> None:
        """Delete a branch pointer (never its messages). The active branch cannot be deleted.

        Deleting the active branch raises :class:`~cm_notebook.errors.StateError`.
        """
        validate_branch_name(name)
        await self._run(self._write, context_id, ops.do_delete_branch, name)
