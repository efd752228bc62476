"""Branches of a session: fork, switch, delete, and each branch's own system prompt.

:class:`SessionBranches` adds the branch operations to the read side
(:class:`~cm_notebook._session_reading.SessionReading`); its methods are public API
of :class:`~cm_notebook.session.ContextSession`. A branch may carry defaults of its
own (system prompt, provider, generation parameters; :mod:`cm_notebook.branch_defaults`),
and changing the prompt of a branch that already has replies forks a new branch, so
every reply stays attributed to the prompt it was made under.
"""

from __future__ import annotations

from typing import Any

from . import events as ev
from ._auto_names import made_under_free_name
from ._claims import running_remedy
from ._session_reading import SessionReading
from .branch_defaults import branch_settings
from .errors import BusyError, InvalidInputError, StateError
from .ids import validate_branch_name, validate_new_branch_name
from .model import Branch, MessageStatus
from .params import GenerationParams
from .prompts import effective_system
from .providers.pool import ProviderLike
from .titles import checked_description

__all__ = ["SessionBranches"]


class SessionBranches(SessionReading):
    """Fork, switch and delete branches; set a branch's system prompt."""

    # -- branches ----------------------------------------------------------------------

    def branch(
        self,
        name: str,
        from_message: str | None = None,
        *,
        switch: bool = True,
        description: str = "",
        system: str | None = None,
        provider: ProviderLike | None = None,
        from_branch: str | None = None,
        **params: Any,
    ) -> Branch:
        """Fork a new branch at ``from_message`` (default: the head of ``from_branch``,
        itself by default the active branch).

        Copies no messages. With ``switch`` (the default) the new branch becomes active.
        The new branch inherits the defaults (system prompt, provider, generation
        parameters) of the branch it is forked from: ``from_branch`` if given, else the
        active branch if it holds ``from_message``, else the oldest branch that does.
        ``system``, ``provider`` and ``params`` given here win over the inherited ones
        (``system=""``: no prompt; use :meth:`edit_system` to return to the context's):
        ``session.branch("terse", system="Answer in five words.")``.
        """
        self._check_open()
        validate_new_branch_name(name)
        if from_branch is not None:
            validate_branch_name(from_branch)
        checked_description(description)
        own = branch_settings(system, provider, params)
        metadata = self._read_metadata()
        if from_message is None:
            forked = from_branch or metadata.active_branch
            # The head first, then whether a turn runs: a send that claims the branch
            # after this read leaves ``head`` an answered place to fork at.
            head = self._head(forked)
            # (A taken name is refused first, by the store: waiting would not help.)
            if name not in metadata.branches and self._mid_turn(forked):
                # Its head is the turn's own message, or its unfinished reply.
                raise BusyError(
                    f"a reply is still being generated on branch {forked!r}, so a branch "
                    "forked at its head would miss it. Wait for the turn to finish (await "
                    "it), or fork at an earlier message (from_message=...)."
                )
            source: str | None = forked
            at = self.get(head) if head is not None else None
        else:
            at = self.get(from_message)
            head = at.id
            source = self._source_branch(head, from_branch)
        if (
            at is not None
            and at.status is MessageStatus.STREAMING
            and name not in metadata.branches
        ):
            # Its next request would show the model a reply it has not finished (empty,
            # or cut), and the stored history would later show the whole of it. (A taken
            # name is refused by the store below first, whatever streams.)
            raise BusyError(
                f"message {at.id!r} is still being generated, so a branch forked at it would "
                "build on an unfinished reply. Wait for the turn to finish (await it), or "
                "fork at an earlier message (from_message=...)."
            )
        # Like an edit or a fan-out arm: a fork answers as the branch it came from, so
        # an experiment's arm forked from a view keeps its prompt and parameters.
        settings = (
            self._defaults.inherit(metadata, source)
            if source is not None
            else {"system_prompt": None, "provider": None, "params": {}}
        )
        if system is not None:
            settings["system_prompt"] = system
        if own["provider"] is not None:
            settings["provider"] = own["provider"]
        settings["params"] = {**settings["params"], **own["params"]}
        if params:
            # Names the answering provider does not take fail now, not at the first send.
            if provider is None and source is not None:
                answering = self._defaults.for_request(metadata, source, None, {})[0]
            else:
                answering = self._provider(provider)
            GenerationParams.check(settings["params"], answering)
        # Creating a branch is exclusive by name (BranchExistsError if it is taken), so
        # it cannot overwrite another writer's head.
        created = self._io.call(
            self._store.create_branch(
                self.id, name, head=head, forked_from=head, description=description, **settings
            )
        )
        if provider is None and source is not None:
            self._defaults.pass_on(metadata, source, created)
        else:
            # A provider given here must not be shadowed by the source's live instance.
            self._defaults.remember(created, provider)
        self._publish(ev.BranchCreated(branch=name, head=head))
        if switch:
            self.switch(name)
        return created

    def edit_system(self, text: str | None, *, branch: str | None = None) -> Branch:
        """Change the system prompt of ``branch`` (default: active); returns the branch.

        If the branch already has replies of its own made under its old prompt, they
        keep it: a new branch ``<branch>-system-N`` is forked at the same head with the
        new prompt (and the old branch's provider and parameters), and becomes active if
        ``branch`` was. Otherwise the prompt is changed in place: the replies a branch
        shares with the one it was forked from (up to its fork point) are not its own,
        and they keep the prompt they record (``metadata.system_prompt``) either way.
        ``None`` inherits the context's prompt, ``""`` means none. A prompt the
        branch's replies are made under already (its own, or the context's it inherits)
        forks nothing. While a reply is being generated on the branch this raises
        :class:`~cm_notebook.errors.BusyError` (a fork there would start before the
        reply exists); a reply waiting for a tool decision is finished, so forking at it
        works.
        """
        self._check_open()
        if text is not None and not isinstance(text, str):
            raise InvalidInputError(f"system prompt must be a string, got {type(text).__name__}")
        name = self._branch_name(branch)
        self._head(name)  # BranchNotFoundError for an unknown branch
        metadata = self._read_metadata()
        current = metadata.branches[name]
        if current.system_prompt == text:
            return current.model_copy(deep=True)  # the caller's own, as below
        # The prompt a reply is made under, before and after: the same (the context's
        # prompt given to a branch that inherits it, "" to a branch with none) means the
        # replies there were made under the new prompt already, so nothing is forked.
        unchanged = effective_system(metadata, name) == (
            metadata.system_prompt or None if text is None else text or None
        )
        # Mid-turn as this or another process says, or (whatever the signals say: a
        # writer that publishes none) the head is a reply still being written.
        if self._mid_turn(name) or self._streams(current.head):
            if unchanged:
                return current.model_copy(deep=True)
            # A fork would start at the turn's own message or its unfinished reply.
            with self._lock:
                here = name in self._runners  # else another process's turn: no Turn here
            raise BusyError(
                f"a reply is still being generated on branch {name!r} under its current "
                f"system prompt; {running_remedy(name, here=here)}"
            )
        # In place only while no reply exists and none is being made: the claim keeps
        # sends (in any process) off the branch while we look and write.
        try:
            with self._claim(name) as claim:
                try:
                    updated = self._system_in_place(name, text)
                finally:
                    claim.release()
        except BusyError:
            updated = None  # a reply is being made under the old prompt: fork
        if updated is not None:
            return updated
        if unchanged:
            return current.model_copy(deep=True)
        metadata = self._read_metadata()
        settings = {**self._defaults.inherit(metadata, name), "system_prompt": text}

        def make(fork: str) -> Branch:
            return self._io.call(
                self._store.create_branch(
                    self.id, fork, head=current.head, forked_from=current.head, **settings
                )
            )

        # The fork's name is chosen here: taken meanwhile by another process (an
        # edit_system of its own at the same moment), the next free one is.
        created = made_under_free_name(
            "the new system prompt's branch",
            lambda refused: self._free_branch_name(f"{name}-system", refused),
            make,
        )
        self._defaults.pass_on(metadata, name, created)
        self._publish(ev.BranchCreated(branch=created.name, head=current.head))
        if name == self.active_branch:
            self.switch(created.name)
        return created

    def _streams(self, message_id: str | None) -> bool:
        return message_id is not None and self.get(message_id).status is MessageStatus.STREAMING

    def switch(self, name: str) -> Branch:
        """Make ``name`` the active branch."""
        self._check_open()
        validate_branch_name(name)
        metadata = self._io.call(self._store.set_active_branch(self.id, name))
        self._metadata = metadata
        self._publish(ev.BranchSwitched(branch=name))
        return metadata.branches[name].model_copy(deep=True)  # not the session's copy

    def delete_branch(self, name: str) -> None:
        """Delete a branch pointer (its messages stay in the tree)."""
        self._check_open()
        validate_branch_name(name)
        with self._lock:
            if name in self._runners:
                raise BusyError(f"branch {name!r} has a reply in progress; cancel it first")
        if name == self.active_branch:
            raise StateError(
                f"branch {name!r} is the active branch; switch to another one first "
                "(session.switch(name)), then delete it"
            )
        # Under the branch's claim: a writer elsewhere (another process) may be using it.
        claim = self._claims.take(name, deleting=True)
        try:
            self._io.call(self._store.delete_branch(self.id, name))
        finally:
            claim.release()
        self._forget_branch(name)
        self._defaults.forget(name)
        self._publish(ev.BranchDeleted(branch=name))

    # -- private helpers ---------------------------------------------------------------

    def _source_branch(self, message_id: str, given: str | None) -> str | None:
        """The branch a fork or an edit at ``message_id`` comes from, for its defaults:
        ``given`` (checked to hold the message), else the active branch if it holds it,
        else the oldest branch that does. A message no branch holds (a reply that
        regenerate replaced, say) was written on the branch that holds its nearest
        ancestor: that one, the same way (None if no branch holds any)."""
        tree = self.tree()  # from the index: no message file is read
        if given is not None:
            self._head(given)  # BranchNotFoundError for an unknown branch
            if not tree.holds(given, message_id):
                raise InvalidInputError(
                    f"message {message_id!r} is not on branch {given!r}; "
                    "give the branch that holds it"
                )
            return given
        metadata = self._read_metadata()
        older = sorted(metadata.branches.values(), key=lambda b: b.created_at)
        order = [metadata.active_branch, *(b.name for b in older)]
        node = tree.nodes.get(message_id)
        while node is not None:
            found = tree.first_holding(node.id, order)
            if found is not None:
                return found
            node = tree.nodes.get(node.parent_id) if node.parent_id is not None else None
        return None

    def _system_in_place(self, name: str, text: str | None) -> Branch | None:
        # Change the prompt of the claimed branch ``name`` if it has no replies of its
        # own made under its prompt yet (None: it has, so edit_system forks).
        if self._own_replies_under_prompt(name):
            return None
        updated = self._io.call(self._store.update_branch(self.id, name, system_prompt=text))
        self._publish_branch_update(name, ["system_prompt"], head=updated.head)
        return updated

    def _own_replies_under_prompt(self, name: str) -> bool:
        # Whether branch ``name`` holds a reply of its own made under its current
        # prompt: one on its path past its fork point (the replies up to there were made
        # on the branch it was forked from, under that branch's prompt), that records
        # this prompt, or records none (a reply stored before replies recorded it).
        metadata = self._read_metadata()
        index = self._index()
        shared: set[str] = set()
        node = metadata.branches[name].forked_from
        while node is not None and node in index and node not in shared:
            shared.add(node)
            node = index[node].parent_id
        prompt = effective_system(metadata, name)
        path = self._io.call(self._store.path(self.id, name))
        for mid in path:
            entry = index.get(mid)
            if entry is None or entry.role != "assistant" or mid in shared:
                continue
            made = self.get(mid).metadata
            if "system_prompt" not in made.model_fields_set:
                return True  # its prompt is not known: taken as this one
            if (made.system_prompt or None) == prompt:
                return True
        return False
