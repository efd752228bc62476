"""`session.export()` and `ContextSession.from_export()`: a context as a document and back,
from Python, through real files on disk."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from test_export import _DIE_WHILE_IMPORTING

from cm_notebook import ContextSession, tool
from cm_notebook.errors import (
    BranchNotFoundError,
    ContextExistsError,
    InvalidInputError,
    StateError,
)
from cm_notebook.export import ExportDocument, is_unfinished_import, to_json, to_markdown
from cm_notebook.store import StoreWarning
from cm_notebook.testing import ScriptedProvider


def comparable(document: ExportDocument) -> dict[str, Any]:
    # All an import keeps: everything but when it was exported and the context's
    # updated_at (the store stamps every write).
    data = document.model_dump(mode="json", exclude={"exported_at"})
    del data["metadata"]["updated_at"]
    return data


@pytest.fixture
def rich(data_dir: Path) -> Iterator[ContextSession]:
    """Two branches, a rated reply and a system prompt."""
    model = ScriptedProvider().reply("Paris.").reply("Lyon, then.").reply("Marseille.")
    session = ContextSession.create(
        "Cities", data_dir=data_dir, provider=model, system="Be brief.", tags=["geo"]
    )
    session.send("Capital of France?").result()
    first_reply = session.history()[-1]
    session.send("And the second city?").result()
    session.branch("other", from_message=first_reply.id, system="Answer in one word.")
    session.send("Third city?", branch="other").result()
    session.rate(first_reply.id, thumbs="up", score=5, tags=["right"], note="good")
    with session:
        yield session


def test_export_then_from_export_makes_the_same_context_elsewhere(
    rich: ContextSession, tmp_path: Path
) -> None:
    document = rich.export()
    assert sorted(document.metadata.branches) == ["main", "other"]
    assert len(document.messages) == 6
    assert list(document.scores) == [rich.history("main")[1].id]
    target = tmp_path / "elsewhere"
    with ContextSession.from_export(document, data_dir=target) as copy:
        assert copy.id == rich.id
        assert comparable(copy.export()) == comparable(document)
        assert [m.content for m in copy.history("other")] == [
            "Capital of France?",
            "Paris.",
            "Third city?",
            "Marseille.",
        ]


@pytest.mark.parametrize("form", ["path", "str path", "text", "bytes", "decoded"])
def test_from_export_reads_a_file_its_text_or_its_decoded_json(
    rich: ContextSession, tmp_path: Path, form: str
) -> None:
    document = rich.export()
    text = document.to_json()
    assert text == to_json(document)
    saved = tmp_path / "cities.json"
    saved.write_text(text, encoding="utf-8")
    source: Any = {
        "path": saved,
        "str path": str(saved),
        "text": text,
        "bytes": text.encode(),
        "decoded": json.loads(text),
    }[form]
    with ContextSession.from_export(source, data_dir=tmp_path / "elsewhere") as copy:
        assert comparable(copy.export()) == comparable(document)


def test_a_file_with_a_byte_order_mark_imports(rich: ContextSession, tmp_path: Path) -> None:
    saved = tmp_path / "bom.json"
    saved.write_bytes(b"\xef\xbb\xbf" + rich.export().to_json().encode())
    with ContextSession.from_export(saved, data_dir=tmp_path / "elsewhere") as copy:
        assert copy.history()[0].content == "Capital of France?"


def test_a_taken_id_is_refused_with_what_to_do_and_new_id_imports_a_copy_beside_it(
    rich: ContextSession, data_dir: Path
) -> None:
    document = rich.export()
    before = comparable(rich.export())
    with pytest.raises(ContextExistsError) as refused:
        ContextSession.from_export(document, data_dir=data_dir)
    assert refused.value.existing == rich.id
    assert str(refused.value).endswith(
        f": open it with ContextSession.open({rich.id!r}), or import this copy beside it "
        "with new_id=True"
    )
    assert comparable(rich.export()) == before  # the context there is untouched
    with ContextSession.from_export(document, data_dir=data_dir, new_id=True) as copy:
        assert copy.id != rich.id
        assert [m.content for m in copy.history("main")] == [
            m.content for m in rich.history("main")
        ]
    assert len(ContextSession.list(data_dir)) == 2


def test_an_import_killed_half_way_is_replaced(rich: ContextSession, tmp_path: Path) -> None:
    import subprocess

    exported = tmp_path / "export.json"
    document = rich.export()
    # Killed as it writes the message the dying store waits for (named "t1" there).
    doomed = document.messages[2].id
    exported.write_text(document.to_json(), encoding="utf-8")
    script = tmp_path / "die.py"
    script.write_text(_DIE_WHILE_IMPORTING.replace('"t1"', repr(doomed)))
    target = tmp_path / "target"
    killed = subprocess.run([sys.executable, str(script), str(target), str(exported)])
    assert killed.returncode == -9
    (half,) = ContextSession.list(target)
    assert is_unfinished_import(half)
    with ContextSession.from_export(exported, data_dir=target) as copy:
        assert comparable(copy.export()) == comparable(document)
        assert not is_unfinished_import(copy.metadata)


@pytest.mark.parametrize(
    ("source", "says"),
    [
        ("missing.json", "there is no file 'missing.json': give the path of a JSON file"),
        ("{not json", "the export is not valid JSON"),
        (b'{"format": "other"}', "not a cm_notebook export"),
        ({"format": "cm_notebook.export"}, "invalid cm_notebook export"),
        (42, "cannot import a value of type int: give the path of a JSON file"),
    ],
)
def test_what_is_not_an_export_is_refused_and_nothing_is_written(
    data_dir: Path, source: object, says: str
) -> None:
    with pytest.raises(InvalidInputError, match=says.replace("(", r"\(")):
        ContextSession.from_export(source, data_dir=data_dir)  # type: ignore[arg-type]
    assert ContextSession.list(data_dir) == []


def test_a_file_that_is_not_an_export_is_named_in_the_error(data_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"title": "caf\xe9"}')
    other = tmp_path / "other.json"
    other.write_text('{"messages": []}')
    for path, says in [
        (folder, "is a folder"),
        (latin, "is not UTF-8 text"),
        (other, f"{other}: not a cm_notebook export"),
    ]:
        with pytest.raises(InvalidInputError, match=says):
            ContextSession.from_export(path, data_dir=data_dir)
    assert ContextSession.list(data_dir) == []


def test_options_are_checked_before_anything_is_written(
    rich: ContextSession, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere"
    with pytest.raises(TypeError, match="colour"):
        ContextSession.from_export(rich.export(), data_dir=target, colour="red")  # type: ignore[call-arg]
    assert ContextSession.list(target) == []


def test_an_import_under_way_elsewhere_is_not_replaced(
    rich: ContextSession, tmp_path: Path
) -> None:
    import subprocess

    exported = tmp_path / "export.json"
    document = rich.export()
    exported.write_text(document.to_json(), encoding="utf-8")
    script = tmp_path / "pause.py"
    script.write_text(
        _DIE_WHILE_IMPORTING.replace('"t1"', repr(document.messages[2].id)).replace(
            "os.kill(os.getpid(), 9)", "print('paused', flush=True); sys.stdin.readline()"
        )
    )
    target = tmp_path / "target"
    with subprocess.Popen(
        [sys.executable, str(script), str(target), str(exported)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as first:
        assert first.stdout is not None
        assert first.stdin is not None
        assert first.stdout.readline().startswith(b"paused")
        with pytest.raises(StateError, match="being imported by another process now"):
            ContextSession.from_export(exported, data_dir=target)
        first.stdin.write(b"go on\n")
        first.stdin.flush()
        assert first.wait() == 0
    with ContextSession.open(rich.id, data_dir=target) as done:
        assert comparable(done.export()) == comparable(document)


def test_one_branch_exports_alone(rich: ContextSession, tmp_path: Path) -> None:
    document = rich.export("other")
    assert document.branch == "other"
    assert list(document.metadata.branches) == ["other"]
    assert [m.content for m in document.messages] == [m.content for m in rich.history("other")]
    assert document.to_markdown() == to_markdown(document)
    assert "Marseille." in document.to_markdown()
    with ContextSession.from_export(document, data_dir=tmp_path / "b") as alone:
        assert alone.metadata.active_branch == "other"
    with pytest.raises(BranchNotFoundError, match="'nope'"):
        rich.export("nope")
    with pytest.raises(InvalidInputError):
        rich.export("../main")


@tool
def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def with_approvals(data_dir: Path) -> ContextSession:
    """A context where `add` is allowed for the context, after two decisions on main and
    one on a side branch."""
    model = (
        ScriptedProvider()
        .tool_call("add", {"a": 1, "b": 2})
        .reply("3")
        .tool_call("add", {"a": 2, "b": 2})
        .reply("4")
        .tool_call("add", {"a": 5, "b": 5})
        .reply("10")
    )
    session = ContextSession.create("Sums", data_dir=data_dir, provider=model, tools=[add])

    async def decide() -> None:
        turn = session.send("1+2?")
        [call] = await turn.wait_for_approval()
        session.approve(call.id, arguments={"a": 1, "b": 20}, remember="context")
        await turn
        await session.send("2+2?")  # allowed: no one asked
        session.branch("side", from_message=session.history()[0].id)
        await session.send("5+5?", branch="side")

    anyio.run(decide)
    return session


def test_the_allowed_tools_and_the_approval_log_travel_with_the_context(
    data_dir: Path, tmp_path: Path
) -> None:
    with with_approvals(data_dir) as session:
        log = session.approval_log()
        assert [(r.by, r.remember) for r in log] == [
            ("user", "context"),
            ("allow-list", "context"),
            ("allow-list", "context"),
        ]
        document = session.export()
        side = session.export("side")
    assert document.approvals.allowed_tools == ["add"]
    assert document.approvals.log == log
    copy = ContextSession.from_export(
        document, data_dir=tmp_path / "copy", tools=[add], allow_tools=True
    )
    with copy:
        assert copy.allowed_tools() == {"session": [], "context": ["add"]}
        assert copy.approval_log() == log
        assert copy.approval_log()[0].edited_arguments == {"a": 1, "b": 20}
    # A branch's export keeps the decisions of its own turns only.
    assert [r.branch for r in side.approvals.log] == ["side"]
    assert side.approvals.allowed_tools == ["add"]


def test_a_context_without_approvals_exports_the_document_older_versions_read(
    rich: ContextSession,
) -> None:
    written = json.loads(rich.export().to_json())
    assert "approvals" not in written
    assert written["format_version"] == 1


def test_a_document_with_approvals_says_so_in_its_format_version(data_dir: Path) -> None:
    # Versions that read only format 1 refuse it with "upgrade", not as malformed.
    with with_approvals(data_dir) as session:
        assert json.loads(session.export().to_json())["format_version"] == 2


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda log, ids: log[0].update(message_id="nowhere"), "names message 'nowhere'"),
        (lambda log, ids: log[0].update(message_id=ids["user"]), "names a user message"),
    ],
)
def test_an_approval_log_naming_messages_that_are_not_replies_is_refused(
    data_dir: Path, tmp_path: Path, change: Any, says: str
) -> None:
    with with_approvals(data_dir) as session:
        data = json.loads(session.export().to_json())
    ids = {"user": data["messages"][0]["id"]}
    change(data["approvals"]["log"], ids)
    with pytest.raises(InvalidInputError, match=says):
        ContextSession.from_export(data, data_dir=tmp_path / "copy")
    assert ContextSession.list(tmp_path / "copy") == []


def test_an_allowed_tool_that_is_not_a_name_is_refused(data_dir: Path, tmp_path: Path) -> None:
    with with_approvals(data_dir) as session:
        data = json.loads(session.export().to_json())
    data["approvals"]["allowed_tools"] = [""]
    with pytest.raises(InvalidInputError, match="tool must be a tool's name"):
        ContextSession.from_export(data, data_dir=tmp_path / "copy")


def test_an_import_allows_no_tool_unless_asked_to_and_says_so(
    data_dir: Path, tmp_path: Path
) -> None:
    # A file from someone else must not decide what runs here without asking.
    with with_approvals(data_dir) as session:
        document = session.export()
    note = (
        "the export allowed add to run without asking in its context; not here, where "
        "each call asks for a decision: pass allow_tools=True to allow the same, or "
        "session.allow(name, scope='context')"
    )
    with pytest.warns(UserWarning, match="allow_tools=True") as warned:
        copy = ContextSession.from_export(document, data_dir=tmp_path / "copy", tools=[add])
    assert [str(w.message) for w in warned] == [note]
    with copy:
        assert copy.allowed_tools() == {"session": [], "context": []}
        assert copy.approval_log() == document.approvals.log  # the record is kept


def test_the_command_line_import_allows_tools_only_with_allow_tools(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cm_notebook.cli import main

    with with_approvals(data_dir) as session:
        exported = tmp_path / "e.json"
        exported.write_text(session.export().to_json(), encoding="utf-8")
    plain, allowing = tmp_path / "plain", tmp_path / "allowing"
    assert main(["--data-dir", str(plain), "import", str(exported)]) == 0
    assert capsys.readouterr().err == (
        "cm-notebook: note: the export allowed add to run without asking in its context; "
        "not here, where each call asks for a decision: import with --allow-tools to "
        "allow the same\n"
    )
    assert main(["--data-dir", str(allowing), "import", str(exported), "--allow-tools"]) == 0
    assert capsys.readouterr().err == ""
    for folder, allowed in [(plain, []), (allowing, ["add"])]:
        with ContextSession.open(session.id, data_dir=folder) as copy:
            assert copy.allowed_tools()["context"] == allowed
            assert len(copy.approval_log()) == 3


def test_a_damaged_allow_list_leaves_the_export_whole_with_a_warning(
    data_dir: Path,
) -> None:
    with with_approvals(data_dir) as session:
        assert session.signal_log_path is not None
        allowed = session.signal_log_path.parent.parent / "approvals" / "allowed.json"
        allowed.write_text("{broken")
        with pytest.warns(StoreWarning, match="the export carries no allowed tools"):
            document = session.export()
    assert document.approvals.allowed_tools == []
    assert len(document.approvals.log) == 3
    assert len(document.messages) == 12


def test_options_a_context_cannot_be_opened_with_leave_no_import_behind(
    rich: ContextSession, tmp_path: Path
) -> None:
    target = tmp_path / "elsewhere"
    with pytest.raises(InvalidInputError, match="max_tool_rounds"):
        ContextSession.from_export(rich.export(), data_dir=target, max_tool_rounds=0)
    assert ContextSession.list(target) == []
    with ContextSession.from_export(rich.export(), data_dir=target) as copy:
        assert copy.id == rich.id


@pytest.mark.parametrize("form", ["text", "bytes"])
def test_json_text_with_a_byte_order_mark_imports(
    rich: ContextSession, tmp_path: Path, form: str
) -> None:
    text = "\ufeff" + rich.export().to_json()
    source = text if form == "text" else text.encode()
    with ContextSession.from_export(source, data_dir=tmp_path / "elsewhere") as copy:
        assert copy.id == rich.id


def test_tool_names_no_tool_can_have_are_left_out_of_the_export_with_a_warning(
    data_dir: Path,
) -> None:
    with with_approvals(data_dir) as session:
        assert session.signal_log_path is not None
        allowed = session.signal_log_path.parent.parent / "approvals" / "allowed.json"
        allowed.write_text(json.dumps({"tools": ["add", "t" * 201]}))
        with pytest.warns(StoreWarning, match="names tools no tool can have"):
            document = session.export()
    assert document.approvals.allowed_tools == ["add"]
