"""Metadata keys that were unknown (kept as they came) before they were declared:
``tool_status``, ``endpoint``, ``failed_attempts``. An export or a stored reply that
holds one of another shape still imports; the value is kept aside under
``<name>_not_understood`` and the field reads as empty.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cm_notebook.model import ToolCallStatus
from cm_notebook.session import ContextSession
from cm_notebook.testing import ScriptedProvider

#: (key, a value of another shape, what the field reads as).
ODD_VALUES: list[tuple[str, Any, Any]] = [
    ("endpoint", {"name": "gw"}, None),
    ("endpoint", 5, None),
    ("endpoint", "x" * 3000, None),
    ("failed_attempts", ["timeout"], []),
    ("failed_attempts", {"error": "x"}, []),
    ("failed_attempts", [{"error": "x", "status_code": "n/a"}], []),
    ("tool_status", "ok", None),
    ("tool_status", "running", None),
    ("tool_status", {"done": True}, None),
]


def exported_with(data_dir: Path, key: str, value: Any) -> str:
    """A one-turn context's export, with ``key: value`` in its reply's metadata."""
    session = ContextSession.create("t", data_dir=data_dir, provider=ScriptedProvider(["hi"]))
    try:
        session.send("q").result(10)
        document = json.loads(session.export().model_dump_json())
    finally:
        session.close()
    (reply,) = [m for m in document["messages"] if m["role"] == "assistant"]
    reply["metadata"][key] = value
    return json.dumps(document)


def imported_reply_metadata(data_dir: Path, text: str) -> tuple[Any, dict[str, Any]]:
    session = ContextSession.from_export(
        text, new_id=True, data_dir=data_dir, provider=ScriptedProvider([])
    )
    try:
        (reply,) = [m for m in session.history() if m.role == "assistant"]
        return reply.metadata, json.loads(session.export().model_dump_json())
    finally:
        session.close()


@pytest.mark.parametrize(("key", "value", "read"), ODD_VALUES)
def test_an_export_with_a_value_of_another_shape_imports_and_keeps_it(
    tmp_path: Path, key: str, value: Any, read: Any
) -> None:
    metadata, again = imported_reply_metadata(tmp_path, exported_with(tmp_path, key, value))
    assert getattr(metadata, key) == read
    assert (metadata.model_extra or {})[f"{key}_not_understood"] == value
    # Exported again, the value is still there (aside), and imports again.
    (reply,) = [m for m in again["messages"] if m["role"] == "assistant"]
    assert reply["metadata"][f"{key}_not_understood"] == value
    metadata, _ = imported_reply_metadata(tmp_path, json.dumps(again))
    assert (metadata.model_extra or {})[f"{key}_not_understood"] == value


def test_failed_attempts_null_reads_as_none_failed(tmp_path: Path) -> None:
    metadata, _ = imported_reply_metadata(
        tmp_path, exported_with(tmp_path, "failed_attempts", None)
    )
    assert metadata.failed_attempts == []
    assert not any(key.endswith("_not_understood") for key in metadata.model_extra or {})


@pytest.mark.parametrize(
    ("key", "value", "read"),
    [
        ("endpoint", "https://gw.example/v1", "https://gw.example/v1"),
        ("tool_status", "denied", ToolCallStatus.DENIED),
        (
            "failed_attempts",
            [{"error": "x", "text": "", "status_code": 429, "other": 1}],
            [{"error": "x", "text": "", "status_code": 429, "other": 1}],
        ),
    ],
)
def test_a_value_of_the_declared_shape_reads_as_itself(
    tmp_path: Path, key: str, value: Any, read: Any
) -> None:
    metadata, _ = imported_reply_metadata(tmp_path, exported_with(tmp_path, key, value))
    assert getattr(metadata, key) == read
    assert f"{key}_not_understood" not in (metadata.model_extra or {})
