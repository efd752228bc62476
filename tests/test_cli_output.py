"""What `export` writes where: UTF-8 whatever the console, JSON a terminal cannot be
driven by, one file per branch in a folder; and the exit codes of invalid files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
from terminal import in_a_terminal

from cm_notebook.cli import main
from cm_notebook.model import ContextMetadata, Message
from cm_notebook.store import FileStore

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


def run(capsys: pytest.CaptureFixture[str], data_dir: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data_dir), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def command(data_dir: Path, *argv: str) -> list[str]:
    return [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir), *argv]


def a_context(data_dir: Path, title: str, content: str) -> None:
    async def write() -> None:
        async with FileStore(data_dir) as store:
            await store.create_context(ContextMetadata(id="c1", title=title))
            await store.append_message(
                "c1", Message(id="u1", role="user", content=content), branch="main"
            )

    anyio.run(write)


@pytest.mark.parametrize("encoding", ["ascii", "latin-1", "cp1252"])
@pytest.mark.parametrize("form", ["json", "markdown"])
def test_export_to_stdout_is_utf8_whatever_the_console_encoding(
    data_dir: Path, encoding: str, form: str
) -> None:
    a_context(data_dir, "Café ☕ notes", "naïve 🎯 question")
    env = {**os.environ, "PYTHONIOENCODING": encoding}
    done = subprocess.run(
        command(data_dir, "export", "c1", "-f", form),
        capture_output=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    text = done.stdout.decode("utf-8")  # not text with backslash escapes in it
    if form == "json":
        document = json.loads(text)
        assert document["metadata"]["title"] == "Café ☕ notes"
        assert document["messages"][0]["content"] == "naïve 🎯 question"
    else:
        assert text.startswith("# Café ☕ notes\n")
        assert "naïve 🎯 question" in text


@pytest.mark.skipif(sys.platform == "win32", reason="needs a pseudo-terminal")
def test_json_shown_on_a_terminal_is_json_that_cannot_drive_it(data_dir: Path) -> None:
    title = "Title \x9b2J\x9b31m \u202eevil\x7f"
    a_context(data_dir, title, "x \x9b31mred \u2028 and \u2066isolated")
    code, shown = in_a_terminal(command(data_dir, "export", "c1"))
    assert code == 0
    text = shown.decode("utf-8")
    assert not any(c in text for c in "\x9b\u202e\x7f\u2028\u2066")
    document = json.loads(text)  # still JSON, with the same values
    assert document["metadata"]["title"] == title
    assert document["messages"][0]["content"] == "x \x9b31mred \u2028 and \u2066isolated"
    piped = subprocess.run(command(data_dir, "export", "c1"), capture_output=True, check=True)
    assert "\u202e".encode() in piped.stdout  # into a file or a pipe: as it is


@pytest.mark.skipif(not Path("/dev/stdout").exists(), reason="no /dev/stdout")
@pytest.mark.parametrize("form", ["json", "markdown"])
def test_an_export_written_to_a_terminal_with_o_cannot_drive_it_either(
    data_dir: Path, form: str
) -> None:
    # -o /dev/stdout (or /dev/tty) on a terminal: shown as without -o, not as it is.
    title = "Title \x9b2J\x1b[31m \u202eevil\x7f"
    a_context(data_dir, title, "x \x9b31mred \u2028 and \u2066isolated")
    code, shown = in_a_terminal(command(data_dir, "export", "c1", "-f", form, "-o", "/dev/stdout"))
    assert code == 0
    text = shown.decode("utf-8")
    assert not any(c in text for c in "\x1b\x9b\u202e\x7f\u2028\u2066")
    assert "wrote /dev/stdout" in text
    if form == "json":
        document = json.loads(text[: text.rindex("}") + 1])
        assert document["metadata"]["title"] == title
    else:
        assert "evil" in text
    piped = subprocess.run(
        command(data_dir, "export", "c1", "-f", form, "-o", "/dev/stdout"),
        capture_output=True,
        check=True,
    )
    assert "\u202e".encode() in piped.stdout  # into a pipe: as it is


def test_branches_exported_into_one_folder_get_a_file_each(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    run(capsys, data_dir, "migrate", str(FIXTURES / "branches.json"), "--no-backup")
    folder = tmp_path / "out"
    folder.mkdir()
    for branch in ("main", "alt"):
        code, _, err = run(
            capsys, data_dir, "export", "ctx-branches", "-b", branch, "-o", f"{folder}/"
        )
        assert code == 0, err
    code, _, _ = run(capsys, data_dir, "export", "ctx-branches", "-o", str(folder))
    assert code == 0
    names = sorted(os.listdir(folder))
    assert names == ["ctx-branches.alt.json", "ctx-branches.json", "ctx-branches.main.json"]
    assert json.loads((folder / "ctx-branches.alt.json").read_text())["branch"] == "alt"
    assert json.loads((folder / "ctx-branches.main.json").read_text())["branch"] == "main"
    # Characters a file name had better not hold are escaped.
    a_context(data_dir, "t", "hi")

    async def branch() -> None:
        async with FileStore(data_dir) as store:
            await store.create_branch("c1", "my idea+1", head="u1")

    anyio.run(branch)
    code, _, err = run(capsys, data_dir, "export", "c1", "-b", "my idea+1", "-o", str(folder))
    assert code == 0, err
    assert (folder / "c1.my%20idea%2B1.json").is_file()


def test_branch_files_keep_letters_of_any_script_and_cut_long_names_to_fit(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    a_context(data_dir, "t", "hi")
    japanese = "日本語の長いブランチ名前" * 3  # 36 letters: 108 bytes, twice that escaped
    stem = ("日本語の長いブランチ名前" * 9)[:99]  # 100-letter names: 300 bytes
    longest = [stem + "一", stem + "二"]

    async def branch() -> None:
        async with FileStore(data_dir) as store:
            for name in ("café", japanese, *longest):
                await store.create_branch("c1", name, head="u1")

    anyio.run(branch)
    folder = tmp_path / "out"
    folder.mkdir()
    for name in ("café", japanese, *longest):
        code, _, err = run(capsys, data_dir, "export", "c1", "-b", name, "-o", str(folder))
        assert code == 0, err
    names = set(os.listdir(folder))
    assert {"c1.café.json", f"c1.{japanese}.json"} < names
    cut = sorted(names - {"c1.café.json", f"c1.{japanese}.json"})
    assert len(cut) == 2  # two names alike for 99 letters: a file each
    for file_name in cut:
        assert 250 <= len(file_name.encode()) <= 255
        assert file_name.startswith(f"c1.{stem[:70]}")
        assert re.fullmatch(r"c1\.[^~]+~[0-9a-f]{12}\.json", file_name)
    branches = {json.loads((folder / f).read_text())["branch"] for f in cut}
    assert branches == set(longest)


def test_export_help_says_how_branch_files_are_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "--help"]) == 0
    help_text = " ".join(capsys.readouterr().out.split())
    assert "<context id>.<branch>.json" in help_text
    assert "keeps its letters and digits, of any script" in help_text
    assert "would pass 255 bytes in UTF-8 has the branch name cut" in help_text


def test_invalid_files_are_data_errors_and_bad_arguments_usage_errors(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    bad_role = tmp_path / "badrole.json"
    bad_role.write_text(
        json.dumps(
            {
                "format": "cm_notebook.export",
                "metadata": {"id": "x"},
                "messages": [{"id": "m", "role": "wizard"}],
            }
        )
    )
    cut = tmp_path / "cut.json"
    cut.write_text('{"format":"cm_notebook.export"')
    for file in (bad_role, cut):
        code, out, err = run(capsys, data_dir, "import", str(file))
        assert code == 1, err
        assert out == ""
        assert err.startswith(f"cm-notebook: error: {file}")
    assert run(capsys, data_dir, "show", "../..")[0] == 2
    assert run(capsys, data_dir, "show", "c1", "-b", "../x")[0] == 2
    assert main(["--help"]) == 0
    assert "Exit codes: 0 success, 1 failure" in " ".join(capsys.readouterr().out.split())
