"""A branch's provider instance, with another process deleting the branch and making
a new one of the same name.

An instance (a ScriptedProvider, a fan-out arm's provider) cannot be stored: the
process it was given in keeps it. It belongs to that branch only: a branch made again
under the name elsewhere answers with its own stored provider here too, as it does in
every other process, whether or not this process heard of the delete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from session_ops_child import OpsChild
from test_session_support import DEADLINE

from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider


def test_a_branch_made_again_elsewhere_answers_with_its_stored_provider(
    data_dir: Path, new_session: Callable[..., ContextSession]
) -> None:
    session = new_session(provider=ScriptedProvider())
    session.send("root").result(DEADLINE)
    mine = ScriptedProvider(model="model-X").reply("from model-X").reply("from model-X")
    session.branch("x", provider=mine, switch=False)
    assert session.send("first", branch="x").result(DEADLINE).content == "from model-X"
    other = OpsChild(data_dir, session.id)
    try:
        made = other.run(op="remake", branch="x", provider="scripted:model-Y")
    finally:
        other.close()
    assert made == "scripted:model-Y"
    assert session.branches["x"].provider is not None
    assert session.branches["x"].provider.spec == "scripted:model-Y"
    reply = session.send("who answers?", branch="x").result(DEADLINE)
    assert (reply.metadata.model, reply.content) == ("model-Y", "echo: who answers?")
    # Nor is the old instance handed on to a branch forked from the new one.
    session.branch("y", from_branch="x", switch=False)
    reply = session.send("and here?", branch="y").result(DEADLINE)
    assert (reply.metadata.model, reply.content) == ("model-Y", "echo: and here?")
    assert mine.remaining == 1  # asked once, before the branch was made again
