"""``cm-notebook`` on what is not a context: a stray folder in ``contexts/``, a data
directory that is a file, an export whose id no store takes, a folder whose name is
not text; each is named as what it is, with advice that works when pasted."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import anyio
from cli_process import cli

from cm_notebook.model import ContextMetadata, Message
from cm_notebook.store import FileStore


def _context(data_dir: Path, cid: str = "ctx") -> None:
    async def make() -> None:
        store = FileStore(data_dir)
        await store.create_context(ContextMetadata(id=cid, title="t"))
        await store.append_message(cid, Message(role="user", content="hi"), branch="main")
        await store.close()

    anyio.run(make)


def test_rm_removes_an_empty_folder_that_ls_warns_of(data_dir: Path) -> None:
    (data_dir / "contexts" / "stray").mkdir(parents=True)
    listed = cli(data_dir, "ls")
    assert "contexts/stray, which is not a readable context" in listed.stderr
    # The warning says how to remove it, for this store.
    advised = f"`cm-notebook --data-dir {shlex.quote(str(data_dir))} rm stray --yes` removes it"
    assert advised in listed.stderr
    removed = cli(data_dir, "rm", "stray", "--yes")
    assert (removed.returncode, removed.stdout) == (
        0,
        "deleted stray (an empty folder, not a context)\n",
    )
    again = cli(data_dir, "ls")
    assert (again.returncode, again.stderr) == (0, "")


def test_rm_leaves_a_folder_with_files_in_it(data_dir: Path) -> None:
    stray = data_dir / "contexts" / "stray"
    stray.mkdir(parents=True)
    (stray / "notes.txt").write_text("mine")
    assert cli(data_dir, "rm", "stray", "--yes").returncode == 1
    assert (stray / "notes.txt").read_text() == "mine"


def test_ls_with_only_unreadable_contexts_says_how_many_were_skipped(data_dir: Path) -> None:
    for name in ("one", "two"):
        folder = data_dir / "contexts" / name
        folder.mkdir(parents=True)
        (folder / "metadata.json").write_text("{")
    done = cli(data_dir, "ls")
    assert done.stdout == f"No readable contexts in {data_dir}: 2 skipped (see the warnings).\n"
    assert done.stderr.count("cm-notebook: warning: skipped") == 2


def test_a_data_directory_that_is_a_file_is_named_as_such(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("hi")
    for argv in (("show", "x"), ("ls",), ("rm", "x", "--yes")):
        done = cli(afile, *argv)
        assert (done.returncode, done.stdout) == (1, "")
        assert done.stderr == (
            f"cm-notebook: error: the data directory {afile} is not a folder: give a folder "
            "with --data-dir (or $CM_NOTEBOOK_DATA_DIR), or move that file away\n"
        )


def test_an_export_whose_id_no_store_takes_advises_new_id_which_works(
    data_dir: Path, tmp_path: Path
) -> None:
    _context(data_dir)
    exported = tmp_path / "bad id.json"
    assert cli(data_dir, "export", "ctx", "-o", str(exported)).returncode == 0
    document = json.loads(exported.read_text())
    document["metadata"]["id"] = "../../evil"
    exported.write_text(json.dumps(document))
    other = tmp_path / "other"
    done = cli(other, "import", str(exported))
    assert done.returncode == 1
    assert "its context id cannot be used here (context id '../../evil' is not valid" in (
        done.stderr
    )
    assert "List existing" not in done.stderr
    advised = done.stderr.split("`")[1]
    assert advised == (
        f"cm-notebook --data-dir {shlex.quote(str(other))} import --new-id "
        f"{shlex.quote(str(exported))}"
    )
    pasted = cli(other, *shlex.split(advised)[3:])
    assert pasted.returncode == 0, pasted.stderr
    assert pasted.stdout.startswith("imported c")
    assert not (tmp_path / "evil").exists()


def test_advice_naming_a_folder_whose_name_is_not_text_pastes_into_bash(tmp_path: Path) -> None:
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/bad\xffdir"))
    _context(folder)
    done = cli(folder, "show", "nope")
    assert done.returncode == 1
    advised = done.stderr.split("`")[1]
    assert "$'" in advised
    # Pasted into bash, it names that folder: ls lists its context.
    script = advised.replace("cm-notebook", shlex.quote(sys.executable) + " -m cm_notebook", 1)
    pasted = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    assert pasted.returncode == 0, pasted.stderr
    assert pasted.stdout.splitlines()[1].startswith("ctx ")
