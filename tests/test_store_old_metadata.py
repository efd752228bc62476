"""Contexts an earlier version wrote read back whole, though today's rules refuse what
they hold when it is new: a branch name that mixes scripts or has compatibility
characters (``β-test``, ``x²``, ``ﬁnal-run``: refused since names must not be open to
look-alikes), provider settings with a credential in them (refused since secrets are
never stored). Each test writes ``metadata.json`` as such a version did (schema 1 or 2),
as literal JSON, beside messages stored by this one.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest

from cm_notebook.errors import CorruptDataError, InvalidIdError, ProviderSetupError
from cm_notebook.ids import validate_new_branch_name
from cm_notebook.redact import REDACTED
from cm_notebook.session import ContextSession
from cm_notebook.store.diagnostics import StoreWarning
from cm_notebook.testing import ScriptedProvider

OLD_NAMES = ["\u03b2-test", "x\u00b2", "\ufb01nal-run"]  # β-test, x², ﬁnal-run
PASSWORD = "hunter22secret"
CREDENTIAL_URL = f"http://bob:{PASSWORD}@llm.internal:8080/v1"
TOKEN = "tok3n-4f9a8b7c6d5e4f3a2b1c"


def stored_context(data_dir: Path) -> tuple[str, list[str]]:
    """A context of one turn ("q", "a1") stored by this version: (its id, message ids)."""
    session = ContextSession.create(
        "old", provider=ScriptedProvider().reply("a1"), data_dir=data_dir
    )
    try:
        session.send("q").result(10)
        return session.id, [m.id for m in session.history()]
    finally:
        session.close()


def old_metadata(
    context_id: str,
    branches: dict[str, str],
    provider: dict[str, Any],
    *,
    schema: int = 1,
    extra_branch_fields: dict[str, Any] | None = None,
) -> str:
    """``metadata.json`` as an earlier version wrote it: ``branches`` maps each name to
    its head (the first is the active branch); ``extra_branch_fields`` go into every
    branch but main (a schema 2 branch's own provider, parameters)."""
    first = next(iter(branches.values()))
    written = {
        "id": context_id,
        "title": "old",
        "created_at": "2026-11-30T09:00:00.000000Z",
        "updated_at": "2026-11-30T09:00:05.000000Z",
        "branches": {
            name: {
                "name": name,
                "head": head,
                "forked_from": None if name == "main" else first,
                "created_at": "2026-11-30T09:00:01.000000Z",
                "description": "",
                **({} if name == "main" else extra_branch_fields or {}),
            }
            for name, head in branches.items()
        },
        "active_branch": next(iter(branches)),
        "provider": provider,
        "system_prompt": None,
        "tags": [],
        "schema_version": schema,
        "extra": {},
    }
    return json.dumps(written, ensure_ascii=False, indent=2) + "\n"


def write_metadata(data_dir: Path, context_id: str, text: str) -> Path:
    path = data_dir / "contexts" / context_id / "metadata.json"
    path.write_text(text, encoding="utf-8")
    return path


def files_holding(data_dir: Path, secret: str) -> list[Path]:
    """Every file under ``data_dir`` whose bytes contain ``secret``."""
    return [p for p in data_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# -- branch names an earlier version allowed ----------------------------------------------


@pytest.mark.parametrize("name", OLD_NAMES)
def test_a_branch_name_an_earlier_version_allowed_reads_and_stays_usable(
    data_dir: Path, name: str
) -> None:
    context_id, (question, answer) = stored_context(data_dir)
    scripted = {"spec": "scripted:scripted", "params": {}}
    write_metadata(
        data_dir, context_id, old_metadata(context_id, {"main": answer, name: answer}, scripted)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)  # not skipped as damaged
        listed = ContextSession.list(data_dir=data_dir)
    assert [(m.id, sorted(m.branches)) for m in listed] == [(context_id, sorted(["main", name]))]

    replies = ScriptedProvider().reply("on it").reply("forked").reply("edited")
    session = ContextSession.open(context_id, data_dir=data_dir, provider=replies)
    try:
        for branch in session.branches:
            assert [m.content for m in session.history(branch)] == ["q", "a1"]
        session.switch(name)
        session.send("more").result(10)
        assert [m.content for m in session.history(name)] == ["q", "a1", "more", "on it"]
        # A fork of it by name, and one the package names itself (an edit's), whose
        # name must pass today's rules: made from the old one's plain spelling.
        session.branch("fork", from_branch=name)
        session.send("and", branch="fork").result(10)
        session.switch(name)
        session.edit(question, "q2").result(10)
        edited = session.active_branch
        assert validate_new_branch_name(edited) == edited
        assert [m.content for m in session.history(edited)] == ["q2", "edited"]
        # New input is still held to today's rules.
        with pytest.raises(InvalidIdError):
            session.branch(f"{name}-new", from_branch=name)
        # Export and import keep it.
        document = session.export()
    finally:
        session.close()
    copy = ContextSession.from_export(document, new_id=True, data_dir=data_dir)
    try:
        assert name in copy.branches
        assert [m.content for m in copy.history(name)] == ["q", "a1", "more", "on it"]
    finally:
        copy.close()


@pytest.mark.parametrize("name", ["../..", "a/b", "a\\b", "new\nline", "tab\tname", ".."])
def test_a_stored_branch_name_with_a_separator_or_control_character_is_still_refused(
    data_dir: Path, name: str
) -> None:
    context_id, (_, answer) = stored_context(data_dir)
    scripted = {"spec": "scripted:scripted", "params": {}}
    text = old_metadata(context_id, {"main": answer, name: answer}, scripted)
    path = write_metadata(data_dir, context_id, text)
    with pytest.warns(StoreWarning, match="branch name"):
        assert ContextSession.list(data_dir=data_dir) == []
    with pytest.raises(CorruptDataError, match="branch name"):
        ContextSession.open(context_id, data_dir=data_dir)
    assert path.read_text(encoding="utf-8") == text  # nothing lost


# -- provider settings stored with a credential -------------------------------------------


def test_provider_settings_stored_with_a_credential_read_redacted(data_dir: Path) -> None:
    context_id, (_, answer) = stored_context(data_dir)
    provider = {
        "spec": "openai:gpt-4o-mini",
        "params": {"base_url": CREDENTIAL_URL, "default_headers": {"X-Api-Token": TOKEN}},
    }
    write_metadata(data_dir, context_id, old_metadata(context_id, {"main": answer}, provider))
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        assert [m.id for m in ContextSession.list(data_dir=data_dir)] == [context_id]

    session = ContextSession.open(context_id, data_dir=data_dir)
    try:
        assert [m.content for m in session.history()] == ["q", "a1"]
        params = session.metadata.provider.params
        assert params["base_url"] == f"http://{REDACTED}@llm.internal:8080/v1"
        assert params["default_headers"] == {"X-Api-Token": REDACTED}
        shown = [
            repr(session),
            repr(session.metadata),
            session.metadata.model_dump_json(),
            session.export().to_json(),
        ]
        for text in shown:
            assert PASSWORD not in text
            assert TOKEN not in text
        # Built from what was read, the provider would send REDACTED as the credential:
        # refused before anything is sent, saying what to do.
        with pytest.raises(ProviderSetupError, match=r"in base_url, default_headers .*provider="):
            session.send("hello")
        assert [m.content for m in session.history()] == ["q", "a1"]
        # The next write of metadata.json stores the settings as read: without them.
        session.branch("later")
    finally:
        session.close()
    assert files_holding(data_dir, PASSWORD) == []
    assert files_holding(data_dir, TOKEN) == []
    # With the provider given, as the error says, the context is used as before.
    reopened = ContextSession.open(
        context_id, data_dir=data_dir, provider=ScriptedProvider().reply("a2")
    )
    try:
        reopened.send("hello", branch="main").result(10)
        assert [m.content for m in reopened.history("main")] == ["q", "a1", "hello", "a2"]
    finally:
        reopened.close()


def test_a_branch_stored_with_a_credential_in_its_settings_reads_redacted(
    data_dir: Path,
) -> None:
    context_id, (_, answer) = stored_context(data_dir)
    own = {
        "provider": {"spec": "openai:gpt-4o-mini", "params": {"base_url": CREDENTIAL_URL}},
        "params": {"extra_body": {"auth": f"Bearer {TOKEN}"}},
    }
    scripted = {"spec": "scripted:scripted", "params": {}}
    text = old_metadata(
        context_id,
        {"main": answer, "own": answer},
        scripted,
        schema=2,
        extra_branch_fields=own,
    )
    write_metadata(data_dir, context_id, text)
    session = ContextSession.open(context_id, data_dir=data_dir)
    try:
        metadata = session.metadata
    finally:
        session.close()
    branch = metadata.branches["own"]
    assert branch.provider is not None
    assert branch.provider.params == {"base_url": f"http://{REDACTED}@llm.internal:8080/v1"}
    assert branch.params == {"extra_body": {"auth": REDACTED}}
    assert PASSWORD not in metadata.model_dump_json()
    assert TOKEN not in metadata.model_dump_json()


def test_a_spec_stored_with_a_key_in_it_reads_redacted(data_dir: Path) -> None:
    key = "sk-proj-" + "a1b2c3d4e5" * 3
    context_id, (_, answer) = stored_context(data_dir)
    provider = {"spec": f"openai:{key}", "params": {}}  # a key typed for the model
    write_metadata(data_dir, context_id, old_metadata(context_id, {"main": answer}, provider))
    session = ContextSession.open(context_id, data_dir=data_dir)
    try:
        assert session.metadata.provider.spec == f"openai:{REDACTED}"
        assert key not in repr(session.metadata)
        with pytest.raises(ProviderSetupError, match="credential in the spec"):
            session.send("hello")
    finally:
        session.close()


def test_settings_damaged_otherwise_are_still_refused_without_the_secret(
    data_dir: Path,
) -> None:
    # A credential is no reason to refuse the file, but it is not the only thing checked.
    context_id, (_, answer) = stored_context(data_dir)
    provider = {"spec": "openai:gpt-4o-mini", "params": {"base_url": CREDENTIAL_URL}}
    text = old_metadata(context_id, {"main": answer}, provider).replace(
        '"active_branch": "main"', '"active_branch": "gone"'
    )
    write_metadata(data_dir, context_id, text)
    with pytest.raises(CorruptDataError, match="active branch 'gone'") as info:
        ContextSession.open(context_id, data_dir=data_dir)
    assert PASSWORD not in str(info.value)
