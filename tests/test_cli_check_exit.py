"""``cm-notebook check``'s exit code: 1 while anything is left to fix, with or without
ids; a repair the store made while reading (an index rebuilt) is not such a thing."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from cli_process import cli

from cm_notebook.model import ContextMetadata, Message
from cm_notebook.store import FileStore


def _context(data_dir: Path) -> Path:
    async def make() -> None:
        store = FileStore(data_dir)
        await store.create_context(ContextMetadata(id="ctx", title="t"))
        await store.append_message("ctx", Message(role="user", content="hi"), branch="main")
        await store.close()

    anyio.run(make)
    return data_dir / "contexts" / "ctx"


@pytest.mark.parametrize("ids", [(), ("ctx",)])
def test_an_index_rebuilt_while_checking_is_a_notice_not_a_failure(
    data_dir: Path, ids: tuple[str, ...]
) -> None:
    folder = _context(data_dir)
    (folder / "message_index.json").write_text("[1]")
    done = cli(data_dir, "check", *ids)
    assert (done.returncode, done.stdout) == (0, "ctx: 1 message(s), ok\n"), done.stderr
    assert done.stderr.startswith(
        "cm-notebook: warning: the message index of context 'ctx' was rebuilt"
    )
    again = cli(data_dir, "check", *ids)
    assert (again.returncode, again.stderr) == (0, "")


def test_an_unreadable_context_beside_a_repaired_one_still_fails(data_dir: Path) -> None:
    folder = _context(data_dir)
    (folder / "message_index.json").write_text("[1]")
    broken = data_dir / "contexts" / "broken"
    broken.mkdir()
    (broken / "metadata.json").write_text("{")
    done = cli(data_dir, "check")
    assert done.returncode == 1
    kinds = {line.split(":")[1].strip(): line for line in done.stderr.splitlines()}
    assert sorted(kinds) == ["error", "warning"], done.stderr
    assert "contexts/broken, which is not a readable context" in kinds["error"]
    assert "context 'ctx' was rebuilt" in kinds["warning"]
