"""Branch labels refuse control characters where they are given, like tags, titles and
branch descriptions; labels already stored with one still read."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import close_all

from cm_notebook.errors import InvalidInputError
from cm_notebook.session import ContextSession
from cm_notebook.store import FileStore
from cm_notebook.testing import ScriptedProvider


@pytest.mark.parametrize(
    ("labels", "found"),
    [
        ({"note": "red\x1b[31m"}, "U+001B"),  # an escape sequence
        ({"note": "a\x00b"}, "U+0000"),
        ({"note": "a\x9bb"}, "U+009B"),  # a C1 control: a terminal's one-byte CSI
        ({"note": "a\x7f"}, "U+007F"),
        ({"note": "two\r\nlines\t"}, "U+0009, U+000A, U+000D"),
        ({"no\x1bte": "x"}, "U+001B"),
        # Line and paragraph separators break the one line; bidi overrides reorder it.
        ({"note": "line one\u2028line two"}, "U+2028"),
        ({"note": "one\u2029two"}, "U+2029"),
        ({"note": "abc\u202edef"}, "U+202E"),
        ({"note": "a\u2066b\u2069"}, "U+2066, U+2069"),
    ],
)
def test_a_label_with_control_characters_is_refused_naming_them(
    new_session: Callable[..., ContextSession], labels: dict[str, str], found: str
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.label("main", keep="yes")
    with pytest.raises(InvalidInputError) as caught:
        session.label("main", labels)
    message = str(caught.value)
    assert "cannot contain control characters" in message
    assert f"(found {found})" in message
    assert "remove them" in message
    assert "one line" in message
    assert "\x1b" not in message  # the key is shown escaped
    assert session.branches["main"].labels == {"keep": "yes"}  # nothing was changed


def test_a_refused_label_value_is_not_quoted(
    new_session: Callable[..., ContextSession],
) -> None:
    session = new_session(provider=ScriptedProvider())
    with pytest.raises(InvalidInputError) as caught:
        session.label("main", token="secret-ish\x1b")
    assert "secret-ish" not in str(caught.value)
    assert "'token'" in str(caught.value)


@pytest.mark.anyio
async def test_labels_stored_with_a_control_character_still_read_and_change(
    data_dir: Path,
) -> None:
    # Stored as an earlier version took it (C1 controls were let through then).
    session = ContextSession.create(provider=ScriptedProvider(), data_dir=data_dir)
    cid = session.id
    close_all([session])
    async with FileStore(data_dir) as store:
        await store.update_branch(cid, "main", labels={"note": "a\x9bb"})
    reopened = ContextSession.open(cid, data_dir=data_dir)
    try:
        assert reopened.branches["main"].labels == {"note": "a\x9bb"}
        reopened.label("main", run="2")  # the stored one is kept as it is
        assert reopened.branches["main"].labels == {"note": "a\x9bb", "run": "2"}
        assert reopened.pin_baseline("main") == "main"
        reopened.label("main", note=None)  # and can be removed
        assert reopened.branches["main"].labels == {"run": "2", "baseline": "true"}
    finally:
        close_all([reopened])
