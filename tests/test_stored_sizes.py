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


def test_a_branch_stored_with_longer_parameters_still_answers(data_dir: Path) -> None:
    # Stored by an earlier version, which had no limit: only new input is refused.
    import anyio

    from cm_notebook.store import FileStore

    model = ScriptedProvider().reply("one").reply("two").reply("three").reply("four")
    with ContextSession.create(data_dir=data_dir, provider=model) as session:
        context_id = session.id

    async def old_branch() -> None:
        async with FileStore(data_dir) as store:
            await store.create_branch(context_id, "long", head=None, params={"stop": LONG_STOP})

    anyio.run(old_branch)
    with ContextSession.open(context_id, data_dir=data_dir, provider=model) as session:
        assert session.send("hi", branch="long").result(30).content == "one"
        assert session.regenerate(branch="long").result(30).content == "two"
        assert model.last_request.params["stop"] == LONG_STOP
        session.branch("longer", from_branch="long", temperature=0.5)
        assert session.send("again", branch="longer").result(30).content == "three"
        with pytest.raises(InvalidInputError, match="generation parameters take"):
            session.send("hi", branch="long", stop=[*LONG_STOP, "y"])
