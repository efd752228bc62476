"""A context whose ``signals/`` folder is not a folder: an error naming it, never a bare OSError."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cm_notebook.errors import CorruptDataError
from cm_notebook.session import ContextSession


def test_a_file_in_place_of_the_signals_folder_is_named(tmp_path: Path) -> None:
    session = ContextSession.create(data_dir=tmp_path, provider="scripted")
    session.send("hi").result(30)
    cid = session.id
    session.close()
    signals = tmp_path / "contexts" / cid / "signals"
    shutil.rmtree(signals)
    signals.write_text("")

    with pytest.raises(CorruptDataError) as raised:
        ContextSession.open(cid, data_dir=tmp_path)
    assert raised.value.path == signals
    assert "signals is a file, not the folder of the context's signal log" in str(raised.value)
    assert "move it out of the way" in str(raised.value)

    # Moved out of the way, as the error says: the context opens, its messages intact.
    signals.unlink()
    session = ContextSession.open(cid, data_dir=tmp_path)
    try:
        assert [m.content for m in session.history()] == ["hi", "echo: hi"]
    finally:
        session.close()
