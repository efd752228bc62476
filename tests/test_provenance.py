"""Provenance: every reply records its seed, the provider's request id and a hash of the
exact request; a value fed into a message is described without being stored."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from fault_server import FaultServer, Reply
from test_session_support import DEADLINE

from cm_notebook.model import Message, MessageMetadata, ToolCall
from cm_notebook.provenance import canonical_request, describe_value, request_hash
from cm_notebook.providers.anthropic import AnthropicEventTranslator
from cm_notebook.providers.base import ChatRequest, Finish, ToolSpec
from cm_notebook.providers.local import LocalProvider
from cm_notebook.providers.openai import OpenAIProvider
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def test_a_reply_records_seed_request_id_and_the_hash_of_its_exact_request(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    fake = ScriptedProvider(["Hello.", "Again."])
    session = new_session("provenance", provider=fake, system="Be brief.")
    reply = session.send("Hi", seed=7, temperature=0.2).result(DEADLINE)
    meta = reply.metadata
    assert meta.seed == 7
    assert meta.request_id == "scripted-1"
    assert meta.request_hash == request_hash(fake.last_request, "scripted", "scripted")
    assert meta.request_hash is not None
    assert meta.request_hash.startswith("sha256:")
    assert len(meta.request_hash) == len("sha256:") + 64
    # What was hashed is what was asked: the system prompt, the message, the parameters.
    asked = json.loads(canonical_request(fake.last_request, "scripted", "scripted"))
    assert [m["content"] for m in asked["messages"]] == ["Be brief.", "Hi"]
    assert asked["params"] == {"seed": 7, "temperature": 0.2}
    # Stored with the message.
    path = data_dir / "contexts" / session.id / "messages" / f"{reply.id}.json"
    stored = json.loads(path.read_text())["metadata"]
    assert (stored["seed"], stored["request_id"]) == (7, "scripted-1")
    assert stored["request_hash"] == meta.request_hash
    # Without a seed the reply says so; the next request has its own id.
    second = session.send("Again").result(DEADLINE)
    assert second.metadata.seed is None
    assert second.metadata.request_id == "scripted-2"
    assert second.metadata.request_hash != meta.request_hash


def test_the_same_request_hashes_the_same_and_any_change_differs(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session("hashes", provider=ScriptedProvider())
    # Alike arms with a seed of their own: without one, each would be given its own.
    alike = {"temperature": 0, "seed": 1}
    comparison = session.fan_out(
        "Name a colour.",
        [alike, alike, {"temperature": 1.0, "seed": 1}, {"system": "Pirate.", "seed": 1}],
    ).result(DEADLINE)
    hashes = [session.get(str(r.message_id)).metadata.request_hash for r in comparison.results]
    assert hashes[0] == hashes[1]
    assert len({hashes[0], hashes[2], hashes[3]}) == 3


def test_the_hash_is_canonical() -> None:
    a = ChatRequest(messages=[Message(role="user", content="x")], params={"a": 1, "b": 2})
    b = ChatRequest(messages=[Message(role="user", content="x")], params={"b": 2, "a": 1})
    assert request_hash(a, "p", "m") == request_hash(b, "p", "m")
    assert request_hash(a, "p", "m") != request_hash(a, "p", "other-model")
    # Message ids and times are not what was asked: they do not enter the hash.
    assert "created_at" not in canonical_request(a, "p", "m")


@pytest.mark.anyio
async def test_openai_compatible_servers_give_their_completion_id(
    fault_server: FaultServer,
) -> None:
    fault_server.script([Reply("Hello there.")])
    provider = OpenAIProvider("gpt-test", base_url=fault_server.url, timeout=5.0)
    try:
        request = ChatRequest(messages=[Message(role="user", content="Hi")])
        chunks = [chunk async for chunk in provider.stream(request)]
    finally:
        await provider.aclose()
    finish = chunks[-1]
    assert isinstance(finish, Finish)
    assert finish.request_id == "chatcmpl-fault"


def test_anthropic_gives_its_message_id() -> None:
    translator = AnthropicEventTranslator()
    events = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_01Prov",
                "type": "message",
                "role": "assistant",
                "model": "claude-test",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 3, "output_tokens": 1},
            },
        },
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 2},
        },
        {"type": "message_stop"},
    ]
    chunks = [chunk for event in events for chunk in translator.feed(event)]
    finish = chunks[-1]
    assert isinstance(finish, Finish)
    assert finish.request_id == "msg_01Prov"


@pytest.mark.anyio
async def test_the_bundled_model_gives_its_completion_id() -> None:
    provider = LocalProvider(n_ctx=2048)
    request = ChatRequest(messages=[Message(role="user", content="Hi")], params={"max_tokens": 3})
    chunks = [chunk async for chunk in provider.stream(request)]
    finish = chunks[-1]
    assert isinstance(finish, Finish)
    assert finish.request_id
    assert finish.request_id.startswith("chatcmpl")


def test_a_value_is_described_by_type_short_repr_and_hash() -> None:
    described = describe_value("x" * 500)
    assert described.startswith("str 'xxxx")
    assert len(described) < 100
    assert described == describe_value("x" * 500)
    assert described != describe_value("x" * 501)  # the hash is of the whole value
    assert describe_value(3).startswith("int 3 sha256:")
    key = "sk-" + "A1b2C3d4" * 6
    assert key not in describe_value({"key": key})

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    assert describe_value(Broken()).startswith("Broken <Broken> sha256:")


def test_a_secret_the_short_repr_would_cut_is_redacted_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Cut first, a secret loses the shape (or the whole value) redaction knows, and its
    # start was kept: here 26 of a key's 33 characters, and 57 of a 64-character token.
    key = "Zq81x0Lm3Pv7Rt2Wn5Yb9Kc4Hd6Jf0Gs1"
    described = describe_value({"model": "gpt-4o", "api_key": key})
    assert key[:8] not in described
    assert "[REDACTED]" in described
    token = "9f8e7d6c5b4a39281706f5e4d3c2b1a0" * 2
    monkeypatch.setenv("MY_SERVICE_TOKEN", token)
    assert token[:8] not in describe_value(token)
    assert token[:8] not in describe_value(["x" * 30, token])


def _plain_canonical(request: ChatRequest, provider: str, model: str) -> str:
    # The definition, written the obvious way: the whole body through json.dumps.
    body = {
        "provider": provider,
        "model": model,
        "messages": [
            {
                "role": m.role,
                "content": m.content,
                "tool_calls": [
                    {"id": c.id, "name": c.name, "arguments": c.arguments} for c in m.tool_calls
                ],
                "tool_call_id": m.tool_call_id,
            }
            for m in request.messages
        ],
        "tools": [
            {"name": t.name, "description": t.description, "parameters": t.parameters}
            for t in request.tools
        ],
        "params": {k: v for k, v in request.params.items() if k != "model"},
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def test_the_canonical_request_is_the_whole_body_as_canonical_json_also_when_reused() -> None:
    call = ToolCall(id="c1", name="weather", arguments={"city": "Zürich", "days": [1, 2]})
    messages = [
        Message(role="system", content="Be brief."),
        Message(role="user", content='Quotes " and \\ and ünïcode and \n lines'),
        Message(role="assistant", content="", tool_calls=[call]),
        Message(role="tool", content="sunny", tool_call_id="c1"),
    ]
    tools = [ToolSpec(name="weather", description="Forecast.", parameters={"type": "object"})]
    params = {"temperature": 0.5, "seed": 3, "model": "m", "stop": ["\n"]}
    request = ChatRequest(messages=messages, tools=tools, params=params)
    assert canonical_request(request, "scripted", "m") == _plain_canonical(request, "scripted", "m")
    # The same objects again (as a session reuses them turn after turn), then changed in
    # place: the text always follows the messages as they are now.
    assert canonical_request(request, "scripted", "m") == _plain_canonical(request, "scripted", "m")
    messages[1].content = "changed"
    messages[2].tool_calls[0].arguments["city"] = "Bern"
    changed = canonical_request(request, "scripted", "m")
    assert changed == _plain_canonical(request, "scripted", "m")
    assert "changed" in changed
    assert "Bern" in changed


def test_the_hash_fed_incrementally_is_the_hash_of_the_whole_canonical_request() -> None:
    # A conversation grows turn by turn, forks, and repeats a request: each hash must be
    # that of the whole canonical text, whichever earlier request it continues.
    def expected(request: ChatRequest) -> str:
        text = canonical_request(request, "p", "m")
        return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()

    system = Message(role="system", content="Be brief.")
    path: list[Message] = [system]
    seen = set()
    for turn in range(12):
        path = [*path, Message(role="user", content=f"question {turn}")]
        request = ChatRequest(messages=list(path), params={"seed": turn})
        assert request_hash(request, "p", "m") == expected(request)
        seen.add(request_hash(request, "p", "m"))
        path = [*path, Message(role="assistant", content=f"answer {turn}")]
    assert len(seen) == 12
    # A fork from the middle shares a prefix with the main line, then differs.
    fork = [*path[:7], Message(role="user", content="another question")]
    request = ChatRequest(messages=fork)
    assert request_hash(request, "p", "m") == expected(request)
    # The same messages in other objects, a shorter request and an empty one.
    copies = [m.model_copy() for m in path]
    for messages in (copies, path[:3], []):
        request = ChatRequest(messages=messages)
        assert request_hash(request, "p", "m") == expected(request)


def test_the_hash_covers_the_reasoning_sent_back_and_only_that() -> None:
    def request(thought: str, provider: str, model: str) -> ChatRequest:
        call = ToolCall(id="c1", name="w", arguments={"city": "Paris"}, result="sunny")
        block = {"type": "thinking", "thinking": thought, "signature": "sig"}
        metadata = MessageMetadata(
            provider=provider,
            model=model,
            reasoning=thought,
            reasoning_field="reasoning_content",
            reasoning_blocks=[block],
        )
        messages = [
            Message(role="user", content="Weather?"),
            Message(role="assistant", tool_calls=[call], metadata=metadata),
        ]
        return ChatRequest(messages=messages, params={})

    for provider in ("openai", "local", "anthropic"):
        first, second = request("A", provider, "m"), request("B", provider, "m")
        # Sent back to the model that wrote it: a different request, a different hash.
        assert request_hash(first, provider, "m") != request_hash(second, provider, "m")
        text = canonical_request(first, provider, "m")
        digest = hashlib.sha256(text.encode()).hexdigest()
        assert request_hash(first, provider, "m") == "sha256:" + digest
        # Not sent to another model: the reasoning is no part of that request.
        assert request_hash(first, provider, "other") == request_hash(second, provider, "other")
