"""Generation parameters and provider options are stored with every reply and in the
context's metadata: megabytes of them are refused, with what to do, before anything is
written."""

from __future__ import annotations

from pathlib import Path

import pytest

from cm_notebook import ContextSession
from cm_notebook.errors import InvalidInputError
from cm_notebook.params import MAX_PARAMETERS_CHARS, MAX_PROVIDER_OPTIONS_CHARS
from cm_notebook.testing import ScriptedProvider

LONG_STOP = ["x" * MAX_PARAMETERS_CHARS]


def test_long_generation_parameters_are_refused_for_a_send_and_a_branch(data_dir: Path) -> None:
    model = ScriptedProvider().reply("fine")
    with ContextSession.create(data_dir=data_dir, provider=model) as session:
        with pytest.raises(InvalidInputError, match="generation parameters take 100,0"):
            session.send("hi", stop=LONG_STOP)
        with pytest.raises(InvalidInputError, match="at most 100,000 are stored"):
            session.branch("long", stop=LONG_STOP)
        assert session.history() == []
        assert sorted(session.branches) == ["main"]
        # Short ones are fine.
        assert session.send("hi", stop=["x" * 1000]).result(30).content == "fine"


def test_long_provider_options_are_refused_before_a_context_is_made(data_dir: Path) -> None:
    script = [{"reply": "y" * MAX_PROVIDER_OPTIONS_CHARS}]
    with pytest.raises(InvalidInputError, match="provider_options take 1,000,0"):
        ContextSession.create(
            data_dir=data_dir, provider="scripted", provider_options={"script": script}
        )
    assert ContextSession.list(data_dir) == []
