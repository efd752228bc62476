"""Every JSON the package reads is bounded in size and depth: a clear error, never a
traceback, and a refused edit of a tool call leaves the call pending and answerable."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_session_support import DEADLINE, Recorder, entered, seen

from cm_notebook import _json
from cm_notebook.approvals import ApprovalDesk, Decision, PendingCall
from cm_notebook.cli import main
from cm_notebook.errors import (
    CorruptDataError,
    InvalidInputError,
    MigrationError,
    ToolArgumentsError,
)
from cm_notebook.events import ErrorReported, ToolApprovalRequested
from cm_notebook.export import export_context, parse_export, to_json
from cm_notebook.fsm import State
from cm_notebook.migrate import read_v1
from cm_notebook.model import ContextMetadata, Message, MessageMetadata, ToolCall, ToolCallStatus
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool

DEEP = 100_000


def deep_text(depth: int = DEEP) -> str:
    """``{"a": [[[...1...]]]}``: a JSON object whose one argument nests ``depth`` deep."""
    return '{"a": ' + "[" * depth + "1" + "]" * depth + "}"


def deep_value(depth: int = DEEP) -> dict[str, Any]:
    """The same, already parsed (built without recursion)."""
    inner: Any = 1
    for _ in range(depth):
        inner = [inner]
    return {"a": inner}


@tool
def echo(a: Any) -> str:
    """Say what a is."""
    return f"got {a!r}"


def approval_session(data_dir: Path, fake: ScriptedProvider) -> ContextSession:
    return ContextSession.create(provider=fake, data_dir=data_dir, tools=[echo])


@pytest.mark.parametrize("arguments", [deep_text(), deep_value(), deep_text(150)])
def test_a_refused_edit_leaves_the_call_pending_then_approve_works(
    data_dir: Path, arguments: Any
) -> None:
    fake = ScriptedProvider(strict=True).tool_call("echo", {"a": 1}).reply("Done.")
    session = approval_session(data_dir, fake)
    try:
        recorder = Recorder(session)
        turn = session.send("Go")
        recorder.wait(seen(ToolApprovalRequested))
        recorder.wait(entered(State.AWAITING_TOOL_APPROVAL))
        with pytest.raises(ToolArgumentsError, match="nested deeper than 100 levels"):
            session.approve("call_1", arguments=arguments)
        assert [c.id for c in session.pending_tool_calls] == ["call_1"]
        assert session.state is State.AWAITING_TOOL_APPROVAL
        session.approve("call_1", arguments={"a": 2})
        assert turn.result(DEADLINE).content == "Done."
    finally:
        session.close()
    assert "got 2" in next(m.content for m in fake.requests[-1].messages if m.role == "tool")


def test_a_refused_edit_leaves_the_call_pending_then_deny_works(data_dir: Path) -> None:
    fake = ScriptedProvider(strict=True).tool_call("echo", {"a": 1}).reply("Fine.")
    session = approval_session(data_dir, fake)
    try:
        recorder = Recorder(session)
        turn = session.send("Go")
        recorder.wait(seen(ToolApprovalRequested))
        with pytest.raises(ToolArgumentsError, match="characters"):
            session.approve("call_1", arguments=json.dumps({"a": "x" * 1_000_001}))
        session.deny("call_1", reason="not now")
        assert turn.result(DEADLINE).content == "Fine."
    finally:
        session.close()
    told = next(m.content for m in fake.requests[-1].messages if m.role == "tool")
    assert "not now" in told


@pytest.mark.anyio
async def test_the_desk_decides_all_or_nothing() -> None:
    desk = ApprovalDesk()
    first = desk.register("main", "m1", ToolCall(id="c1", name="echo"))
    desk.register("main", "m1", ToolCall(id="c2", name="echo"))

    def refuse_the_second(pending: PendingCall) -> Decision:
        if pending.call.id == "c2":
            raise RecursionError("an unexpected failure while deciding")
        return Decision(True)

    with pytest.raises(RecursionError):
        desk.decide(None, lambda call_id: False, None, refuse_the_second)
    assert [c.id for c in desk.calls()] == ["c1", "c2"]  # both still pending, in order
    assert not first.done()
    assert [c.id for c in desk.decide("c1", lambda call_id: False, None, refuse_the_second)] == [
        "c1"
    ]
    assert (await first).approved


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (deep_text(), "nested deeper than 100 levels"),
        ('{"a": "' + "x" * 1_000_001 + '"}', "characters"),
    ],
)
def test_a_models_oversized_arguments_are_a_failed_call_it_can_read(
    data_dir: Path, arguments: str, expected: str
) -> None:
    fake = ScriptedProvider(strict=True).tool_call("echo", arguments).reply("I will send less.")
    session = ContextSession.create(provider=fake, data_dir=data_dir, tools=[echo], approval="auto")
    try:
        recorder = Recorder(session)
        assert session.send("Go").result(DEADLINE).content == "I will send less."
        history = session.history()
    finally:
        session.close()
    call = history[1].tool_calls[0]
    assert call.status is ToolCallStatus.FAILED
    assert call.arguments == {}
    told = next(m.content for m in fake.requests[1].messages if m.role == "tool")
    assert told.startswith("error:")
    assert expected in told
    assert [e for e in recorder.of(ErrorReported) if e.kind == "internal"] == []


def test_models_refuse_over_deep_free_form_json() -> None:
    deep = deep_value()
    for build in (
        lambda: ToolCall(id="c", name="echo", arguments=deep),
        lambda: MessageMetadata.model_validate({"parameters": deep}),
        lambda: MessageMetadata.model_validate({"imported": deep}),
        lambda: ContextMetadata(extra=deep),
        lambda: Message(role="user", metadata={"note": deep}),
    ):
        with pytest.raises(ValueError, match="nested deeper than 100 levels"):
            build()
    assert ContextMetadata(extra=deep_value(50)).extra == deep_value(50)


@pytest.mark.anyio
async def test_a_message_too_large_to_read_back_is_refused_before_it_is_written(
    data_dir: Path,
) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        huge = Message(role="tool", content="a" * _json.MAX_TEXT_CHARS, tool_call_id="t1")
        with pytest.raises(InvalidInputError, match=r"beyond the 268,435,456 .* nothing was"):
            await store.append_message("c1", huge, branch="main")
        del huge
        fits = Message(role="user", content="a" * 1000)
        await store.append_message("c1", fits, branch="main")
    async with FileStore(data_dir) as store:
        assert [m.id for m in await store.page("c1")] == [fits.id]


@pytest.mark.anyio
async def test_over_deep_store_files_are_reported_by_path(data_dir: Path) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1"))
        message = Message(role="user", content="hi")
        await store.append_message("c1", message, branch="main")
        # Folded: the file is now the only copy (a recent one would be restored from the
        # journal instead).
        await store.compact("c1")
    path = next((data_dir / "contexts" / "c1" / "messages").glob("*.json"))
    raw = json.loads(path.read_text())
    path.write_text(json.dumps(raw)[:-1] + ', "deep": ' + deep_text()[6:-1] + "}")
    async with FileStore(data_dir) as store:
        with pytest.raises(CorruptDataError, match="nested deeper than 100 levels") as caught:
            await store.get_message("c1", message.id)
    assert caught.value.path == path


def test_imports_refuse_over_deep_or_oversized_json(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="nested deeper than 100 levels"):
        parse_export(deep_text())
    document = {"format": "cm_notebook.export", "metadata": {"extra": deep_value()}, "messages": []}
    with pytest.raises(InvalidInputError, match="nested deeper than 100 levels"):
        parse_export(document)
    with pytest.raises(InvalidInputError, match="characters"):
        parse_export(" " * (_json.MAX_TEXT_CHARS + 1))
    source = tmp_path / "contexts.json"
    source.write_text(deep_text())
    # A v1 file as a whole may nest deeper (each record is held to 100 on its own).
    with pytest.raises(MigrationError, match="nested deeper than 500 levels"):
        read_v1(source)


def test_the_cli_reports_an_over_deep_import_in_one_line(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "export.json"
    source.write_text(deep_text())
    code = main(["--data-dir", str(data_dir), "import", str(source)])
    err = capsys.readouterr().err
    assert code != 0
    assert "nested deeper than 100 levels" in err
    assert "Traceback" not in err


@pytest.mark.anyio
async def test_an_export_within_the_limits_round_trips(data_dir: Path) -> None:
    async with FileStore(data_dir) as store:
        await store.create_context(ContextMetadata(id="c1", extra={"nested": deep_value(90)}))
        text = to_json(await export_context(store, "c1"))
    assert parse_export(text).metadata.extra == {"nested": deep_value(90)}


def test_a_tool_returning_an_over_deep_value_fails_readably(data_dir: Path) -> None:
    @tool
    def nest() -> list[Any]:
        """Return something absurd."""
        return deep_value()["a"]

    fake = ScriptedProvider(strict=True).tool_call("nest").reply("Odd.")
    session = ContextSession.create(provider=fake, data_dir=data_dir, tools=[nest], approval="auto")
    try:
        assert session.send("Go").result(DEADLINE).content == "Odd."
        call = session.history()[1].tool_calls[0]
    finally:
        session.close()
    assert call.status is ToolCallStatus.FAILED
    told = next(m.content for m in fake.requests[1].messages if m.role == "tool")
    assert "nested deeper than 100 levels" in told


def test_over_deep_settings_and_parameters_are_refused_before_anything_is_written(
    data_dir: Path,
) -> None:
    with pytest.raises(InvalidInputError, match="nested deeper than 100 levels"):
        ContextSession.create(
            provider=ScriptedProvider(), provider_options=deep_value(), data_dir=data_dir
        )
    assert ContextSession.list(data_dir) == []
    fake = ScriptedProvider(parameters={"stop", "extra_body"})
    session = ContextSession.create(provider=fake, data_dir=data_dir)
    try:
        with pytest.raises(InvalidInputError, match="nested deeper than 100 levels"):
            session.send("Hi", extra_body=deep_value())
        assert session.history() == []
        assert session.send("Hi", stop=["\n"]).result(DEADLINE).status.value == "complete"
    finally:
        session.close()


@pytest.mark.anyio
async def test_call_ids_claimed_by_one_turn_are_not_given_to_another() -> None:
    # Two fan-out arms whose models both said "call_1" finish their replies before
    # either has put its call on the desk: each must still get an id of its own, or
    # the second would replace the first on the desk and that turn would wait forever.
    desk = ApprovalDesk()
    [one] = desk.claim_ids([ToolCall(id="call_1", name="echo")], set())
    [two] = desk.claim_ids([ToolCall(id="call_1", name="echo")], set())
    assert one.id == "call_1"
    assert two.id.startswith("call_1_")
    desk.register("a", "m1", one)
    desk.register("b", "m2", two)
    desk.release_ids([one.id, two.id])
    assert [c.id for c in desk.calls()] == [one.id, two.id]
    # Ids on the desk stay taken; released ids that left it are free again.
    [three] = desk.claim_ids([ToolCall(id="call_1", name="echo")], set())
    assert three.id not in {one.id, two.id}
    desk.release_ids([three.id])
    desk.drop(one.id)
    assert desk.claim_ids([ToolCall(id="call_1", name="echo")], set())[0].id == "call_1"
