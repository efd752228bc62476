"""Migration from v1, the pure layer: reading every fixture and converting it, no store."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from cm_notebook.errors import InvalidInputError, MigrationError
from cm_notebook.ids import validate_branch_name, validate_context_id, validate_message_id
from cm_notebook.migrate import (
    ConvertedContext,
    check_converted,
    convert,
    load_v1,
    parse_timestamp,
    parse_v1,
    read_v1,
)
from cm_notebook.migrate._toolcalls import NO_RESULT_REASON
from cm_notebook.model import Message, MessageStatus, ToolCallStatus

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
GOOD = sorted(p.name for p in FIXTURES.glob("*.json") if p.name != "unknown_shape.json")
UTC = timezone.utc


def converted(name: str) -> dict[str, ConvertedContext]:
    """Every convertible context of a fixture, by its cm_notebook id."""
    out = {}
    for ctx in load_v1(FIXTURES / name):
        if ctx.fatal is None:
            conv = convert(ctx)
            out[conv.metadata.id] = conv
    return out


def by_id(conv: ConvertedContext) -> dict[str, Message]:
    return {m.id: m for m in conv.messages}


def extra(message: Message) -> dict[str, Any]:
    """The metadata keys MessageMetadata does not declare (where v1 leftovers go)."""
    return message.metadata.model_extra or {}


@pytest.mark.parametrize("name", GOOD)
def test_every_fixture_converts_and_validates_in_memory(name: str) -> None:
    for ctx in load_v1(FIXTURES / name):
        if ctx.fatal is not None:
            continue
        conv = convert(ctx)
        assert check_converted(conv) == []
        assert convert(ctx).messages == conv.messages  # deterministic
        validate_context_id(conv.metadata.id)
        for message in conv.messages:
            validate_message_id(message.id)
        for branch in conv.metadata.branches:
            validate_branch_name(branch)


def test_contexts_list_keeps_ids_content_and_unknown_fields() -> None:
    source = read_v1(FIXTURES / "contexts_list.json")
    assert source.kind == "contexts.json"
    convs = converted("contexts_list.json")
    assert list(convs) == ["ctx-planning", "ctx-poem"]
    plan = convs["ctx-planning"]
    assert plan.metadata.title == "Trip planning"
    assert plan.metadata.created_at == datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
    assert plan.path("main") == ["m1", "m2", "m3", "m4", "m5"]
    assert [m.role for m in plan.messages] == ["system", "user", "assistant", "user", "assistant"]
    m3 = by_id(plan)["m3"]
    assert m3.content.startswith("Day 1: Alfama")
    assert m3.metadata.model == "gpt-4o-mini"
    assert m3.metadata.model_extra == {"v1_extra": {"tokens": 42}}
    assert plan.metadata.extra["v1_extra"] == {"model": "gpt-4o-mini"}
    assert plan.metadata.extra["v1_source_kind"] == "contexts.json"
    assert plan.metadata.extra["v1_updated_at"] == "2024-03-01T09:05:00+00:00"
    assert len(plan.metadata.extra["v1_source_sha256"]) == 64
    poem = convs["ctx-poem"]
    # +01:00 is converted to UTC, not dropped.
    assert poem.messages[0].created_at == datetime(2024, 3, 2, 9, 0, tzinfo=UTC)


def test_object_with_contexts_list() -> None:
    source = read_v1(FIXTURES / "contexts_object.json")
    assert source.kind == "contexts.json"
    assert source.notes == ["top-level fields not migrated: exported_by, version"]
    conv = converted("contexts_object.json")["ctx-object"]
    assert conv.metadata.tags == ["work", "draft"]
    assert [m.content for m in conv.messages] == [
        "Summarise the meeting notes.",
        "Three decisions were made.",
    ]


def test_branches_share_their_common_prefix() -> None:
    conv = converted("branches.json")["ctx-branches"]
    messages = by_id(conv)
    assert len(conv.messages) == 6  # nothing duplicated
    assert conv.copies == 0
    assert conv.path("main") == ["b1", "b2", "b3", "b4"]
    assert conv.path("alt") == ["b1", "b2", "b5", "b6"]
    assert messages["b5"].parent_id == "b2"
    assert conv.metadata.active_branch == "alt"
    assert conv.problems == []


def test_branch_that_contradicts_the_tree_gets_copies() -> None:
    conv = converted("branches.json")["ctx-inconsistent"]
    # main is active, so it keeps the originals; "reordered" skips i2, so i3 and i4
    # cannot be on it without copies.
    assert conv.path("main") == ["i1", "i2", "i3", "i4"]
    path = conv.path("reordered")
    assert path[0] == "i1"
    messages = by_id(conv)
    copies = [messages[i] for i in path[1:]]
    assert [c.content for c in copies] == ["Step two.", "Done two."]
    assert [extra(c)["v1_copied_from"] for c in copies] == ["i3", "i4"]
    assert {extra(c)["v1_branch"] for c in copies} == {"reordered"}
    assert conv.copies == 2
    assert len(conv.messages) == 6
    assert any("'reordered' does not follow the message tree" in n for n in conv.notes)
    # An invalid branch name is cleaned; an unknown id is reported and skipped.
    assert conv.path("feature-x") == ["i1", "i2"]
    assert conv.metadata.branches["feature-x"].description == "v1 branch 'feature/x'"
    assert conv.problems == ["branch 'feature/x' lists unknown message 'ghost'; skipped"]


def test_messages_outside_the_v1_branches_stay_reachable() -> None:
    conv = converted("branches.json")["ctx-partial-branches"]
    assert conv.path("retry") == ["q1", "q4"]
    assert conv.path("main") == ["q1", "q2", "q3"]
    assert conv.metadata.active_branch == "main"


def test_tool_calls_statuses_results_and_leftovers() -> None:
    conv = converted("tool_calls.json")["ctx-tools"]
    messages = by_id(conv)
    openai = {c.id: c for c in messages["t2"].tool_calls}
    assert messages["t2"].content == ""
    assert openai["call_paris"].arguments == {"city": "Paris"}
    assert openai["call_paris"].status is ToolCallStatus.DONE
    assert openai["call_paris"].result == '{"temp": 18}'  # from the tool message
    assert messages["t3"].role == "tool"
    assert messages["t3"].tool_call_id == "call_paris"
    flat = {c.id: c for c in messages["t7"].tool_calls}
    assert flat["flat_ok"].status is ToolCallStatus.DONE
    assert json.loads(flat["flat_ok"].result or "") == {"booked": True}
    pending = flat["flat_pending"]
    assert pending.status is ToolCallStatus.FAILED
    assert pending.reason == NO_RESULT_REASON
    assert pending.arguments == {"v1_arguments": "to: bob"}
    assert flat["flat_denied"].status is ToolCallStatus.DENIED
    assert flat["flat_denied"].reason == "too dangerous"
    assert flat["flat_error"].status is ToolCallStatus.FAILED
    assert flat["flat_error"].reason == "service unavailable"
    leftovers = extra(messages["t7"])
    assert leftovers["v1_tool_call_extra"]["flat_ok"] == {"duration_ms": 120}
    assert leftovers["v1_tool_call_extra"]["flat_pending"] == {"status": "pending"}
    assert leftovers["v1_unconverted_tool_calls"] == [{"arguments": {"x": 1}}]
    assert conv.problems == [
        "message #6: tool call #4 has no tool name; kept in metadata.v1_unconverted_tool_calls"
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1714550400, datetime(2024, 5, 1, 8, 0, tzinfo=UTC)),
        (1714550400.5, datetime(2024, 5, 1, 8, 0, 0, 500000, tzinfo=UTC)),
        (1714550400123, datetime(2024, 5, 1, 8, 0, 0, 123000, tzinfo=UTC)),
        (1714550400123456, datetime(2024, 5, 1, 8, 0, 0, 123456, tzinfo=UTC)),
        (1714550400123456789, datetime(2024, 5, 1, 8, 0, 0, 123457, tzinfo=UTC)),
        ("1714550400000", datetime(2024, 5, 1, 8, 0, tzinfo=UTC)),
        ("2024-05-01T08:00:00Z", datetime(2024, 5, 1, 8, 0, tzinfo=UTC)),
        ("2024-05-01T08:00:00", datetime(2024, 5, 1, 8, 0, tzinfo=UTC)),
        ("2024-05-01 10:00:00+02:00", datetime(2024, 5, 1, 8, 0, tzinfo=UTC)),
        ("Wed May 01 2024 10:00:00 GMT+0200 (CEST)", datetime(2024, 5, 1, 8, 0, tzinfo=UTC)),
        ("yesterday", None),
        ("", None),
        (True, None),
        (None, None),
        ([2024], None),
        (1e300, None),
    ],
)
def test_parse_timestamp(value: Any, expected: datetime | None) -> None:
    parsed = parse_timestamp(value)
    if expected is None:
        assert parsed is None
    else:
        assert parsed is not None
        assert abs((parsed - expected).total_seconds()) < 1e-6
        assert parsed.tzinfo is not None


def test_timestamps_fixture() -> None:
    conv = converted("timestamps.json")["ctx-times"]
    messages = by_id(conv)
    assert conv.metadata.created_at == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert messages["s1"].created_at == datetime(2024, 5, 1, 8, 0, 0, 123000, tzinfo=UTC)
    assert messages["s4"].created_at == datetime(2024, 5, 1, 8, 0, 3, tzinfo=UTC)
    assert messages["s5"].created_at == datetime(2024, 5, 1, 8, 0, 4, tzinfo=UTC)
    assert messages["s7"].created_at == datetime(2024, 5, 1, 8, 0, 6, tzinfo=UTC)
    s8 = messages["s8"].created_at
    assert s8 == datetime(2024, 5, 1, 8, 0, 7, 250000, tzinfo=UTC)
    # Unreadable and missing timestamps inherit the previous message's; the raw text stays.
    assert messages["s9"].created_at == s8
    assert extra(messages["s9"])["v1_timestamp"] == "yesterday-ish"
    assert messages["s10"].created_at == s8
    assert "2 message(s) without a readable timestamp got the previous one" in conv.notes


def test_missing_ids_are_derived_deterministically() -> None:
    first = load_v1(FIXTURES / "missing_ids.json")
    second = load_v1(FIXTURES / "missing_ids.json")
    a, b = convert(first[0]), convert(second[0])
    assert a.metadata.id == b.metadata.id
    assert [m.id for m in a.messages] == [m.id for m in b.messages]
    assert a.metadata.id.startswith("c")
    assert a.path("main") == [m.id for m in a.messages]
    dup = convert(first[1])
    ids = [m.id for m in dup.messages]
    assert ids[0] == "same"
    assert ids[1] != "same"
    assert extra(dup.messages[1])["v1_id"] == "same"
    assert ids[2] == "17"  # numeric ids are fine as text


def test_hostile_ids_are_replaced_and_kept_as_v1_id() -> None:
    convs = list(converted("hostile_ids.json").values())
    hostile, reserved = convs
    assert hostile.metadata.extra["v1_id"] == "../../etc"
    assert "/" not in hostile.metadata.id
    assert {extra(m)["v1_id"] for m in hostile.messages} == {
        "../../passwd",
        "con",
        "a/b",
    }
    assert set(hostile.metadata.branches) == {"main", "ok"}
    assert hostile.metadata.branches["main"].description == "v1 branch '../main'"
    assert hostile.metadata.active_branch == "main"
    assert len(hostile.path("main")) == 2
    assert reserved.metadata.extra["v1_id"] == "CON"


def test_message_ids_that_differ_only_in_case_are_made_distinct_files() -> None:
    # "A" and "a" name one file on Windows and macOS: the second would overwrite the first.
    (ctx,) = parse_v1(
        [
            {
                "id": "twins",
                "messages": [
                    {"id": "A", "role": "user", "content": "first"},
                    {"id": "a", "role": "assistant", "content": "second"},
                ],
            }
        ]
    ).contexts
    conv = convert(ctx)
    ids = [m.id for m in conv.messages]
    assert ids[0] == "A"
    assert len({i.lower() for i in ids}) == 2
    assert [m.content for m in conv.messages] == ["first", "second"]
    assert extra(conv.messages[1])["v1_id"] == "a"
    assert any("'a' replaced by" in note for note in conv.notes)


def test_malformed_messages_are_reported_and_the_rest_kept() -> None:
    contexts = load_v1(FIXTURES / "malformed.json")
    assert [c.fatal is None for c in contexts] == [True, False, False, True]
    assert contexts[1].fatal == "context #1 is a str, not an object"
    assert contexts[2].fatal == "'messages' is a int, not a list"
    with pytest.raises(InvalidInputError, match="not an object"):
        convert(contexts[1])
    conv = convert(contexts[0])
    ids = ["g1", "bad-role", "bad-content", "g2", "odd-role", "err", "g3"]
    assert [m.id for m in conv.messages] == ids
    assert conv.problems[:2] == [
        "message #1 has no role; kept as 'user'",
        "message #3 is a str, not an object; skipped",
    ]
    assert "unknown role 'narrator'" in conv.problems[2]
    assert "message #2: its content is a number; kept as text" in conv.notes[0]
    messages = by_id(conv)
    # Nothing a message says is dropped for an odd role or content.
    assert (messages["bad-role"].role, messages["bad-role"].content) == ("user", "who said this?")
    assert (messages["bad-content"].role, messages["bad-content"].content) == ("assistant", "42")
    assert extra(messages["bad-content"])["v1_extra"] == {"content": 42}
    assert messages["g2"].parent_id == "bad-content"  # the string in between is bridged
    assert messages["odd-role"].role == "user"
    assert extra(messages["odd-role"])["v1_role"] == "narrator"
    err = messages["err"]
    assert (err.role, err.status, err.metadata.error) == (
        "assistant",
        MessageStatus.ERROR,
        "Rate limit exceeded",
    )
    g3 = messages["g3"]
    assert (g3.role, g3.content) == ("user", "good three via aliases")
    assert g3.created_at == datetime(2024, 8, 1, 0, 0, 7, tzinfo=UTC)
    assert g3.metadata.model_extra == {"v1_role": "human", "v1_extra": {"liked": True}}


def test_roles_and_contents_of_other_json_types_are_kept() -> None:
    record = {
        "id": "types",
        "messages": [
            {"role": 7, "content": {"a": 1}},
            {"role": "user", "content": 3.5},
            {"role": ["assistant"], "content": False},
        ],
    }
    conv = convert(parse_v1([record]).contexts[0])
    assert check_converted(conv) == []
    first, second, third = conv.messages
    assert (first.role, first.content, extra(first)["v1_role"]) == ("user", "", 7)
    assert extra(first)["v1_content_parts"] == [{"a": 1}]
    assert (second.role, second.content, extra(second)["v1_extra"]) == (
        "user",
        "3.5",
        {"content": 3.5},
    )
    assert (third.role, third.content, extra(third)["v1_role"]) == ("user", "false", ["assistant"])
    assert conv.problems == [
        "message #0 has unknown role 7; kept as 'user' (the original is in metadata.v1_role)",
        "message #2 has unknown role ['assistant']; kept as 'user' (the original is in "
        "metadata.v1_role)",
    ]


def test_unicode_and_content_parts() -> None:
    conv = converted("unicode.json")["ctx-unicode"]
    assert conv.metadata.title == "Ünïcödé 🎉 — 日本語のタイトル"
    messages = by_id(conv)
    assert messages["u1"].content == "Привет! 👋 مرحبا שלום"
    assert messages["u2"].content == "Hello 🌍"
    parts = extra(messages["u2"])["v1_content_parts"]
    assert parts[1]["type"] == "image_url"  # nothing lost
    assert messages["u3"].content == "part one\n\npart two 🧩"
    assert "\u200b" in messages["u4"].content
    assert conv.path("café") == ["u1", "u4"]


def test_empty_contexts() -> None:
    convs = converted("empty_context.json")
    assert set(convs) == {"ctx-empty", "ctx-no-messages-field"}
    for conv in convs.values():
        assert conv.messages == []
        assert conv.metadata.branches["main"].head is None
    assert convs["ctx-no-messages-field"].notes == [
        "the context has no 'messages' field; migrated as empty"
    ]


def test_localstorage_export() -> None:
    source = read_v1(FIXTURES / "localstorage.json")
    assert source.kind == "localstorage"
    convs = converted("localstorage.json")
    pirate, current = convs["chat-1714550400000"], convs["1714636800000"]
    assert pirate.metadata.system_prompt == "You are a pirate. Answer in pirate speak."
    assert pirate.metadata.created_at == datetime(2024, 5, 1, 8, 0, tzinfo=UTC)
    assert pirate.metadata.extra["v1_extra"] == {"model": "llama3"}
    assert pirate.metadata.extra["v1_store_version"] == 2
    assert "v1_current_chat" not in pirate.metadata.extra
    assert current.metadata.extra["v1_current_chat"] is True  # numeric currentChatId
    assert [m.id for m in current.messages] == ["1714636801000", "1714636802000"]


def test_raw_localstorage_dump() -> None:
    source = read_v1(FIXTURES / "localstorage_raw.json")
    assert source.kind == "localstorage"
    assert source.name.endswith("[cm-chat-store]")
    assert [c.id for c in source.contexts] == ["raw-chat"]
    assert source.contexts[0].flags == {"v1_store_version": 0, "v1_current_chat": True}


@pytest.mark.parametrize(
    ("data", "kind", "ids"),
    [
        ({"a1": {"title": "A", "messages": []}}, "contexts.json", ["a1"]),
        ({"id": "solo", "messages": []}, "contexts.json", ["solo"]),
        ({"chats": [{"id": "c1", "messages": []}]}, "localstorage", ["c1"]),
        ({"state": json.dumps({"chats": [{"id": "c2"}]})}, "localstorage", ["c2"]),
        ([], "contexts.json", []),
    ],
)
def test_liberal_shapes(data: Any, kind: str, ids: list[str]) -> None:
    source = parse_v1(data)
    assert source.kind == kind
    assert [c.id for c in source.contexts] == ids


def test_unreadable_sources_raise_migration_error(tmp_path: Path) -> None:
    with pytest.raises(MigrationError, match=r"not_json.txt is not JSON .*expected a v1"):
        read_v1(FIXTURES / "not_json.txt")
    with pytest.raises(MigrationError, match="a JSON object with settings, user; expected"):
        read_v1(FIXTURES / "unknown_shape.json")
    with pytest.raises(MigrationError, match="cannot read"):
        read_v1(tmp_path / "absent.json")
    with pytest.raises(MigrationError, match="a JSON int; expected"):
        parse_v1(3)
    (tmp_path / "latin1.json").write_bytes(b'["caf\xe9"]')
    with pytest.raises(MigrationError, match="not UTF-8"):
        read_v1(tmp_path / "latin1.json")


def test_branches_that_would_make_a_loop() -> None:
    data = [
        {
            "id": "loop",
            "messages": [{"id": f"x{i}", "role": "user", "content": str(i)} for i in range(4)],
            "branches": {"a": ["x3", "x1"], "b": ["x1", "x3"], "c": ["x2", "x2", "x2"]},
        }
    ]
    conv = convert(parse_v1(data).contexts[0])
    assert check_converted(conv) == []
    assert [by_id(conv)[i].content for i in conv.path("c")][-3:] == ["2", "2", "2"]


def _acyclic(conv: ConvertedContext) -> bool:
    parents = {m.id: m.parent_id for m in conv.messages}
    for start in parents:
        seen = set()
        node: str | None = start
        while node is not None:
            if node in seen:
                return False
            seen.add(node)
            node = parents[node]
    return True


_ref = st.one_of(st.sampled_from([f"k{i}" for i in range(8)]), st.none(), st.integers(0, 3))


@settings(max_examples=150, deadline=None)
@example(ids=["k1", "k2"], branches={"a": ["k1", "k1", "k2"]}, active=None)
@given(
    ids=st.lists(st.sampled_from([None, "../x", *(f"k{i}" for i in range(8))]), max_size=8),
    branches=st.dictionaries(st.text(max_size=6), st.lists(_ref, max_size=8), max_size=4),
    active=st.one_of(st.none(), st.text(max_size=6)),
)
def test_any_branch_layout_converts_to_a_valid_tree(
    ids: list[str | None], branches: dict[str, list[Any]], active: str | None
) -> None:
    messages = [
        {"id": mid, "role": "user" if n % 2 else "assistant", "content": f"c{n}"}
        for n, mid in enumerate(ids)
    ]
    record = {"id": "prop", "messages": messages, "branches": branches, "active_branch": active}
    conv = convert(parse_v1([record]).contexts[0])
    assert _acyclic(conv)
    assert check_converted(conv) == []
    reachable = {mid for name in conv.metadata.branches for mid in conv.path(name)}
    assert reachable == {m.id for m in conv.messages}  # nothing invisible
    assert len(conv.originals) == len(messages)


@pytest.mark.parametrize(
    ("raw_id", "note"),
    [
        ("", "id is empty; a new id was made"),
        ([1, 2], "id [1, 2] is not text or a number; a new id was made"),
    ],
)
def test_an_unusable_id_is_reported_as_what_it_is(raw_id: object, note: str) -> None:
    (ctx,) = parse_v1([{"id": raw_id, "messages": [{"role": "user", "content": "hi"}]}]).contexts
    assert note in ctx.notes
    assert validate_context_id(convert(ctx).metadata.id)  # a new id was made
