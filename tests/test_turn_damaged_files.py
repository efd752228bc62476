"""A context's files damaged while a turn runs: the turn ends with the files' own error
and remedy, not the advice for a full disk, and goes on once they are fixed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import DEADLINE, Recorder, entered

from cm_notebook.errors import CorruptDataError
from cm_notebook.events import ErrorReported
from cm_notebook.fsm import State
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def test_metadata_damaged_mid_reply_is_named_with_its_remedy(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    fake = ScriptedProvider().reply("one two three", chunks="words", delay=0.2)
    session = new_session(provider=fake)
    recorder = Recorder(session)
    metadata = data_dir / "contexts" / session.id / "metadata.json"
    intact = metadata.read_bytes()
    turn = session.send("hello")
    recorder.wait(entered(State.STREAMING))
    metadata.write_text('{"garbage": ', encoding="utf-8")
    with pytest.raises(CorruptDataError, match=r"metadata\.json is not valid JSON"):
        turn.result(DEADLINE)
    recorder.wait(entered(State.IDLE))
    [error] = recorder.of(ErrorReported)
    assert error.message.startswith("the turn could not go on: context metadata ")
    assert "Restore it from a backup" in error.message  # the file's own remedy
    assert "disk space" not in error.message
    assert ".." not in error.message
    metadata.write_bytes(intact)  # fixed: the conversation goes on
    fake.reply("fine")
    assert session.send("again").result(DEADLINE).content == "fine"
