"""Tool-call arguments a model wrote as no JSON object are kept, not dropped.

A model can cut its arguments off (``{"city": "Par``), write them malformed or as an
array: the call fails closed (its ``arguments`` stay ``{}``, since a ``ToolCall`` holds
only an object) and the text the model wrote is kept in the reply's metadata, by call
id, stored on disk, and shown where the call is shown: the static HTML, the live
transcript's data, the Markdown export. Valid arguments add nothing to the metadata,
so files without such calls stay as they were. The model is a ScriptedProvider.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from test_session_support import DEADLINE
from test_session_tools import tool_messages

from cm_notebook.model import ToolCallStatus
from cm_notebook.render import message_html
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider
from cm_notebook.tools import tool
from cm_notebook.widgets._messages import message_dict


def _message_file(data_dir: Path, context_id: str, message_id: str) -> Path:
    return data_dir / "contexts" / context_id / "messages" / f"{message_id}.json"


@tool(policy="auto")
def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


@pytest.mark.parametrize(
    "written",
    ['{"city": "Par', '["Paris"]', "city=Paris", '{"city": "Paris"} trailing'],
)
def test_arguments_that_are_no_json_object_are_kept_beside_the_failed_call(
    new_session: Callable[..., ContextSession], data_dir: Path, written: str
) -> None:
    fake = (
        ScriptedProvider(strict=True)
        .tool_call("weather", written, text="Checking.")
        .reply("Sorry, let me retry.")
    )
    session = new_session(provider=fake, tools=[weather])
    session.send("weather?").result(DEADLINE)
    reply = session.history()[1]
    (call,) = reply.tool_calls
    assert (call.status, call.arguments) == (ToolCallStatus.FAILED, {})
    assert reply.metadata.tool_arguments_text == {call.id: written}
    # On disk, and read back by another session of the same store.
    again = ContextSession.open(session.id, data_dir=data_dir)
    try:
        assert again.history()[1].metadata.tool_arguments_text == {call.id: written}
    finally:
        again.close()
    stored = json.loads(_message_file(data_dir, session.id, reply.id).read_text())
    assert stored["metadata"]["tool_arguments_text"] == {call.id: written}
    # The model is told what was wrong; its call is sent back with empty arguments.
    assert (
        "error: Invalid arguments for tool 'weather'"
        in tool_messages(fake.requests[1].messages)[call.id]
    )


def test_the_written_text_is_shown_where_the_call_is_shown(
    new_session: Callable[..., ContextSession],
) -> None:
    written = '{"city": "<b>Par'
    fake = ScriptedProvider(strict=True).tool_call("weather", written).reply("Sorry.")
    session = new_session(provider=fake, tools=[weather])
    session.send("weather?").result(DEADLINE)
    reply = session.history()[1]
    assert len(reply.tool_calls) == 1
    html = message_html(reply)
    assert "{&quot;city&quot;: &quot;&lt;b&gt;Par" in html
    assert "weather</bdi>(<bdi>{}</bdi>)" not in html
    assert message_dict(reply)["calls"][0]["args"] == written
    assert f"```\n{written}\n```" in session.export().to_markdown()


def test_valid_arguments_add_nothing_to_the_metadata(
    new_session: Callable[..., ContextSession], data_dir: Path
) -> None:
    fake = (
        ScriptedProvider(strict=True)
        .tool_call("weather", {"city": "Paris"})
        .tool_call("weather", {"town": "Paris"})  # a JSON object, kept as the arguments
        .reply("Done.")
    )
    session = new_session(provider=fake, tools=[weather])
    session.send("weather?").result(DEADLINE)
    replies = [m for m in session.history() if m.tool_calls]
    assert [m.tool_calls[0].status for m in replies] == [
        ToolCallStatus.DONE,
        ToolCallStatus.FAILED,
    ]
    assert replies[1].tool_calls[0].arguments == {"town": "Paris"}
    for reply in replies:
        assert reply.metadata.tool_arguments_text == {}
        stored = json.loads(_message_file(data_dir, session.id, reply.id).read_text())
        assert "tool_arguments_text" not in stored["metadata"]
