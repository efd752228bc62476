"""The session options (provider, tools, approval...) shared by ``create`` and ``open``."""

from __future__ import annotations

from pathlib import Path

import pytest

from cm_notebook.errors import InvalidInputError, StateError
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def test_a_misspelt_option_is_refused_like_a_misspelt_argument(data_dir: Path) -> None:
    with pytest.raises(TypeError, match="create\\(\\) got an unexpected keyword argument 'tool'"):
        ContextSession.create("t", data_dir=data_dir, tool=[])  # type: ignore[call-arg]
    assert ContextSession.list(data_dir) == []
    session = ContextSession.create("t", data_dir=data_dir, provider=ScriptedProvider(["hi"]))
    with pytest.raises(TypeError, match="open\\(\\) got an unexpected keyword argument 'retries'"):
        ContextSession.open(session.id, data_dir=data_dir, retries=3)  # type: ignore[call-arg]
    session.close()


def test_options_are_validated_for_create_and_open_alike(data_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="max_tool_rounds"):
        ContextSession.create("t", data_dir=data_dir, max_tool_rounds=-1)
    session = ContextSession.create(
        "t", data_dir=data_dir, provider=ScriptedProvider(["hi"]), max_tool_rounds=3
    )
    assert session.max_tool_rounds == 3
    # Options equal to the defaults share the live session; anything else is refused.
    assert ContextSession.open(session.id, data_dir=data_dir, tools=[], max_tool_rounds=10) is (
        session
    )
    session.close()
    with pytest.raises(StateError, match="already open"):
        ContextSession.open(session.id, data_dir=data_dir, tool_timeout=5)
    session.close()
    with pytest.raises(InvalidInputError, match="tool_timeout"):
        ContextSession.open(session.id, data_dir=data_dir, tool_timeout=0)
    reopened = ContextSession.open(session.id, data_dir=data_dir, tool_timeout=5)
    assert reopened.tool_timeout == 5
    assert reopened.max_tool_rounds == 10
    reopened.close()
