"""The ``cm-notebook`` commands an error advises a Python caller name the session's
data folder (``--data-dir``), so that pasted into a terminal they act on that data."""

from __future__ import annotations

import shlex
import warnings
from pathlib import Path

import anyio
import pytest
from store_helpers import chain

from cm_notebook.cli import main
from cm_notebook.errors import CorruptDataError, InvalidIdError
from cm_notebook.magics._remedies import for_magics
from cm_notebook.model import ContextMetadata
from cm_notebook.server.wording import for_http
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore, StoreWarning
from cm_notebook.testing import ScriptedProvider


def damaged(data_dir: Path) -> str:
    """A context of two turns in ``data_dir`` whose second question's file is garbage
    (and no journal line holds it any more): the id of that context."""
    session = ContextSession.create("Damaged", provider=ScriptedProvider(), data_dir=data_dir)
    for question in ("one", "two"):
        session.send(question).result(10)
    lost, context_id = session.history()[2].id, session.id
    session.close()

    async def compact() -> None:
        async with FileStore(data_dir) as store:
            await store.compact(context_id)

    anyio.run(compact)
    (data_dir / "contexts" / context_id / "messages" / f"{lost}.json").write_text("garbage{")
    return context_id


def advised(message: str) -> list[str]:
    """The commands ``message`` advises, in backquotes, as shell words."""
    return [shlex.split(part) for part in message.split("`")[1::2] if part.startswith("cm-")]


def test_an_export_that_cannot_read_a_message_advises_check_for_the_session_s_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "my data"  # not the default folder, and one to quote
    context_id = damaged(data_dir)
    session = ContextSession.open(context_id, data_dir=data_dir)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StoreWarning)  # the unreadable file, named
            with pytest.raises(CorruptDataError) as info:
                session.export()
    finally:
        session.close()
    message = str(info.value)
    # In Python, the other way out is said in Python, not as the command line's flag.
    assert "export a branch that does not pass through them (session.export(branch=...))" in (
        message
    )
    assert "--branch" not in message
    (command,) = advised(message)
    assert command == ["cm-notebook", "--data-dir", str(data_dir), "check", context_id]
    # Pasted, it checks that context (rather than finding none in the default folder).
    main(command[1:])
    out, err = capsys.readouterr()
    assert "no context" not in err
    assert context_id in out + err
    # The command line says the same error its own way, with the folder given once.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StoreWarning)
        assert main(["--data-dir", str(data_dir), "export", context_id]) == 1
    err = capsys.readouterr().err
    assert err.count("--data-dir") == 1
    assert "(--branch)" in err
    assert "session.export" not in err
    # And the magics theirs, the folder given once there too.
    in_magics = for_magics(message, session)
    assert in_magics.count("--data-dir") == 1
    assert "(`%cm export --branch B`)" in in_magics


def test_a_folder_named_by_the_environment_is_named_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment, not the package: $CM_NOTEBOOK_DATA_DIR may be unset in the
    # terminal the command is pasted into, so the advice names the folder all the same.
    monkeypatch.setenv("CM_NOTEBOOK_DATA_DIR", str(tmp_path / "env data"))
    context_id = damaged(tmp_path / "env data")
    session = ContextSession.open(context_id)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", StoreWarning)
            with pytest.raises(CorruptDataError) as info:
                session.export()
    finally:
        session.close()
    (command,) = advised(str(info.value))
    assert command[1:3] == ["--data-dir", str(tmp_path / "env data")]


def test_a_rest_client_is_not_told_the_server_s_folder(tmp_path: Path) -> None:
    # A branch that leads to a message the index lost: the store's error names the
    # folder for a Python caller; a client of the server learns the command alone.
    data_dir = tmp_path / "server data"

    async def scenario() -> str:
        async with FileStore(data_dir) as store:
            await store.create_context(ContextMetadata(id="c"))
            ids = await chain(store, "c", 3)
            await store.compact("c")
        index = data_dir / "contexts" / "c" / "message_index.json"
        text = index.read_text()
        index.write_text(text.replace(f'"parent_id":"{ids[0]}"', '"parent_id":"m01gone"', 1))
        async with FileStore(data_dir) as store:
            with pytest.raises(CorruptDataError) as info:
                await store.path("c")
        return str(info.value)

    message = anyio.run(scenario)
    assert f"`cm-notebook --data-dir {shlex.quote(str(data_dir))} check c`" in message
    worded = for_http(message, data_dir=data_dir, api="/cm/api", context_id="c")
    assert "`cm-notebook check c`" in worded
    assert "data folder" not in worded
    assert str(tmp_path) not in worded


def test_an_invalid_id_advises_listing_the_session_s_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "my data"
    kept = ContextSession.create("Kept", provider=ScriptedProvider(), data_dir=data_dir)
    kept.close()
    with pytest.raises(InvalidIdError) as info:
        ContextSession.open("bad id", data_dir=data_dir)
    (command,) = advised(str(info.value))
    assert command == ["cm-notebook", "--data-dir", str(data_dir), "ls"]
    main(command[1:])  # pasted, it lists the contexts the caller could have meant
    assert kept.id in capsys.readouterr().out
    # The command line names its folder once.
    assert main(["--data-dir", str(data_dir), "show", "bad id"]) == 2
    assert capsys.readouterr().err.count("--data-dir") == 1
