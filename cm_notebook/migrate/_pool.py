"""Reading v1's per-context files: one ``<uuid>.json`` per context, or a folder of them.

One file holds one context::

    {"id": "<uuid>", "title": ..., "config": {...},
     "message_pool": {"<message uuid>": {"id": ..., "parent_id": "<uuid>" | null,
                      "message": {"role": "User", "content": [{"type": "text", ...}],
                                  "tool_calls": [...], "tool_result": {...},
                                  "metadata": {"created_at": ...}}}},
     "branches": {"main": {"name": "main", "message_ids": [...],
                           "system_prompt": {"id": ..., "content": ...} | null}},
     "active_branch_name": "main"}

Each pool node is flattened into the same record the other v1 shapes have (so the
roles, parts, tool calls and timestamps are read by the one reader in ``_v1``), and
keeps its ``parent_id``: messages that no branch lists still hang where they were.
The pool is a hash map whose order means nothing, so messages are put parents first
(siblings by time, then file order), which keeps conversion deterministic.

A folder is read file by file (UTF-8, or UTF-16/32 as Windows tools save JSON). A file
that cannot be read (not such text, not JSON, not
a per-context file, a folder or a FIFO) becomes a record with ``fatal`` set naming
the file, so the migration reports it and carries on with the others.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._cli_advice import path_argument
from .._input_files import read_input_file
from .._json_bytes import NotJSONText, decode_json_bytes
from ..errors import MigrationError
from ..store.paths import INDEX_NAME, METADATA_NAME
from ._progress import NO_PROGRESS, Progress
from ._util import (
    FILE_DEPTH,
    canonical_json,
    json_text,
    load_json,
    replaced_note,
    sha256_text,
    without_half_emojis,
)
from ._v1 import (
    _MSG_CONTENT,
    _MSG_TIME,
    _MSG_TOOL_CALL_ID,
    EXPECTED_SHAPES,
    V1Context,
    V1Message,
    V1Source,
    _context,
    _first,
    _id_text,
    not_v1_but_export,
    parse_timestamp,
    refused_if_too_deep,
)

__all__ = [
    "folder_files",
    "is_pool_record",
    "not_v1_but_context_folder",
    "pool_context",
    "read_v1_folder",
]

_PARENT = ("parent_id", "parentId")
_LATEST = datetime.max.replace(tzinfo=timezone.utc)


def is_pool_record(data: Any) -> bool:
    """True if decoded JSON ``data`` is one v1 per-context file."""
    return isinstance(data, dict) and "message_pool" in data


def _flatten(key: str, node: dict[str, Any]) -> dict[str, Any]:
    """A pool node as a flat v1 message record."""
    inner = node.get("message")
    if isinstance(inner, dict):
        record = {**inner, **{k: v for k, v in node.items() if k != "message"}}
    else:
        record = dict(node)
    # The pool key is what branches and parent links refer to, so it is the id.
    node_id = record.get("id")
    if node_id is not None and _id_text(node_id) != key:
        record["v1_node_id"] = node_id
    record["id"] = key
    meta = record.get("metadata")
    if isinstance(meta, dict) and _first(record, _MSG_TIME)[0] is None:
        name, when = _first(meta, _MSG_TIME)
        if name is not None:
            record["created_at"] = when
    result = record.get("tool_result")
    if isinstance(result, dict):
        answered = result.get("request_id", result.get("tool_call_id"))
        if answered is not None and _first(record, _MSG_TOOL_CALL_ID)[0] is None:
            record["tool_call_id"] = answered
        # The result is the tool message's text when the message has none of its own.
        if _first(record, _MSG_CONTENT)[1] in (None, "", []) and "result" in result:
            record["content"] = json_text(result["result"])
    return record


def _parents_first(records: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """Pool entries ordered so that every message comes after its parent."""
    keys = {key for key, _ in records}
    Entry = tuple[int, tuple[str, dict[str, Any]]]
    children: dict[str | None, list[Entry]] = defaultdict(list)
    for position, (key, record) in enumerate(records):
        parent_key = _id_text(_first(record, _PARENT)[1])
        if parent_key not in keys or parent_key == key:
            parent_key = None  # a root, or an orphan whose parent is not in the pool
        children[parent_key].append((position, (key, record)))

    def when(item: Entry) -> tuple[datetime, int]:
        stamp = parse_timestamp(_first(item[1][1], _MSG_TIME)[1])
        return stamp or _LATEST, item[0]

    order: list[tuple[str, dict[str, Any]]] = []
    seen: set[int] = set()
    stack = sorted(children[None], key=when, reverse=True)
    while stack:
        position, entry = stack.pop()
        if position in seen:
            continue
        seen.add(position)
        order.append(entry)
        stack.extend(sorted(children[entry[0]], key=when, reverse=True))
    # Parent links that form a loop reach no root: keep them, in file order.
    order.extend(entry for position, entry in enumerate(records) if position not in seen)
    return order


def pool_context(
    record: dict[str, Any],
    position: int,
    fallback: datetime,
    *,
    key: str | None = None,
    source_file: Path | None = None,
) -> V1Context:
    """One per-context file's record as a V1Context (``key``: the id if it has none)."""
    refused = refused_if_too_deep(record, position, "context-files", fallback, key)
    if refused is not None:
        refused.source_file = source_file
        return refused
    record, replaced = without_half_emojis(record)  # see _context
    pool = record.get("message_pool")
    shaped = {k: v for k, v in record.items() if k != "message_pool"}
    unusable = []
    if isinstance(pool, dict):
        # Named by their key here: a position in an unordered pool would say nothing.
        unusable = [
            f"message {k!r} is a {type(v).__name__}, not an object; skipped"
            for k, v in pool.items()
            if not isinstance(v, dict)
        ]
        entries = [(str(k), _flatten(str(k), v)) for k, v in pool.items() if isinstance(v, dict)]
        shaped["messages"] = [flat for _, flat in _parents_first(entries)]
    else:
        shaped["messages"] = []
    ctx = _context(shaped, position, "context-files", fallback, key=key)
    # The record as written is what identifies it on a second run, not the flattening.
    ctx.raw = record
    ctx.source_sha256 = sha256_text(canonical_json(record))
    ctx.source_file = source_file
    if replaced:
        ctx.notes.insert(0, replaced_note(replaced))
    ctx.problems[:0] = unusable
    ctx.message_count += len(unusable)
    if pool is not None and not isinstance(pool, dict):
        ctx.fatal = f"'message_pool' is a {type(pool).__name__}, not an object of id -> message"
    for msg in ctx.messages:
        name, parent = _first(msg.raw, _PARENT)
        if name is not None:
            msg.parent_declared = True
            msg.parent_ref = _id_text(parent)
            msg.extra.pop(name, None)
        _read_stats(msg)
    return ctx


