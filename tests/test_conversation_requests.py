"""What a request shows the model, built turn after turn from the recent paths' work."""

from __future__ import annotations

from cm_notebook._conversation import call_ids, for_request
from cm_notebook.model import Message, MessageStatus, ToolCall, ToolCallStatus


def reference(path: list[Message]) -> list[tuple[str, str, str | None]]:
    # The rules spelled out plainly: failed replies and empty interrupted ones are left
    # out; a call without a result before the next non-tool message (or the end) gets
    # one made up from its recorded result or an error.
    out: list[tuple[str, str, str | None]] = []
    pending: dict[str, str] = {}
    for m in path:
        hidden = m.status is MessageStatus.ERROR or (
            m.role == "assistant"
            and m.status is MessageStatus.INTERRUPTED
            and not m.content
            and not m.tool_calls
        )
        if hidden:
            continue
        if m.role == "tool" and m.tool_call_id in pending:
            del pending[m.tool_call_id]
        elif pending and m.role != "tool":
            out += [("tool", text, call_id) for call_id, text in pending.items()]
            pending = {}
        out.append((m.role, m.content, m.tool_call_id))
        for call in m.tool_calls:
            pending[call.id] = call.result or "error: no result was recorded for this call"
    out += [("tool", text, call_id) for call_id, text in pending.items()]
    return out


def shown(messages: list[Message]) -> list[tuple[str, str, str | None]]:
    return [(m.role, m.content, m.tool_call_id) for m in messages]


def test_requests_built_turn_after_turn_follow_the_rules() -> None:
    path: list[Message] = []

    def add(**fields: object) -> None:
        parent = path[-1].id if path else None
        path.append(Message.model_validate({"parent_id": parent, **fields}))
        for prompt in (None, "Be brief."):
            request = for_request(list(path), prompt)
            offset = 1 if prompt else 0
            assert shown(request[offset:]) == reference(path)

    for turn in range(6):
        add(role="user", content=f"q{turn}")
        if turn == 1:
            add(role="assistant", content="", status=MessageStatus.ERROR)
        if turn == 2:
            call = ToolCall(id=f"c{turn}", name="t", arguments={}, status=ToolCallStatus.DONE)
            add(role="assistant", content="", tool_calls=[call])  # open at the end, for now
            add(role="tool", content="result", tool_call_id=f"c{turn}")
        if turn == 3:
            calls = [
                ToolCall(id="lost", name="t", arguments={}, result="it failed"),
                ToolCall(id="never", name="t", arguments={}),
            ]
            add(role="assistant", content="", tool_calls=calls)  # never answered
        if turn == 4:
            add(role="assistant", content="", status=MessageStatus.INTERRUPTED)
        add(role="assistant", content=f"a{turn}")
    # A fork from the middle, then the main line again: each exact.
    fork = [*path[:5], Message(role="user", content="elsewhere", parent_id=path[4].id)]
    assert shown(for_request(fork, None)) == reference(fork)
    assert shown(for_request(list(path), None)) == reference(path)


def test_call_ids_follow_the_path_as_it_grows_and_forks() -> None:
    def asking(*ids: str) -> Message:
        return Message(
            role="assistant",
            content="",
            tool_calls=[ToolCall(id=i, name="add", arguments={}) for i in ids],
        )

    path = [Message(role="user", content="hi"), asking("a", "b")]
    assert call_ids(path) == {"a", "b"}
    longer = [*path, Message(role="tool", content="1", tool_call_id="a"), asking("c")]
    assert call_ids(longer) == {"a", "b", "c"}
    assert call_ids(path) == {"a", "b"}  # the shorter path is not changed by the longer
    fork = [*path, asking("d")]
    assert call_ids(fork) == {"a", "b", "d"}
    assert call_ids([asking("x")]) == {"x"}
    assert call_ids([]) == frozenset()


def test_the_system_message_is_equal_in_every_request() -> None:
    # The caches that continue the previous request's work compare the request's
    # messages: a system message made anew each time must still compare equal, or the
    # whole conversation is gone over again on every turn.
    path = [Message(role="user", content="hi")]
    first, second = for_request(path, "Be brief."), for_request(path, "Be brief.")
    assert first[0] == second[0]
    assert (first[0].role, first[0].content) == ("system", "Be brief.")
    assert for_request(path, "Be long.")[0] != first[0]
