"""A hypothesis state machine drives FileStore against a tiny in-memory model.

Rules interleave appends (some streaming), branch creation, head moves, edits (a new
sibling of an earlier user message on a new branch), active-branch switches, branch
deletions, streaming checkpoints and completions, and reopenings (a new FileStore on
the same folder, after which unfinished streams must read as interrupted). After every
step both the writing FileStore and a long-lived observer FileStore (which only reads,
so it exercises incremental reloading) must agree with the model.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from cm_notebook.errors import BranchExistsError, StateError
from cm_notebook.model import ContextMetadata, Message, MessageStatus, Role
from cm_notebook.store import FileStore

T = TypeVar("T")
CID = "ctx"
BRANCH_NAMES = st.sampled_from(["main", "alt", "feature x", "ünï", "b.2"])
TEXT = st.text(alphabet="abc é\n{}\"'", max_size=12)


def run(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    async def main() -> T:
        return await func(*args)

    return anyio.run(main)


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="cm-stateful-")
        self.store = FileStore(self.tmp)
        self.observer = FileStore(self.tmp)
        self.messages: dict[str, Message] = {}
        self.arrival: list[str] = []
        self.branches: dict[str, str | None] = {"main": None}
        self.active = "main"
        self.title = "t"
        self.counter = itertools.count()

    @initialize()
    def create(self) -> None:
        run(self.store.create_context, ContextMetadata(id=CID, title=self.title))

    # -- model helpers ---------------------------------------------------------------

    def model_path(self, branch: str) -> list[str]:
        ids = []
        current = self.branches[branch]
        while current is not None:
            ids.append(current)
            current = self.messages[current].parent_id
        return ids[::-1]

    def model_children(self, parent: str | None) -> list[str]:
        return [mid for mid in self.arrival if self.messages[mid].parent_id == parent]

    def streaming_ids(self) -> list[str]:
        return [m for m in self.arrival if self.messages[m].status is MessageStatus.STREAMING]

    def add(
        self, role: Role, parent: str | None, content: str, branch: str | None, stream: bool
    ) -> str:
        message = Message(
            role=role,
            parent_id=parent,
            content=content,
            status=MessageStatus.STREAMING if stream else MessageStatus.COMPLETE,
        )
        anyio.run(self._append, message, branch)
        self.messages[message.id] = message
        self.arrival.append(message.id)
        if branch is not None:
            self.branches[branch] = message.id
        return message.id

    async def _append(self, message: Message, branch: str | None) -> None:
        await self.store.append_message(CID, message, branch=branch)

    # -- rules -----------------------------------------------------------------------

    @rule(
        data=st.data(),
        role=st.sampled_from(["user", "assistant"]),
        stream=st.booleans(),
        content=TEXT,
    )
    def append(self, data: st.DataObject, role: Role, stream: bool, content: str) -> None:
        branch = data.draw(st.sampled_from(sorted(self.branches)), label="branch")
        self.add(role, self.branches[branch], content, branch, stream and role == "assistant")

    @precondition(lambda self: self.arrival)
    @rule(data=st.data(), content=TEXT)
    def regenerate_without_branch(self, data: st.DataObject, content: str) -> None:
        parent = data.draw(st.sampled_from(self.arrival), label="parent")
        self.add("assistant", parent, content, None, False)

    @rule(data=st.data(), name=BRANCH_NAMES)
    def create_branch(self, data: st.DataObject, name: str) -> None:
        head = data.draw(st.sampled_from([None, *self.arrival]), label="head")
        if name in self.branches:
            with pytest.raises(BranchExistsError):
                run(self._create_branch, name, head)
        else:
            run(self._create_branch, name, head)
            self.branches[name] = head

    async def _create_branch(self, name: str, head: str | None) -> None:
        await self.store.create_branch(CID, name, head=head)

    @precondition(lambda self: self.arrival)
    @rule(data=st.data())
    def move_head(self, data: st.DataObject) -> None:
        branch = data.draw(st.sampled_from(sorted(self.branches)), label="branch")
        head = data.draw(st.sampled_from([None, *self.arrival]), label="head")
        run(self.store.set_branch_head, CID, branch, head)
        self.branches[branch] = head

    @rule(data=st.data(), content=TEXT)
    def edit_earlier_user_message(self, data: st.DataObject, content: str) -> None:
        users = [m for m in self.model_path(self.active) if self.messages[m].role == "user"]
        if not users:
            return
        original = data.draw(st.sampled_from(users), label="edited")
        parent = self.messages[original].parent_id
        name = f"edit {next(self.counter)}"

        async def fork() -> None:
            await self.store.create_branch(CID, name, head=parent, forked_from=original)

        anyio.run(fork)
        self.branches[name] = parent
        self.add("user", parent, content, name, False)

    @rule(data=st.data())
    def switch(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.branches)), label="branch")
        run(self.store.set_active_branch, CID, name)
        self.active = name

    @rule(data=st.data())
    def delete_branch(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.branches)), label="branch")
        if name == self.active:
            with pytest.raises(StateError):
                run(self.store.delete_branch, CID, name)
        else:
            run(self.store.delete_branch, CID, name)
            del self.branches[name]

    @precondition(lambda self: self.streaming_ids())
    @rule(data=st.data(), more=TEXT, finish=st.booleans())
    def stream_checkpoint(self, data: st.DataObject, more: str, finish: bool) -> None:
        mid = data.draw(st.sampled_from(self.streaming_ids()), label="stream")
        message = self.messages[mid].model_copy(
            update={
                "content": self.messages[mid].content + more,
                "status": MessageStatus.COMPLETE if finish else MessageStatus.STREAMING,
            }
        )
        run(self.store.update_message, CID, message)
        self.messages[mid] = message

    @rule(title=TEXT)
    def retitle(self, title: str) -> None:
        run(self._retitle, title)
        self.title = title

    async def _retitle(self, title: str) -> None:
        await self.store.update_metadata(CID, title=title)

    @rule()
    def reopen(self) -> None:
        run(self.store.close)
        self.store = FileStore(self.tmp)
        # Streams the closed store never finished must now read as interrupted.
        for mid in self.streaming_ids():
            self.messages[mid] = self.messages[mid].model_copy(
                update={"status": MessageStatus.INTERRUPTED}
            )

    # -- checks ----------------------------------------------------------------------

    @invariant()
    def agrees_with_model(self) -> None:
        anyio.run(self._check, self.store)
        anyio.run(self._check, self.observer)

    async def _check(self, store: FileStore) -> None:
        meta = await store.get_metadata(CID)
        assert meta.title == self.title
        assert meta.active_branch == self.active
        assert {name: b.head for name, b in meta.branches.items()} == self.branches
        index = await store.index(CID)
        assert set(index) == set(self.messages)
        assert sorted(index, key=lambda mid: index[mid].seq) == self.arrival
        for mid, entry in index.items():
            assert entry.status == self.messages[mid].status, mid
            assert entry.parent_id == self.messages[mid].parent_id
        for name in self.branches:
            assert await store.path(CID, name) == self.model_path(name)
        page = await store.page(CID, limit=3)
        expected = [self.messages[m] for m in self.model_path(self.active)[-3:]]
        assert [(m.id, m.content, m.status) for m in page] == [
            (m.id, m.content, m.status) for m in expected
        ]
        for parent in [None, *self.arrival]:
            assert await store.children(CID, parent) == self.model_children(parent)

    def teardown(self) -> None:
        anyio.run(self.store.close)
        anyio.run(self.observer.close)
        shutil.rmtree(self.tmp, ignore_errors=True)


StoreMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestStoreMachine = StoreMachine.TestCase