def _amount(value: Any) -> float | None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
    return float(value) if ok else None


def _read_stats(msg: V1Message) -> None:
    """Token counts and duration from a node's metadata (which stays in v1_extra too)."""
    meta = msg.raw.get("metadata")
    if not isinstance(meta, dict):
        return
    tokens = meta.get("tokens")
    if isinstance(tokens, dict):
        given = (_amount(tokens.get("prompt_tokens")), _amount(tokens.get("completion_tokens")))
        if given != (None, None):
            msg.usage = (int(given[0] or 0), int(given[1] or 0))
    msg.duration_ms = _amount(meta.get("duration_ms"))


def _broken(position: int, path: Path, why: str) -> V1Context:
    ctx = V1Context(
        position=position,
        kind="context-files",
        raw=None,
        source_sha256=sha256_text(f"{path}\x1f{why}"),
        fallback_time=datetime.fromtimestamp(0, timezone.utc),
        title=path.name,
        source_file=path,
    )
    ctx.fatal = why
    return ctx


def _read_file(path: Path, position: int) -> V1Context:
    if path.is_symlink():
        return _broken(position, path, f"{path} is a symbolic link; links are not followed")
    try:
        # Judged by what is opened, never waiting: a FIFO named *.json is reported, not
        # waited on.
        raw, info = read_input_file(
            path, remedy=f"move it out of {path.parent}", error=MigrationError
        )
    except MigrationError as exc:
        return _broken(position, path, str(exc))
    except OSError as exc:
        return _broken(position, path, f"cannot read {path}: {exc.strerror or exc}")
    mtime = datetime.fromtimestamp(info.st_mtime, timezone.utc)
    try:
        data = load_json(decode_json_bytes(raw, path), max_depth=FILE_DEPTH)
    except NotJSONText as exc:
        return _broken(position, path, f"{path} {exc}")
    except ValueError as exc:
        return _broken(position, path, f"{path} is not JSON ({exc}); is the file damaged?")
    refusal = not_v1_but_export(data, path)
    if refusal is not None:
        return _broken(position, path, refusal)
    if not is_pool_record(data):
        return _broken(
            position,
            path,
            f"{path} is not a v1 per-context file (no 'message_pool'); if it is another "
            f"v1 file, migrate it on its own: `cm-notebook migrate {path_argument(path)}`",
        )
    return pool_context(data, position, mtime, key=path.stem, source_file=path)


def folder_files(folder: Path) -> list[Path]:
    """The files a folder source consists of: its ``*.json`` entries (not hidden ones,
    not subfolders' contents), in name order. Raises MigrationError if unlistable."""
    try:
        return sorted(
            p for p in folder.iterdir() if p.name.lower().endswith(".json") and p.name[0] != "."
        )
    except OSError as exc:
        raise MigrationError(f"cannot read the folder {folder}: {exc.strerror or exc}") from exc


def not_v1_but_context_folder(folder: Path) -> str | None:
    """If ``folder`` is a context folder of cm_notebook's own data directory (its
    metadata.json and message index), why it is not migrated and what to do instead;
    else None. Read as v1 files, each would fail with advice that fails again."""
    if not ((folder / METADATA_NAME).is_file() and (folder / INDEX_NAME).is_file()):
        return None
    return (
        f"{folder} is a context of cm_notebook's own data ({METADATA_NAME} and "
        f"{INDEX_NAME}), not v1 data: it needs no migration. A file made by "
        "`cm-notebook export` is added to a data directory with `cm-notebook import FILE`"
    )


def read_v1_folder(folder: Path, progress: Progress = NO_PROGRESS) -> V1Source:
    """Every file of :func:`folder_files`, each one context (or one failed record).

    Raises MigrationError only if the folder cannot be listed or holds no JSON file.
    """
    mistaken = not_v1_but_context_folder(folder)
    if mistaken is not None:
        raise MigrationError(mistaken)
    files = folder_files(folder)
    if not files:
        raise MigrationError(f"{folder} holds no .json files; expected {EXPECTED_SHAPES}")
    read = progress.over(files, "reading", "file")
    return V1Source(
        str(folder), "context-files", [_read_file(path, i) for i, path in enumerate(read)]
    )
