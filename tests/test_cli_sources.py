"""Where `migrate` and `import` take their data from: an export is not v1 data, a pipe
is read once, and "." is backed up next to the folder it names."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cm_notebook.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


def run(capsys: pytest.CaptureFixture[str], data_dir: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data_dir), *argv])
    out, err = capsys.readouterr()
    return code, out, err


def cli(data_dir: Path, *argv: str, **options: object) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "cm_notebook", "--data-dir", str(data_dir), *argv],
        capture_output=True,
        timeout=120,
        check=False,
        **options,  # type: ignore[call-overload]
    )


def an_export(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> Path:
    origin = tmp_path / "origin"
    run(capsys, origin, "migrate", str(FIXTURES / "branches.json"), "--no-backup")
    folder = tmp_path / "exports"
    folder.mkdir()
    assert run(capsys, origin, "export", "ctx-branches", "-o", str(folder))[0] == 0
    return folder / "ctx-branches.json"


def test_migrate_refuses_an_export_and_says_to_import_it(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    exported = an_export(capsys, tmp_path)
    code, out, err = run(capsys, data_dir, "migrate", str(exported))
    assert (code, out) == (1, "")
    (line,) = err.splitlines()
    assert line == (
        f"cm-notebook: error: {exported} is a cm_notebook export, not v1 data: import it "
        f"with `cm-notebook --data-dir {shlex.quote(str(data_dir))} import {exported}` "
        "(in Python: cm_notebook.export.import_document)"
    )
    assert not data_dir.exists() or not list((data_dir / "contexts").glob("*"))
    assert os.listdir(exported.parent) == [exported.name]  # no backup of it either
    # A folder of exports: each file says to import it, none to migrate it.
    code, out, _ = run(capsys, data_dir, "import", str(exported.parent))
    assert code == 1
    assert f"`cm-notebook --data-dir {shlex.quote(str(data_dir))} import {exported}`" in out
    assert "cm-notebook migrate" not in out
    # And importing it as told keeps its title and branches.
    code, out, _ = run(capsys, data_dir, "import", str(exported))
    assert (code, out) == (
        0,
        "imported ctx-branches ('Shared prefix'): 6 message(s), 2 branch(es)\n",
    )


@pytest.mark.parametrize(
    ("command", "given"),
    [
        ("migrate", ""),
        ("migrate", "metadata.json"),
        ("migrate", "message_index.json"),
        ("import", ""),  # a folder is v1 data to import (one file is an export or v1)
    ],
)
def test_a_context_folder_of_cm_notebook_is_not_taken_for_v1_data(
    command: str, given: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    origin = tmp_path / "origin"
    run(capsys, origin, "migrate", str(FIXTURES / "branches.json"), "--no-backup")
    folder = origin / "contexts" / "ctx-branches"
    data_dir = tmp_path / "data"
    code, out, err = run(capsys, data_dir, command, str(folder / given), "--no-backup")
    assert (code, out) == (1, "")
    (line,) = err.splitlines()
    assert line == (
        f"cm-notebook: error: {folder} is a context of cm_notebook's own data "
        "(metadata.json and message_index.json), not v1 data: it needs no migration. A "
        "file made by `cm-notebook export` is added to a data directory with "
        f"`cm-notebook --data-dir {shlex.quote(str(data_dir))} import FILE`"
    )
    assert not data_dir.exists() or not list((data_dir / "contexts").glob("*"))


@pytest.mark.skipif(sys.platform == "win32", reason="needs /dev/stdin")
def test_v1_data_through_a_pipe_is_read_once(data_dir: Path) -> None:
    data = (FIXTURES / "branches.json").read_bytes()
    done = cli(data_dir, "import", "/dev/stdin", input=data)
    assert done.returncode == 0, done.stderr
    assert b"2 migrated, 1 partial, 0 skipped, 0 failed" in done.stdout
    (backup,) = (data_dir / "backups").iterdir()
    assert backup.read_bytes() == data  # what came through the pipe, not an empty read
    other = data_dir.parent / "other"
    done = cli(other, "migrate", "/dev/stdin", input=data)
    assert done.returncode == 0, done.stderr
    # Next to /dev/stdin is no place for it: the data directory keeps the copy.
    (backup,) = (other / "backups").iterdir()
    assert backup.name.startswith("stdin.v1-backup-")
    assert backup.read_bytes() == data
    assert b"2 migrated, 1 partial" in done.stdout


def test_a_folder_given_as_dot_is_backed_up_next_to_itself(data_dir: Path, tmp_path: Path) -> None:
    source = Path(shutil.copytree(FIXTURES / "context_files", tmp_path / "src"))
    before = sorted(os.listdir(source))
    done = cli(data_dir, "migrate", ".", cwd=source)
    assert b"Backup of the source: " in done.stdout, done.stderr
    assert sorted(os.listdir(source)) == before  # nothing inside the source
    (backup,) = tmp_path.glob("src.v1-backup-*")
    assert backup.is_dir()
    other = tmp_path / "other"
    cli(other, "import", ".", cwd=source)
    (backup,) = (other / "backups").iterdir()
    assert backup.name.startswith("src.v1-backup-")
    copied = sorted(n for n in before if n.lower().endswith(".json") and n[0] != ".")
    assert sorted(os.listdir(backup)) == copied


@pytest.mark.skipif(sys.platform == "win32", reason="needs /dev/stdin")
def test_import_dash_reads_an_export_from_standard_input(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    exported = an_export(capsys, tmp_path)
    done = cli(data_dir, "import", "-", input=exported.read_bytes())
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"imported ctx-branches ")


def test_new_id_with_v1_data_is_refused_not_ignored(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    code, out, err = run(capsys, data_dir, "import", str(FIXTURES / "branches.json"), "--new-id")
    assert (code, out) == (2, "")
    assert "--new-id is for a file made by `cm-notebook export`" in err
    assert not (data_dir / "contexts").exists() or not list((data_dir / "contexts").iterdir())


def test_allow_tools_with_v1_data_imports_and_says_it_does_nothing(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    code, _out, err = run(
        capsys, data_dir, "import", str(FIXTURES / "branches.json"), "--allow-tools"
    )
    assert code == 0, err
    assert "note: --allow-tools is for an export file; v1 data allows no tools" in err


def test_an_empty_data_dir_is_refused_not_taken_for_the_current_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["--data-dir", "", "ls"]) == 2
    assert "--data-dir: an empty path" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("inside", [False, True])
def test_an_import_into_a_data_dir_that_is_a_file_says_so_as_ls_does(
    inside: bool, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    exported = an_export(capsys, tmp_path)
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    data_dir = a_file / "data" if inside else a_file
    done = cli(data_dir, "import", str(exported))
    assert done.returncode == 1
    if inside:
        assert done.stderr.decode() == (
            f"cm-notebook: error: could not use {data_dir}: Not a directory. Check that its "
            "folder exists and can be reached, and that the disk works.\n"
        )
    else:
        assert done.stderr.decode() == (
            f"cm-notebook: error: the data directory {data_dir} is not a folder: give a "
            "folder with --data-dir (or $CM_NOTEBOOK_DATA_DIR), or move that file away\n"
        )
        assert cli(data_dir, "ls").stderr == done.stderr  # as ls says it
    assert a_file.read_text() == "not a folder"


@pytest.mark.parametrize("given", ["", " "])
def test_an_empty_output_is_refused_not_taken_for_the_current_folder(
    given: str, capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    run(capsys, data_dir, "migrate", str(FIXTURES / "branches.json"), "--no-backup")
    here = tmp_path / "here"
    here.mkdir()
    done = cli(data_dir, "export", "ctx-branches", "-o", given, cwd=here)
    assert done.returncode == 2
    assert b"argument -o/--output: an empty path" in done.stderr
    assert os.listdir(here) == []


def test_an_invalid_message_id_in_an_import_gets_no_python_remedy(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    exported = an_export(capsys, tmp_path)
    document = json.loads(exported.read_text())
    document["messages"][-1]["id"] = "../../../evil"
    hostile = tmp_path / "hostile.json"
    hostile.write_text(json.dumps(document))
    code, _out, err = run(capsys, data_dir, "import", str(hostile))
    assert code == 1
    assert "'../../../evil' is not valid" in err
    assert "session.history()" not in err


def test_advised_commands_quote_a_path_with_a_space_so_they_work_pasted(
    capsys: pytest.CaptureFixture[str], data_dir: Path, tmp_path: Path
) -> None:
    # A folder with an export and a v1 contexts.json in it: each is refused with a
    # command that takes that one file, which must be one shell word however it is named.
    exported = an_export(capsys, tmp_path)
    folder = tmp_path / "v1 data"
    folder.mkdir()
    shutil.copy(exported, folder / "the export.json")
    shutil.copy(FIXTURES / "contexts_list.json", folder / "my contexts.json")
    code, out, _ = run(capsys, data_dir, "migrate", "--no-backup", str(folder))
    assert code == 1
    advised = [line.split("`")[1] for line in out.splitlines() if "`cm-notebook" in line]
    assert len(advised) == 2, out
    for command in advised:
        words = shlex.split(command)
        assert words[0] == "cm-notebook"
        code, out, err = run(capsys, data_dir, *words[3:])  # after `--data-dir DIR`
        assert code == 0, err
    assert {path.name for path in (data_dir / "contexts").iterdir()} >= {"ctx-branches"}
