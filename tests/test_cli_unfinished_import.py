"""A context whose import never finished (the importing process was killed): never
exported as whole, and ``show`` says what it is and what to do."""

from __future__ import annotations

import shlex
from pathlib import Path

import anyio
import pytest
from cli_process import cli

from cm_notebook.cli import main
from cm_notebook.errors import StateError
from cm_notebook.export import UNFINISHED_IMPORT, export_context
from cm_notebook.model import ContextMetadata, Message
from cm_notebook.store import FileStore


def _killed_import(data_dir: Path) -> None:
    # What an import killed half-way leaves: the context with the mark the import's
    # last step takes off, part of the messages, and no process holding its lock.
    async def make() -> None:
        store = FileStore(data_dir)
        await store.create_context(
            ContextMetadata(id="half", title="half", tags=["kept", UNFINISHED_IMPORT])
        )
        await store.append_message("half", Message(role="user", content="one"), branch=None)
        await store.close()

    anyio.run(make)


def test_an_unfinished_import_is_not_exported(data_dir: Path, tmp_path: Path) -> None:
    _killed_import(data_dir)
    target = tmp_path / "partial.json"
    done = cli(data_dir, "export", "half", "-o", str(target))
    assert (done.returncode, done.stdout) == (1, "")
    folder = shlex.quote(str(data_dir))
    assert done.stderr == (
        "cm-notebook: error: context 'half' cannot be exported: its import never finished "
        "(the process was stopped), so it may hold only part of the file it was imported "
        "from, which an export would pass on as whole. Remove it "
        f"(`cm-notebook --data-dir {folder} rm half --yes`), then import the file again (an "
        "import under this id replaces it by itself), and export that\n"
    )
    assert not target.exists()
    assert cli(data_dir, "export", "half").returncode == 1  # to stdout neither


def test_export_context_refuses_an_unfinished_import(data_dir: Path) -> None:
    # A notebook's export (session.export) reads it the same way.
    _killed_import(data_dir)

    async def export() -> None:
        async with FileStore(data_dir) as store:
            await export_context(store, "half")

    with pytest.raises(StateError, match="its import never finished"):
        anyio.run(export)


def test_show_says_the_import_is_unfinished_and_what_to_do(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _killed_import(data_dir)
    done = cli(data_dir, "show", "half")
    assert done.returncode == 0
    assert done.stdout.splitlines()[0] == "half (import unfinished)"
    folder = shlex.quote(str(data_dir))
    assert done.stderr == (
        "cm-notebook: warning: half: its import never finished (the process was stopped): "
        f"it may lack messages; remove it (`cm-notebook --data-dir {folder} rm half --yes`), "
        "then import the file again (an import under this id replaces it by itself)\n"
    )
    # The advice pastes as it reads, and does what it says.
    advised = done.stderr.split("`")[1]
    assert main(shlex.split(advised)[1:]) == 0
    assert cli(data_dir, "ls").stdout.startswith("No contexts in")
