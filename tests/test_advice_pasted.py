"""The ``cm-notebook`` commands the store's warnings and errors and a migration's report
advise a Python caller name the store's folder (``--data-dir``, quoted), and pasted
into a terminal act on that store, not on the default one. Real damaged files, the
real command in a child process."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import anyio
import pytest
from cli_process import cli
from store_helpers import chain

from cm_notebook._migration_mark import UNFINISHED_MIGRATION
from cm_notebook.errors import ContextNotFoundError, MigrationError
from cm_notebook.magics._remedies import for_magics
from cm_notebook.migrate import ContextStatus, migrate
from cm_notebook.model import ContextMetadata
from cm_notebook.server.wording import for_http
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore, StoreWarning

FIXTURES = Path(__file__).parent / "fixtures" / "v1"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Not the default folder, and one that needs quoting."""
    return tmp_path / "my data"


def advised(message: str) -> list[list[str]]:
    """The commands ``message`` advises, in backquotes, as a POSIX shell splits them."""
    return [shlex.split(part) for part in message.split("`")[1::2] if part.startswith("cm-")]


def pasted(command: list[str]) -> subprocess.CompletedProcess[str]:
    """``command`` (``cm-notebook ...``) run as typed, in a child process."""
    assert command[0] == "cm-notebook"
    env = {key: value for key, value in os.environ.items() if key != "CM_NOTEBOOK_DATA_DIR"}
    return subprocess.run(
        [sys.executable, "-m", "cm_notebook", *command[1:]],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env={**env, "PYTHONIOENCODING": "utf-8"},
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def said(caught: list[warnings.WarningMessage], part: str) -> str:
    (message,) = [str(w.message) for w in caught if part in str(w.message)]
    return message


def messages_dir(data_dir: Path) -> Path:
    return data_dir / "contexts" / "c1" / "messages"


def plant(data_dir: Path, mid: str, parent: str | None, role: str = "assistant") -> None:
    """A message file written behind the store's back."""
    message = {
        "id": mid,
        "parent_id": parent,
        "role": role,
        "content": f"text of {mid}",
        "created_at": "2026-01-01T00:00:00Z",
    }
    (messages_dir(data_dir) / f"{mid}.json").write_text(json.dumps(message))


def build(data_dir: Path, n: int = 4, *, compact: bool = True) -> list[str]:
    async def scenario() -> list[str]:
        async with FileStore(data_dir) as store:
            await store.create_context(ContextMetadata(id="c1"))
            ids = await chain(store, "c1", n)
            if compact:
                await store.compact("c1")
            return ids

    return anyio.run(scenario)


def opened_with_warnings(data_dir: Path, ids: list[str]) -> list[warnings.WarningMessage]:
    async def scenario() -> None:
        async with FileStore(data_dir) as store:
            await store.get_messages("c1", ids)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        anyio.run(scenario)
    return caught


def test_files_left_out_of_a_rebuilt_index_advise_check_of_this_store(data_dir: Path) -> None:
    ids = build(data_dir)
    plant(data_dir, "lost", "gone")
    (data_dir / "contexts" / "c1" / "message_index.json").write_text("{damaged")
    message = said(opened_with_warnings(data_dir, ids), "out of the rebuilt index")
    listing, repair = advised(message)
    assert listing == ["cm-notebook", "--data-dir", str(data_dir), "check", "c1"]
    assert repair == ["cm-notebook", "--data-dir", str(data_dir), "check", "--repair", "c1"]
    done = pasted(listing)
    assert "left out of the index: messages/lost.json" in done.stdout + done.stderr
    # Its parent put back, as the message says, the repair takes it in.
    plant(data_dir, "gone", ids[-1], role="user")
    assert pasted(repair).returncode == 0

    async def indexed() -> list[str]:
        async with FileStore(data_dir) as store:
            return list(await store.index("c1"))

    assert {"gone", "lost"} <= set(anyio.run(indexed))


def test_a_damaged_link_kept_from_the_index_advises_a_repair_of_this_store(
    data_dir: Path,
) -> None:
    ids = build(data_dir, 6)
    file = messages_dir(data_dir) / f"{ids[0]}.json"
    raw = json.loads(file.read_text())
    raw["parent_id"] = ids[2]
    file.write_text(json.dumps(raw))
    with (data_dir / "contexts" / "c1" / "message_index.journal").open("ab") as handle:
        handle.write(b"not a journal line\n")
    message = said(opened_with_warnings(data_dir, ids), "kept the index's parent")
    (repair,) = advised(message)
    assert repair == ["cm-notebook", "--data-dir", str(data_dir), "check", "--repair", "c1"]
    done = pasted(repair)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(file.read_text())["parent_id"] is None  # rewritten from the index


def test_a_messages_folder_made_again_advises_a_repair_of_this_store(data_dir: Path) -> None:
    ids = build(data_dir, compact=False)  # the journal holds every file
    shutil.rmtree(messages_dir(data_dir))

    async def append() -> None:
        async with FileStore(data_dir) as store:
            await store.update_metadata("c1", title="renamed")  # made again, not read

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        anyio.run(append)
    message = said(caught, "was missing and was made again")
    (repair,) = advised(message)
    assert repair == ["cm-notebook", "--data-dir", str(data_dir), "check", "--repair", "c1"]
    assert not any(messages_dir(data_dir).iterdir())  # none read yet: none restored
    done = pasted(repair)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {f"{mid}.json" for mid in ids} <= {p.name for p in messages_dir(data_dir).iterdir()}


def test_a_context_that_is_not_there_advises_listing_this_store(data_dir: Path) -> None:
    build(data_dir)

    async def scenario() -> str:
        async with FileStore(data_dir) as store:
            with pytest.raises(ContextNotFoundError) as info:
                await store.get_metadata("c2")
        return str(info.value)

    (listing,) = advised(anyio.run(scenario))
    assert listing == ["cm-notebook", "--data-dir", str(data_dir), "ls"]
    assert "c1" in pasted(listing).stdout


def test_a_changed_v1_record_advises_removing_the_context_from_this_store(
    data_dir: Path, tmp_path: Path
) -> None:
    source = tmp_path / "v1 source" / "contexts_list.json"
    source.parent.mkdir()
    shutil.copy2(FIXTURES / "contexts_list.json", source)

    async def run() -> list[str]:
        async with FileStore(data_dir) as store:
            report = await migrate(source, store, progress=False, backup=False)
        return [p for c in report.contexts for p in c.problems if c.status is ContextStatus.FAILED]

    assert anyio.run(run) == []
    data = json.loads(source.read_text())
    data[0]["messages"].append({"id": "m6", "role": "user", "content": "one more"})
    source.write_text(json.dumps(data))
    (problem,) = anyio.run(run)
    (remove,) = advised(problem)
    assert remove == ["cm-notebook", "--data-dir", str(data_dir), "rm", "ctx-planning"]
    done = pasted([*remove, "--yes"])  # no terminal to confirm at
    assert done.returncode == 0, done.stdout + done.stderr
    assert anyio.run(run) == []  # removed from this store, so migrated again


def test_an_export_given_to_migrate_advises_importing_it_into_this_store(
    data_dir: Path, tmp_path: Path
) -> None:
    build(data_dir)
    exported = tmp_path / "an export.json"
    done = pasted(["cm-notebook", "--data-dir", str(data_dir), "export", "c1", "-o", str(exported)])
    assert done.returncode == 0, done.stdout + done.stderr
    shutil.rmtree(data_dir / "contexts" / "c1")

    async def run() -> str:
        async with FileStore(data_dir) as store:
            with pytest.raises(MigrationError) as info:
                await migrate(exported, store, progress=False, backup=False)
        return str(info.value)

    (command,) = advised(anyio.run(run))
    assert command == ["cm-notebook", "--data-dir", str(data_dir), "import", str(exported)]
    done = pasted(command)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "c1" in pasted(["cm-notebook", "--data-dir", str(data_dir), "ls"]).stdout


def test_opening_an_unfinished_migration_advises_migrating_into_this_store(
    data_dir: Path,
) -> None:
    async def scenario() -> None:
        async with FileStore(data_dir) as store:
            await store.create_context(
                ContextMetadata(
                    id="c1", tags=[UNFINISHED_MIGRATION], extra={"v1_source": "a b.json"}
                )
            )

    anyio.run(scenario)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ContextSession.open("c1", data_dir=data_dir).close()
    (command,) = advised(said(caught, "not completely migrated"))
    assert command == ["cm-notebook", "--data-dir", str(data_dir), "migrate", "a b.json"]


@pytest.mark.parametrize("folder", ["my.data dir", "my `data`.dir"], ids=["dots", "backquotes"])
def test_a_missing_context_s_remedy_is_reworded_for_a_folder_with_dots(
    tmp_path: Path, folder: str
) -> None:
    # The command line, the magics and the server each say the remedy their own way,
    # the command in it naming a folder whose dots (or backquotes) do not end the
    # sentence early.
    data_dir = tmp_path / folder
    build(data_dir)

    async def scenario() -> str:
        async with FileStore(data_dir) as store:
            with pytest.raises(ContextNotFoundError) as info:
                await store.get_metadata("c2")
        return str(info.value)

    message = anyio.run(scenario)
    in_magics = for_magics(message)
    assert "It may have been deleted: `%cm ls` lists the stored contexts" in in_magics
    assert "FileStore" not in in_magics
    over_http = for_http(message, data_dir=data_dir, api="/cm/api", context_id="c2")
    assert over_http.endswith("GET /cm/api/contexts lists the contexts there are.")
    assert str(tmp_path) not in over_http
    done = cli(data_dir, "show", "c2")
    assert done.returncode != 0
    option = f"--data-dir {shlex.quote(str(data_dir))}"
    assert f"List existing contexts with `cm-notebook {option} ls`." in done.stderr
    assert "FileStore" not in done.stderr
    assert done.stderr.rstrip().endswith("ls`.")
