"""Migration from v1: a record nested too deeply to store fails on its own, and the
other records of the file migrate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cli_process import cli

from cm_notebook.migrate import read_v1


def nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = {"k": value}
    return value


def good(i: int) -> dict[str, Any]:
    return {
        "id": f"good{i}",
        "title": f"good {i}",
        "messages": [{"role": "user", "content": f"{i}"}],
    }


DEEP = {
    "id": "deepone",
    "title": "deep",
    "messages": [
        {
            "role": "assistant",
            "content": "hi",
            "tool_calls": [{"id": "c", "name": "f", "arguments": nested(120), "result": "ok"}],
        }
    ],
}


def test_one_deep_record_fails_alone_and_the_rest_migrate(tmp_path: Path) -> None:
    source = tmp_path / "contexts.json"
    source.write_text(json.dumps([good(0), DEEP, good(1)]))
    data = tmp_path / "data"
    run = cli(data, "migrate", str(source), "--no-backup")
    assert run.returncode == 1, run.stderr  # one context failed
    report = " ".join(run.stdout.split())
    assert "2 migrated, 0 partial, 0 skipped, 1 failed" in report
    assert "failed 'deep' (#1)" in report
    assert "nested deeper than 100 levels" in report
    assert "take the deeply nested value out of this record" in report
    listing = cli(data, "ls").stdout
    assert "good0" in listing
    assert "good1" in listing
    assert "deepone" not in listing


def test_in_a_localstorage_export_and_a_folder_too(tmp_path: Path) -> None:
    export = tmp_path / "localstorage.json"
    state = {"chats": [good(0), DEEP], "currentChatId": "good0"}
    export.write_text(json.dumps({"state": state, "version": 3}))
    first, deep = read_v1(export).contexts
    assert first.fatal is None
    assert deep.fatal is not None
    assert "nested deeper than 100 levels" in deep.fatal
    folder = tmp_path / "files"
    folder.mkdir()
    pool = {"id": "p", "message_pool": {"m": {"role": "user", "content": "x"}}, "branches": {}}
    (folder / "a.json").write_text(json.dumps(pool))
    (folder / "b.json").write_text(json.dumps({**pool, "id": "q", "extra": nested(120)}))
    a, b = read_v1(folder).contexts
    assert a.fatal is None
    assert b.fatal is not None
    assert "nested deeper than 100 levels" in b.fatal
    assert b.source_file == folder / "b.json"
