"""The ``cm-notebook`` command, in-process through ``main()`` and as the installed script."""

from __future__ import annotations

import argparse
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
from terminal import in_a_terminal

from cm_notebook import ContextSession
from cm_notebook.cli import COMMANDS, command, main
from cm_notebook.store.base import Store
from cm_notebook.testing import ScriptedProvider

FIXTURES = Path(__file__).parent / "fixtures" / "v1"
SCRIPT = Path(sys.executable).parent / "cm-notebook"


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A copy of the branches fixture, so that backups land in tmp_path."""
    folder = tmp_path / "src"
    folder.mkdir()
    return Path(shutil.copy2(FIXTURES / "branches.json", folder / "contexts.json"))


def run(capsys: pytest.CaptureFixture[str], data_dir: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data_dir), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, fragment: str) -> None:
    lines = err.strip().splitlines()
    assert lines[-1].startswith("cm-notebook: error: "), err
    assert fragment in lines[-1]
    assert "Traceback" not in err


def test_ls_on_an_empty_data_dir(capsys: pytest.CaptureFixture[str], data_dir: Path) -> None:
    code, out, err = run(capsys, data_dir, "ls")
    assert (code, err) == (0, "")
    assert out == f"No contexts in {data_dir}.\n"


def test_migrate_ls_show(capsys: pytest.CaptureFixture[str], data_dir: Path, source: Path) -> None:
    code, out, _ = run(capsys, data_dir, "migrate", str(source))
    assert code == 0
    assert "2 migrated, 1 partial, 0 skipped, 0 failed" in out
    assert "Backup of the source: " in out
    assert len(list(source.parent.glob("contexts.json.v1-backup-*"))) == 1

    code, out, _ = run(capsys, data_dir, "ls")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "TITLE", "MESSAGES", "BRANCHES", "UPDATED"]
    table = {row.split()[0]: row for row in rows}
    assert set(table) == {"ctx-branches", "ctx-inconsistent", "ctx-partial-branches"}
    assert "Shared prefix" in table["ctx-branches"]
    assert table["ctx-inconsistent"].split()[-4:-2] == ["6", "3"]  # messages, branches

    code, out, _ = run(capsys, data_dir, "show", "ctx-branches")
    assert code == 0
    assert out.startswith("Shared prefix\nid ctx-branches · branch alt · 4 message(s)\n")
    assert "] user\n    Another one?\n" in out
    assert "Why blue?" not in out

    code, out, _ = run(capsys, data_dir, "show", "ctx-branches", "--branch", "main", "-n", "1")
    assert code == 0
    assert "... 3 earlier message(s) not shown" in out
    assert "It is calm." in out
    assert "Blue." not in out


def test_export_import_round_trip(
    capsys: pytest.CaptureFixture[str], data_dir: Path, source: Path, tmp_path: Path
) -> None:
    run(capsys, data_dir, "migrate", str(source), "--no-backup")
    target = tmp_path / "out" / "export.json"
    target.parent.mkdir()
    code, out, err = run(capsys, data_dir, "export", "ctx-inconsistent", "-o", str(target))
    assert (code, out, err) == (0, "", f"wrote {target}\n")
    document = json.loads(target.read_text(encoding="utf-8"))
    # A folder as the output: the file is named after the context in it.
    code, out, err = run(capsys, data_dir, "export", "ctx-inconsistent", "-o", str(target.parent))
    assert (code, err) == (0, f"wrote {target.parent / 'ctx-inconsistent.json'}\n")
    again = json.loads((target.parent / "ctx-inconsistent.json").read_text())
    assert again["messages"] == document["messages"]
    code, out, err = run(
        capsys, data_dir, "export", "ctx-branches", "-f", "markdown", "-o", str(target.parent)
    )
    assert (target.parent / "ctx-branches.md").read_text().startswith("# Shared prefix\n")
    assert document["format"] == "cm_notebook.export"
    assert len(document["messages"]) == 6

    code, out, _ = run(capsys, data_dir, "export", "ctx-inconsistent")
    assert json.loads(out)["messages"] == document["messages"]

    other = tmp_path / "other"
    code, out, _ = run(capsys, other, "import", str(target))
    assert code == 0
    assert out == (
        "imported ctx-inconsistent ('Branch that contradicts the tree'): "
        "6 message(s), 3 branch(es)\n"
    )
    _, shown_there, _ = run(capsys, other, "show", "ctx-inconsistent", "-b", "reordered")
    _, shown_here, _ = run(capsys, data_dir, "show", "ctx-inconsistent", "-b", "reordered")
    assert shown_there == shown_here

    code, _, err = run(capsys, other, "import", str(target))
    assert code == 1
    assert_one_error_line(
        err,
        f"context 'ctx-inconsistent' is already in {other}: import this copy beside it "
        "with --new-id, or remove the one there first "
        f"(`cm-notebook --data-dir {shlex.quote(str(other))} rm ctx-inconsistent`)",
    )
    code, out, _ = run(capsys, other, "import", str(target), "--new-id")
    assert code == 0
    assert not out.startswith("imported ctx-inconsistent ")

    code, out, _ = run(capsys, data_dir, "export", "ctx-branches", "--format", "markdown")
    assert code == 0
    assert out.startswith("# Shared prefix\n")
    assert "- Branch: `alt` (other branches: `main`)" in out


def test_import_delegates_v1_files_to_migrate(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    v1 = Path(shutil.copy2(FIXTURES / "localstorage.json", tmp_path / "ls.json"))
    code, out, _ = run(capsys, data_dir, "import", str(v1))
    assert code == 0
    assert "(localstorage): 2 context(s); 2 migrated" in out
    _, out, _ = run(capsys, data_dir, "show", "chat-1714550400000")
    assert "system prompt: You are a pirate." in out


def test_import_writes_nothing_next_to_the_users_file(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "downloads"
    folder.mkdir()
    v1 = Path(shutil.copy2(FIXTURES / "localstorage.json", folder / "ls.json"))
    code, out, _ = run(capsys, data_dir, "import", str(v1))
    assert code == 0
    assert os.listdir(folder) == ["ls.json"]
    # The copy of the v1 data is kept in the data directory, and the report says where.
    (backup,) = (data_dir / "backups").iterdir()
    assert backup.name.startswith("ls.json.v1-backup-")
    assert backup.read_bytes() == v1.read_bytes()
    assert f"Backup of the source: {backup}" in out
    # v1 data given as a folder of per-context files: the same.
    files = Path(shutil.copytree(FIXTURES / "context_files", folder / "contexts"))
    code, out, _ = run(capsys, data_dir, "import", str(files), "--no-backup")
    assert code == 1  # one of the files is damaged, and reported
    assert "(context-files): 4 context(s); 2 migrated, 1 partial" in out
    assert sorted(os.listdir(folder)) == ["contexts", "ls.json"]
    assert len(os.listdir(data_dir / "backups")) == 1
    code, out, _ = run(capsys, data_dir, "import", "--help")
    assert code == 0
    assert "Nothing is written next to FILE" in " ".join(out.split())
    assert "<data dir>/backups" in out


def test_migrate_dry_run_and_failures(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    malformed = Path(shutil.copy2(FIXTURES / "malformed.json", tmp_path / "bad.json"))
    code, out, _ = run(capsys, data_dir, "migrate", str(malformed), "--dry-run")
    assert code == 1  # two contexts cannot be converted at all
    assert out.startswith("Dry run: ")
    assert "would be migrated" in out
    assert list(data_dir.iterdir()) == []
    assert list(tmp_path.glob("bad.json.v1-backup-*")) == []
    code, out, _ = run(capsys, data_dir, "migrate", str(malformed), "--no-backup")
    assert code == 1
    assert "problem: cannot convert: context #1 is a str, not an object" in out
    assert list(tmp_path.glob("bad.json.v1-backup-*")) == []


def test_rm(
    capsys: pytest.CaptureFixture[str],
    data_dir: Path,
    source: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run(capsys, data_dir, "migrate", str(source), "--no-backup")
    # pytest's stdin is not a terminal: a script must say --yes.
    code, _, err = run(capsys, data_dir, "rm", "ctx-branches")
    assert code == 2
    assert_one_error_line(err, "stdin is not a terminal. Pass --yes")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    code, out, _ = run(capsys, data_dir, "rm", "ctx-branches")
    assert code == 1
    assert out == (
        "Delete context ctx-branches ('Shared prefix', 6 message(s))? [y/N] Not deleted.\n"
    )
    monkeypatch.setattr(sys, "stdin", Terminal("y\n"))
    code, out, _ = run(capsys, data_dir, "rm", "ctx-branches")
    assert code == 0
    assert out.endswith("[y/N] deleted ctx-branches\n")  # a fake terminal echoes nothing
    code, out, _ = run(capsys, data_dir, "rm", "ctx-inconsistent", "--yes")
    assert (code, out) == (0, "deleted ctx-inconsistent\n")
    _, out, _ = run(capsys, data_dir, "ls")
    assert [row.split()[0] for row in out.splitlines()[1:]] == ["ctx-partial-branches"]
    code, _, err = run(capsys, data_dir, "rm", "ctx-branches", "--yes")
    assert code == 1
    assert_one_error_line(err, "no context 'ctx-branches'")


@pytest.mark.parametrize(
    ("argv", "code", "fragment"),
    [
        (["show", "nope"], 1, "no context 'nope'"),
        (["show", "../.."], 2, "context id '../..' is not valid"),
        (["rm", "../..", "--yes"], 2, "context id '../..' is not valid"),
        (["export", "nope"], 1, "no context 'nope'"),
        (["import", "{missing}"], 1, "No such file or directory"),
        (["import", "{not_json}"], 1, "is not valid JSON: Expecting value (line 1, column 1)"),
        (["import", "{unknown}"], 1, "is neither a cm_notebook export"),
        (["migrate", "{not_json}"], 1, "is not JSON"),
        (["migrate", "{unknown}"], 1, "expected a v1 contexts.json"),
        (["show", "x", "--limit", "0"], 2, "must be at least 1"),
        (["frob"], 2, "invalid choice: 'frob'"),
        ([], 2, "the following arguments are required: COMMAND"),
    ],
)
def test_errors_are_one_line_with_an_exit_code(
    capsys: pytest.CaptureFixture[str],
    data_dir: Path,
    tmp_path: Path,
    argv: list[str],
    code: int,
    fragment: str,
) -> None:
    names = {
        "missing": str(tmp_path / "missing.json"),
        "not_json": str(FIXTURES / "not_json.txt"),
        "unknown": str(FIXTURES / "unknown_shape.json"),
    }
    got, out, err = run(capsys, data_dir, *(a.format(**names) for a in argv))
    assert got == code
    assert out == ""
    assert_one_error_line(err, fragment)


def test_data_dir_from_the_environment(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CM_NOTEBOOK_DATA_DIR", str(tmp_path / "env-data"))
    assert main(["migrate", str(FIXTURES / "contexts_object.json"), "--no-backup"]) == 0
    assert (tmp_path / "env-data" / "contexts" / "ctx-object").is_dir()
    capsys.readouterr()
    assert main(["ls"]) == 0
    assert "ctx-object" in capsys.readouterr().out


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("cm-notebook ")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("ls", "show", "export", "import", "migrate", "rm", "--data-dir"):
        assert name in out


@pytest.fixture
def hello_command() -> Iterator[None]:
    """A subcommand registered the way `demo` will be, removed afterwards."""

    def configure(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--name", default="world")

    @command("hello", "Say hello.", configure)
    async def hello(args: argparse.Namespace, store: Store) -> int:
        contexts = await store.list_contexts()
        print(f"hello {args.name}, {len(contexts)} context(s)")
        return 0

    try:
        yield
    finally:
        del COMMANDS["hello"]


@pytest.mark.usefixtures("hello_command")
def test_a_subcommand_is_one_registered_function(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    assert run(capsys, data_dir, "hello", "--name", "cm")[:2] == (0, "hello cm, 0 context(s)\n")


# -- the installed console script, in real child processes ---------------------------


def cli(data_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CM_NOTEBOOK_DATA_DIR": str(data_dir), "PYTHONIOENCODING": "utf-8"}
    return subprocess.run(
        [str(SCRIPT), *argv],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def test_console_script_end_to_end(data_dir: Path, tmp_path: Path) -> None:
    assert SCRIPT.exists(), "the package must be installed (make setup)"
    v1 = Path(shutil.copy2(FIXTURES / "unicode.json", tmp_path / "unicode.json"))
    done = cli(data_dir, "migrate", str(v1))
    assert done.returncode == 0, done.stderr
    assert "1 migrated" in done.stdout
    assert list(tmp_path.glob("unicode.json.v1-backup-*"))

    done = cli(data_dir, "ls")
    assert done.returncode == 0
    assert "ctx-unicode" in done.stdout
    assert "Ünïcödé 🎉" in done.stdout

    done = cli(data_dir, "show", "ctx-unicode", "--branch", "café")
    assert done.returncode == 0
    assert "Привет! 👋" in done.stdout
    assert "Zero-width" in done.stdout

    exported = tmp_path / "ctx.json"
    assert cli(data_dir, "export", "ctx-unicode", "-o", str(exported)).returncode == 0
    done = cli(data_dir, "rm", "ctx-unicode")  # stdin is not a terminal
    assert done.returncode == 2
    assert done.stderr.startswith("cm-notebook: error: refusing to delete")
    assert cli(data_dir, "rm", "ctx-unicode", "--yes").returncode == 0
    assert "ctx-unicode" not in cli(data_dir, "ls").stdout

    done = cli(data_dir, "import", str(exported))
    assert done.returncode == 0, done.stderr
    again = json.loads(cli(data_dir, "export", "ctx-unicode").stdout)
    before = json.loads(exported.read_text(encoding="utf-8"))
    assert again["messages"] == before["messages"]
    assert again["metadata"]["branches"] == before["metadata"]["branches"]

    done = cli(data_dir, "export", "ctx-unicode", "--format", "markdown")
    assert done.stdout.startswith("# Ünïcödé 🎉 — 日本語のタイトル\n")


@pytest.mark.parametrize(
    ("argv", "code", "fragment"),
    [
        (["show", "../.."], 2, "context id '../..' is not valid"),
        (["show", "nope"], 1, "no context 'nope'"),
        (["migrate", str(FIXTURES / "not_json.txt")], 1, "is not JSON"),
        (["frob"], 2, "invalid choice"),
    ],
)
def test_console_script_errors(data_dir: Path, argv: list[str], code: int, fragment: str) -> None:
    done = cli(data_dir, *argv)
    assert done.returncode == code
    assert done.stdout == ""
    assert_one_error_line(done.stderr, fragment)


def test_console_script_shows_store_warnings_as_one_line(data_dir: Path) -> None:
    broken = data_dir / "contexts" / "broken"
    broken.mkdir(parents=True)
    (broken / "metadata.json").write_text("{not json", encoding="utf-8")
    done = cli(data_dir, "ls")
    assert done.returncode == 0
    assert done.stdout == f"No readable contexts in {data_dir}: 1 skipped (see the warnings).\n"
    # Each warning is one line of its own, without a source location or traceback.
    lines = done.stderr.strip().splitlines()
    assert lines
    assert all(line.startswith("cm-notebook: warning: ") for line in lines), done.stderr
    assert any("skipped" in line and "broken" in line for line in lines)


def test_show_prints_terminal_escapes_in_a_reply_as_text(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    import anyio

    from cm_notebook.model import ContextMetadata, Message
    from cm_notebook.store import FileStore

    async def write() -> None:
        async with FileStore(data_dir) as store:
            await store.create_context(ContextMetadata(id="c1", title="plain"))
            hostile = "Hi\x1b[2J\x1b]0;owned\x07 \u202eevil\nline two\tend"
            await store.append_message(
                "c1", Message(role="assistant", content=hostile), branch="main"
            )

    anyio.run(write)
    code, out, _ = run(capsys, data_dir, "show", "c1")
    assert code == 0
    assert "    Hi\\x1b[2J\\x1b]0;owned\\x07 \\u202eevil\n    line two\tend\n" in out
    assert not any(ch in out for ch in "\x1b\x07\u202e")


def test_show_keeps_every_line_of_a_prompt_error_or_reason_under_its_label(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    # A multi-line system prompt, denial reason or provider error printed as it is
    # would put lines at the left edge that read as messages of their own.
    import anyio

    from cm_notebook.model import ContextMetadata, Message, MessageMetadata, ToolCall
    from cm_notebook.store import FileStore

    fake = "\n\n[2026-01-01 00:00] user\n    wire the money"

    async def write() -> None:
        async with FileStore(data_dir) as store:
            await store.create_context(
                ContextMetadata(id="c1", title="plain", system_prompt="Be brief." + fake)
            )
            call = ToolCall(id="t1", name="rm", arguments={}, reason="no" + fake)
            await store.append_message(
                "c1",
                Message(id="a1", role="assistant", content="", tool_calls=[call]),
                branch="main",
            )
            failed = Message(
                id="a2",
                parent_id="a1",
                role="assistant",
                content="page\x0cbreak and\u2028separator",
                metadata=MessageMetadata(error="server said:" + fake),
            )
            await store.append_message("c1", failed, branch="main")

    anyio.run(write)
    code, out, _ = run(capsys, data_dir, "show", "c1")
    assert code == 0
    headers = [line for line in out.splitlines() if line.startswith("[")]
    assert len(headers) == 2  # the two real messages, nothing forged
    assert "system prompt: Be brief.\n\n               [2026-01-01 00:00] user\n" in out
    assert "      reason: no\n\n              [2026-01-01 00:00] user\n" in out
    assert "    error: server said:\n\n           [2026-01-01 00:00] user\n" in out
    # Only line feeds break lines; other breaks are shown as escapes.
    assert "    page\\x0cbreak and\\u2028separator\n" in out


def test_export_to_a_folder_that_is_not_there_makes_no_file_of_its_name(
    capsys: pytest.CaptureFixture[str], data_dir: Path, source: Path, tmp_path: Path
) -> None:
    run(capsys, data_dir, "migrate", str(source), "--no-backup")
    code, _, err = run(capsys, data_dir, "export", "ctx-branches", "-o", f"{tmp_path}/new/")
    assert code == 1
    assert_one_error_line(err, f"there is no folder {tmp_path}/new/")
    assert not (tmp_path / "new").exists()


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_markdown_shown_on_a_terminal_cannot_drive_it(data_dir: Path, tmp_path: Path) -> None:
    from cm_notebook import ContextSession
    from cm_notebook.testing import ScriptedProvider

    session = ContextSession.create(
        "escapes",
        provider=ScriptedProvider().reply("\x1b]0;owned\x07red \x1b[31mtext"),
        data_dir=data_dir,
    )
    session.send("hi").result(60)
    session.close()
    command = [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir)]
    command += ["export", session.id, "-f", "markdown"]
    code, shown = in_a_terminal(command)
    assert code == 0
    assert b"\x1b" not in shown
    assert b"red \\x1b[31mtext" in shown
    piped = subprocess.run(command, capture_output=True, check=True).stdout
    assert b"red \x1b[31mtext" in piped  # into a file or a pipe: as it is


def test_ls_lines_up_titles_of_wide_characters(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    # A terminal shows CJK letters and emoji two columns wide, and a character it would
    # act on as its escape (\u202e, six columns): the columns after the title must
    # still line up.
    for title in ("東京の天気", "plain title", "🎯 goals", "Seed \u202etitle"):
        ContextSession.create(title, data_dir=data_dir, provider=ScriptedProvider()).close()
    code, out, _ = run(capsys, data_dir, "ls")
    assert code == 0

    def shown(text: str) -> int:  # columns on a terminal
        return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)

    header, *rows = out.splitlines()
    count_ends = shown(header[: header.index("MESSAGES") + len("MESSAGES")])
    for row in rows:  # "<id>  <title>  <messages>  <branches>  <updated>"
        through_count = row[: row.index("  0  ") + len("  0")]
        assert shown(through_count) == count_ends, out
