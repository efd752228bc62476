"""Exports an import refuses as a whole, through the real command line and the library:
nothing is imported, and the message says what is wrong and what to do."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from cli_process import cli

from cm_notebook import ContextSession
from cm_notebook.errors import InvalidInputError, SchemaVersionError
from cm_notebook.export import import_document, parse_export
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An export of a context with two turns (4 messages), made by the command line."""
    data_dir = tmp_path_factory.mktemp("source")
    with ContextSession.create("two turns", provider=ScriptedProvider(), data_dir=data_dir) as s:
        s.send("one").result(30)
        s.send("two").result(30)
        context_id = s.id
    done = cli(data_dir, "export", context_id, "--format", "json")
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    assert len(document["messages"]) == 4
    return document


def changed(document: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    copy: dict[str, Any] = json.loads(json.dumps(document))
    change(copy)
    return copy


def refused(tmp_path: Path, document: dict[str, Any]) -> str:
    """Import ``document`` with the command line; assert it fails (exit 1) leaving no
    context behind, and return what it said."""
    data_dir = tmp_path / "data"
    file = tmp_path / "export.json"
    file.write_text(json.dumps(document), encoding="utf-8")
    done = cli(data_dir, "import", str(file))
    assert (done.returncode, done.stdout) == (1, ""), done.stderr
    assert ContextSession.list(data_dir) == []
    return done.stderr


def _drop_branches(document: dict[str, Any]) -> None:
    del document["metadata"]["branches"]


def test_an_export_without_branches_is_refused_naming_where_its_conversation_ends(
    tmp_path: Path, exported: dict[str, Any]
) -> None:
    document = changed(exported, _drop_branches)
    head = exported["metadata"]["branches"]["main"]["head"]
    said = refused(tmp_path, document)
    assert 'metadata has no "branches"' in said
    assert "none of its 4 message(s) would be on a branch" in said
    assert f'"{head}"' in said  # the id to put back as the head
    with pytest.raises(InvalidInputError, match=r'no "branches".*cm-notebook export'):
        parse_export(document)
    # Put back by hand as the message says, it imports with its conversation shown.
    document["metadata"]["branches"] = {"main": {"name": "main", "head": head}}
    file = tmp_path / "fixed.json"
    file.write_text(json.dumps(document), encoding="utf-8")
    data_dir = tmp_path / "fixed"
    assert cli(data_dir, "import", str(file)).returncode == 0
    shown = cli(data_dir, "show", exported["metadata"]["id"])
    assert "4 message(s)" in shown.stdout, shown.stdout


def test_an_export_without_branches_whose_active_branch_is_not_main_says_so(
    tmp_path: Path, exported: dict[str, Any]
) -> None:
    # Not "active branch 'alt' is not one of ['main']" (the default branches'), which
    # hides what is wrong.
    def active_alt(document: dict[str, Any]) -> None:
        _drop_branches(document)
        document["metadata"]["active_branch"] = "alt"

    said = refused(tmp_path, changed(exported, active_alt))
    assert 'metadata has no "branches"' in said
    assert "is not one of" not in said
    head = exported["metadata"]["branches"]["main"]["head"]
    assert f'"{head}"' in said


def test_an_export_without_messages_needs_no_branches(exported: dict[str, Any]) -> None:
    def empty(document: dict[str, Any]) -> None:
        _drop_branches(document)
        document["messages"] = []

    assert list(parse_export(changed(exported, empty)).metadata.branches) == ["main"]


def _schema_99(document: dict[str, Any]) -> None:
    document["metadata"]["schema_version"] = 99


def test_an_export_from_a_newer_schema_is_refused_saying_to_upgrade(
    tmp_path: Path, exported: dict[str, Any]
) -> None:
    document = changed(exported, _schema_99)
    said = refused(tmp_path, document)
    assert "written by a newer cm_notebook (schema 99)" in said
    assert "Upgrade cm_notebook to import it." in said
    with pytest.raises(SchemaVersionError, match=r"schema 99.*Upgrade cm_notebook"):
        parse_export(document)
    # A newer schema may bring fields this version does not know: still "upgrade".
    document["metadata"]["from_the_future"] = True
    with pytest.raises(SchemaVersionError, match="Upgrade cm_notebook to import it"):
        parse_export(document)


def test_import_document_refuses_a_newer_schema_and_writes_nothing(
    tmp_path: Path, exported: dict[str, Any]
) -> None:
    document = parse_export(exported)
    newer = document.model_copy(
        update={"metadata": document.metadata.model_copy(update={"schema_version": 99})}
    )

    async def imported() -> None:
        async with FileStore(tmp_path / "data") as store:
            with pytest.raises(SchemaVersionError, match="Upgrade cm_notebook to import it"):
                await import_document(store, newer)
            assert await store.list_contexts() == []

    anyio.run(imported)


def test_an_export_of_a_newer_format_is_refused_saying_to_upgrade(
    tmp_path: Path, exported: dict[str, Any]
) -> None:
    def format_99(document: dict[str, Any]) -> None:
        document["format_version"] = 99

    said = refused(tmp_path, changed(exported, format_99))
    assert "format_version 99 was written by a newer cm_notebook" in said
    assert "upgrade cm_notebook" in said


@pytest.mark.parametrize("version", [0, -1, True, False, "1", 1.0, None])
def test_a_format_version_that_is_not_a_whole_number_from_1_is_refused(
    tmp_path: Path, exported: dict[str, Any], version: Any
) -> None:
    def odd(document: dict[str, Any]) -> None:
        document["format_version"] = version

    said = refused(tmp_path, changed(exported, odd))
    assert "invalid cm_notebook export: format_version: " in said
    with pytest.raises(InvalidInputError, match="format_version"):
        parse_export(changed(exported, odd))
