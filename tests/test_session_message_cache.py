"""A turn reads only the messages it has not seen: the ones this session wrote or
read before are not read from disk again, yet other writers' changes are seen."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import EllipsisType

import anyio

from cm_notebook._session_messages import KEPT_PATHS, MessageCache
from cm_notebook.model import ContextMetadata, Message, MessageStatus, ToolCall, ToolCallStatus
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.store.paths import context_dir, message_path
from cm_notebook.testing import ScriptedProvider

DEADLINE = 30


def file_of(data_dir: Path, session: ContextSession, message_id: str) -> Path:
    return message_path(context_dir(data_dir, session.id), message_id)


def test_a_turn_does_not_read_the_messages_it_has_seen_again(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider().reply("first answer").reply("second answer")
    session = new_session(provider=fake)
    first = session.send("first question").result(DEADLINE)
    session.send("second question").result(DEADLINE)
    # Take the first exchange's files away: a request that read them again would miss
    # them (unreadable files are skipped).
    question = session.history()[0]
    for message_id in (question.id, first.id):
        file_of(data_dir, session, message_id).unlink()
    session.send("third question").result(DEADLINE)
    seen = [(m.role, m.content) for m in fake.last_request.messages]
    assert seen == [
        ("user", "first question"),
        ("assistant", "first answer"),
        ("user", "second question"),
        ("assistant", "second answer"),
        ("user", "third question"),
    ]


def test_messages_another_writer_added_are_read(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    fake = ScriptedProvider().reply("one")
    session = new_session(provider=fake)
    reply = session.send("hello").result(DEADLINE)

    async def write_elsewhere() -> None:
        async with FileStore(data_dir) as other:  # as another process would
            question = Message(role="user", parent_id=reply.id, content="from elsewhere")
            answer = Message(role="assistant", parent_id=question.id, content="answered there")
            for message, head in ((question, reply.id), (answer, question.id)):
                await other.append_message(session.id, message, branch="main", expected_head=head)

    anyio.run(write_elsewhere)
    session.send("and here").result(DEADLINE)
    contents = [m.content for m in fake.last_request.messages]
    assert contents == ["hello", "one", "from elsewhere", "answered there", "and here"]


def test_a_message_whose_tool_calls_are_open_is_read_again(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    # A reply whose tool call has no result yet can still be rewritten (by the process
    # running the call): it is never served from memory.
    fake = ScriptedProvider().reply("first").reply("second")
    session = new_session(provider=fake)
    asking = Message(
        role="assistant",
        content="let me look",
        tool_calls=[ToolCall(id="call-1", name="lookup", status=ToolCallStatus.RUNNING)],
    )

    # The conversation went on past it (a settled round ends on a reply, so a send
    # does not settle this one: see cm_notebook._dead_rounds).
    after = Message(role="user", parent_id=asking.id, content="meanwhile")

    async def ask_elsewhere() -> None:
        async with FileStore(data_dir) as other:
            await other.append_message(session.id, asking, branch="main", expected_head=None)
            await other.append_message(session.id, after, branch="main", expected_head=asking.id)

    anyio.run(ask_elsewhere)
    session.send("while it runs").result(DEADLINE)
    open_call = fake.last_request.messages[0].tool_calls[0]
    assert open_call.status is ToolCallStatus.RUNNING

    async def finish_elsewhere() -> None:
        done = ToolCall(id="call-1", name="lookup", status=ToolCallStatus.DONE, result="42")
        async with FileStore(data_dir) as other:
            await other.update_message(session.id, asking.model_copy(update={"tool_calls": [done]}))

    anyio.run(finish_elsewhere)
    session.send("and now").result(DEADLINE)
    call = fake.last_request.messages[0].tool_calls[0]
    assert (call.status, call.result) == (ToolCallStatus.DONE, "42")


def test_the_cache_keeps_only_messages_of_the_paths_in_use() -> None:
    cache = MessageCache()
    for branch in range(KEPT_PATHS * 4):
        ids = []
        for n in range(50):
            message = Message(role="user", content=f"{branch}/{n}")
            cache.remember(message)
            ids.append(message.id)
        cache.used(f"b{branch}", ids)
    # Only the last KEPT_PATHS paths' messages (plus some slack) are held.
    assert len(cache) <= 2 * KEPT_PATHS * 50 + 64
    found, missing = cache.lookup(ids)
    assert not missing
    assert len(found) == 50


def test_only_settled_messages_are_kept() -> None:
    cache = MessageCache()
    streaming = Message(role="assistant", status=MessageStatus.STREAMING)
    pending = Message(role="assistant", tool_calls=[ToolCall(id="c", name="t")])
    denied = Message(
        role="assistant",
        tool_calls=[ToolCall(id="c", name="t", status=ToolCallStatus.DENIED, result="no")],
    )
    for message in (streaming, pending, denied):
        cache.remember(message)
    found, missing = cache.lookup([streaming.id, pending.id, denied.id])
    assert list(found) == [denied.id]
    assert missing == [streaming.id, pending.id]


def test_a_path_that_moved_back_or_forked_is_served_as_it_is_now(tmp_path: Path) -> None:
    # Each call continues from the settled beginning of the branch's last path only
    # while the new path still begins with it.
    async def scenario() -> None:
        async with FileStore(tmp_path) as store:
            metadata = await store.create_context(ContextMetadata(id="c1"))
            cache = MessageCache()

            async def add(content: str, head: str | None) -> str:
                message = Message(role="user", parent_id=head, content=content)
                await store.append_message(metadata.id, message, branch="main", expected_head=head)
                return message.id

            async def contents() -> list[str]:
                ids, messages = await cache.path_messages(store, metadata.id, "main")
                assert [m.id for m in messages] == ids
                return [m.content for m in messages]

            first = await add("one", None)
            second = await add("two", first)
            assert await contents() == ["one", "two"]
            third = await add("three", second)
            assert await contents() == ["one", "two", "three"]
            await store.set_branch_head(metadata.id, "main", first, expected_head=third)
            assert await contents() == ["one"]
            other = await add("two, again", first)
            assert await contents() == ["one", "two, again"]
            await add("three, again", other)
            assert await contents() == ["one", "two, again", "three, again"]
            cache.forget_path("main")
            assert await contents() == ["one", "two, again", "three, again"]
            # Replaced by a path of the same length between two calls.
            head = (await store.path(metadata.id, "main"))[-1]
            await store.set_branch_head(metadata.id, "main", first, expected_head=head)
            await add("three, once more", await add("two, once more", first))
            assert await contents() == ["one", "two, once more", "three, once more"]

    anyio.run(scenario)


class _CountingStore(FileStore):
    """A FileStore that counts the paths it is asked for."""

    path_calls = 0

    async def path(self, context_id: str, branch: str | None = None) -> list[str]:
        type(self).path_calls += 1
        return await super().path(context_id, branch)


def test_a_turn_on_kept_messages_is_given_its_path_without_a_store_read(tmp_path: Path) -> None:
    # A turn builds on its own head; a message's parent never changes, so when every
    # message from the head up to the branch's last path is kept, the path is theirs.
    async def scenario() -> None:
        async with _CountingStore(tmp_path) as store:
            metadata = await store.create_context(ContextMetadata(id="c1"))
            cache = MessageCache()

            async def add(content: str, head: str | None, branch: str = "main") -> str:
                message = Message(role="user", parent_id=head, content=content)
                await store.append_message(metadata.id, message, branch=branch, expected_head=head)
                cache.remember(message)
                return message.id

            async def contents(head: str, branch: str = "main") -> list[str]:
                ids, messages = await cache.path_messages(store, metadata.id, branch, head)
                assert [m.id for m in messages] == ids
                assert ids == await store.path(metadata.id, branch)  # the store agrees
                return [m.content for m in messages]

            first = await add("one", None)
            assert await contents(first) == ["one"]
            second = await add("two", first)
            third = await add("three", second)
            before = _CountingStore.path_calls
            _ids, messages = await cache.path_messages(store, metadata.id, "main", third)
            assert [m.content for m in messages] == ["one", "two", "three"]
            assert _CountingStore.path_calls == before  # served from the kept messages
            messages.pop()  # the caller's list is its own
            assert await contents(third) == ["one", "two", "three"]

            # A fork from the root on another branch: walked up to the root.
            await store.create_branch(metadata.id, "other", head=first)
            fork = await add("two, elsewhere", first, branch="other")
            assert await contents(fork, "other") == ["one", "two, elsewhere"]

            # A message this cache never saw (another writer's) is read from the store.
            elsewhere = Message(role="assistant", parent_id=third, content="from elsewhere")
            await store.append_message(metadata.id, elsewhere, branch="main", expected_head=third)
            after = await add("four", elsewhere.id)
            before = _CountingStore.path_calls
            _ids, messages = await cache.path_messages(store, metadata.id, "main", after)
            assert _CountingStore.path_calls == before + 1
            assert [m.content for m in messages] == [
                "one",
                "two",
                "three",
                "from elsewhere",
                "four",
            ]

    anyio.run(scenario)


class _RacedStore(FileStore):
    """A FileStore after whose append of a user message starting with "RACE" another
    writer (a FileStore of its own, which claims nothing) appends to the same branch."""

    async def append_message(
        self,
        context_id: str,
        message: Message,
        *,
        branch: str | None,
        expected_head: str | EllipsisType | None = ...,
    ) -> Message:
        stored = await super().append_message(
            context_id, message, branch=branch, expected_head=expected_head
        )
        if message.role == "user" and message.content.startswith("RACE"):
            async with FileStore(self.data_dir) as other:
                foreign = Message(role="user", parent_id=message.id, content="FOREIGN")
                await other.append_message(context_id, foreign, branch=branch)
        return stored


def test_a_request_read_from_the_store_ends_at_the_turns_own_head(data_dir: Path) -> None:
    # A session opened afresh keeps nothing, so its first request's path comes from
    # the store; another writer has meanwhile moved the branch past the user's message.
    # The model is sent the path ending at that message, not the other writer's.
    fake = ScriptedProvider()
    first = ContextSession.create("t", data_dir=data_dir, provider=fake)
    first.send("q1").result(30)
    context_id = first.id
    first.close()
    session = ContextSession.open(context_id, store=_RacedStore(data_dir), provider=fake)
    try:
        reply = session.send("RACE q2").result(30)
        sent = [m.content for m in fake.last_request.messages if m.role != "system"]
        assert sent[0] == "q1"
        assert sent[-1] == "RACE q2"
        assert "FOREIGN" not in sent
        # The reply went to a branch of its own, forked at its prompt: that branch's
        # conversation is the one the model was sent.
        history = session.history("main-conflict-1")
        assert history[-1].id == reply.id
        assert [m.content for m in history[:-1]] == sent
    finally:
        session.close()
