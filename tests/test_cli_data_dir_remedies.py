"""The commands an error or a report of `cm-notebook` advises act on the data directory
the command used: given ``--data-dir`` (or ``$CM_NOTEBOOK_DATA_DIR``) when that is not
the default one, so that the advised command, run as given, works."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cm_notebook import ContextSession
from cm_notebook.testing import ScriptedProvider

DEADLINE = 120


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A user's environment whose default data directory is an empty folder, and no
    $CM_NOTEBOOK_DATA_DIR: a command acting on the wrong folder finds nothing."""
    home = tmp_path / "home"
    home.mkdir()
    kept = {k: v for k, v in os.environ.items() if k != "CM_NOTEBOOK_DATA_DIR"}
    return {
        **kept,
        "HOME": str(home),
        "XDG_DATA_HOME": str(home / "share"),
        "PYTHONIOENCODING": "utf-8",
    }


def cm(
    argv: list[str], env: dict[str, str], cwd: Path, **more_env: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cm_notebook", *argv],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**env, **more_env},
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        timeout=DEADLINE,
        check=False,
    )


def advised(text: str) -> list[list[str]]:
    """The `cm-notebook ...` commands ``text`` advises, as the shell splits them."""
    return [shlex.split(command)[1:] for command in re.findall(r"`(cm-notebook [^`]*)`", text)]


def a_context(data_dir: Path, title: str = "Kept here") -> str:
    with ContextSession.create(title, data_dir=data_dir, provider=ScriptedProvider()) as s:
        s.send("hello").result(DEADLINE)
    return s.id


@pytest.mark.parametrize("name", ["my data's", "-dashed"])
def test_the_listing_advised_for_an_unknown_id_lists_the_given_folder(
    tmp_path: Path, env: dict[str, str], name: str
) -> None:
    data_dir = tmp_path / name
    a_context(data_dir)
    # Given relative, as typed in that folder; a name starting with "-" as an = value.
    done = cm([f"--data-dir={name}", "show", "c-nothing-here"], env, tmp_path)
    assert done.returncode == 1
    (command,) = advised(done.stderr)
    assert command[0] == (f"--data-dir={name}" if name.startswith("-") else "--data-dir")
    listed = cm(command, env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "Kept here" in listed.stdout


def test_the_data_dir_of_the_environment_is_named_too(tmp_path: Path, env: dict[str, str]) -> None:
    data_dir = tmp_path / "data"
    a_context(data_dir)
    done = cm(["show", "c-nothing-here"], env, tmp_path, CM_NOTEBOOK_DATA_DIR=str(data_dir))
    (command,) = advised(done.stderr)
    assert command == ["--data-dir", str(data_dir), "ls"]
    listed = cm(command, env, tmp_path)  # in a terminal without that variable
    assert "Kept here" in listed.stdout


def test_the_default_data_dir_needs_no_option(tmp_path: Path, env: dict[str, str]) -> None:
    default = Path(env["XDG_DATA_HOME"]) / "cm_notebook"
    a_context(default)
    for given in ([], ["--data-dir", str(default)]):
        done = cm([*given, "show", "c-nothing-here"], env, tmp_path)
        assert advised(done.stderr) == [["ls"]]
    assert "Kept here" in cm(["ls"], env, tmp_path).stdout


def test_the_check_advised_for_a_lost_head_checks_that_context(
    tmp_path: Path, env: dict[str, str]
) -> None:
    data_dir = tmp_path / "data dir"
    with ContextSession.create("Two", data_dir=data_dir, provider=ScriptedProvider()) as s:
        first_reply = s.send("hello").result(DEADLINE)
        s.send("again").result(DEADLINE)
        s.branch("side", from_message=first_reply.id)
    context_id = s.id
    metadata_file = data_dir / "contexts" / context_id / "metadata.json"
    metadata = json.loads(metadata_file.read_text())
    metadata["branches"]["main"]["head"] = "m01nonexistent0000000"
    metadata_file.write_text(json.dumps(metadata))
    done = cm(["--data-dir", str(data_dir), "export", context_id], env, tmp_path)
    assert done.returncode == 1
    (command,) = advised(done.stderr)
    assert command == ["--data-dir", str(data_dir), "check", context_id]
    checked = cm(command, env, tmp_path)
    assert checked.returncode == 1
    assert "no context" not in checked.stderr
    assert "m01nonexistent0000000" in checked.stdout + checked.stderr


def test_the_rm_advised_for_a_case_twin_removes_the_one_there(
    tmp_path: Path, env: dict[str, str]
) -> None:
    data_dir = tmp_path / "data dir"
    context_id = a_context(data_dir)
    exported = tmp_path / "e.json"
    assert (
        cm(
            ["--data-dir", str(data_dir), "export", context_id, "-o", str(exported)], env, tmp_path
        ).returncode
        == 0
    )
    document = json.loads(exported.read_text())
    document["metadata"]["id"] = context_id.upper()
    exported.write_text(json.dumps(document))
    done = cm(["--data-dir", str(data_dir), "import", str(exported)], env, tmp_path)
    assert done.returncode == 1
    (command,) = advised(done.stderr)
    assert command == ["--data-dir", str(data_dir), "rm", context_id]
    removed = cm([*command, "--yes"], env, tmp_path)
    assert removed.returncode == 0, removed.stderr
    assert not (data_dir / "contexts" / context_id).exists()


def test_the_demo_s_show_shows_its_context(tmp_path: Path, env: dict[str, str]) -> None:
    data_dir = tmp_path / "demo data"
    done = cm(["--data-dir", str(data_dir), "demo", "--provider", "scripted"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    (command,) = advised(done.stdout)
    assert command[:2] == ["--data-dir", str(data_dir)]
    shown = cm(command, env, tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("Quick start demo\n")
