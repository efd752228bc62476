"""`rm` of a damaged context and at the end of input, `demo` with a provider that
cannot work, and remedies said the command line's way."""

from __future__ import annotations

import io
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from cm_notebook import ContextSession
from cm_notebook.cli import main

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


class Terminal(io.StringIO):
    """Typed input, as a terminal gives it."""

    def isatty(self) -> bool:
        return True


def run(capsys: pytest.CaptureFixture[str], data_dir: Path, *argv: str) -> tuple[int, str, str]:
    code = main(["--data-dir", str(data_dir), *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def damaged(capsys: pytest.CaptureFixture[str], data_dir: Path) -> Path:
    """The folder of context ctx-branches, its metadata.json cut short."""
    run(capsys, data_dir, "migrate", str(FIXTURES / "branches.json"), "--no-backup")
    folder = data_dir / "contexts" / "ctx-branches"
    (folder / "metadata.json").write_text('{"id": "ctx-branches", "title": ')
    return folder


def test_rm_deletes_a_context_whose_metadata_is_damaged(
    capsys: pytest.CaptureFixture[str],
    data_dir: Path,
    damaged: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sys, "stdin", Terminal("n\n"))
    code, out, _ = run(capsys, data_dir, "rm", "ctx-branches")
    assert code == 1
    assert out.startswith("Delete context ctx-branches (its metadata is unreadable: ")
    assert out.endswith("? [y/N] Not deleted.\n")
    assert damaged.is_dir()
    code, out, err = run(capsys, data_dir, "rm", "--yes", "ctx-branches")
    assert (code, out, err) == (0, "deleted ctx-branches\n", "")
    assert not damaged.exists()
    # Ids are still checked, and unknown ones still refused.
    assert run(capsys, data_dir, "rm", "--yes", "../x")[0] == 2
    assert run(capsys, data_dir, "rm", "--yes", "ctx-branches")[0] == 1


def test_end_of_input_at_the_prompt_deletes_nothing(
    capsys: pytest.CaptureFixture[str], data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(capsys, data_dir, "migrate", str(FIXTURES / "branches.json"), "--no-backup")
    monkeypatch.setattr(sys, "stdin", Terminal(""))  # Ctrl-D: input() meets the end
    code, out, err = run(capsys, data_dir, "rm", "ctx-branches")
    assert code == 1
    assert out.endswith("[y/N] \nNot deleted.\n")
    assert "Traceback" not in err
    assert (data_dir / "contexts" / "ctx-branches").is_dir()


def _demo(data_dir: Path, provider: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI")}
    command = ["-m", "cm_notebook", "--data-dir", str(data_dir), "demo", "--provider", provider]
    return subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def test_a_demo_whose_provider_fails_leaves_no_context(data_dir: Path) -> None:
    done = _demo(data_dir, "openai:gpt-4o-mini")  # no API key: the first reply fails
    assert done.returncode == 1, done.stderr
    assert "cm-notebook: error: openai: no API key" in done.stderr
    assert "the demo failed: its context " in done.stdout
    assert "was removed" in done.stdout
    assert ContextSession.list(data_dir) == []


def test_a_demo_whose_provider_cannot_be_made_makes_no_context(data_dir: Path) -> None:
    done = _demo(data_dir, "openai")  # no model named: refused before the context is made
    assert done.returncode == 2, done.stderr  # the --provider given cannot be used
    assert done.stderr.startswith("cm-notebook: error: provider 'openai' cannot be made")
    assert "context" not in done.stdout
    assert ContextSession.list(data_dir) == []


def test_remedies_name_commands_not_python_calls(
    capsys: pytest.CaptureFixture[str], data_dir: Path
) -> None:
    # The command named is for the data directory given.
    listing = f"`cm-notebook --data-dir {shlex.quote(str(data_dir))} ls`"
    for argv in (["show", "nope"], ["rm", "--yes", "../.."], ["export", "nope"]):
        _, _, err = run(capsys, data_dir, *argv)
        assert f"List existing contexts with {listing}." in err
        assert "FileStore" not in err
        assert "ContextSession" not in err
