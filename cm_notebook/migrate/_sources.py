"""Which v1 source is this? Shape detection for files, decoded JSON and folders.

:func:`read_v1` takes a file or a folder of per-context files; :func:`parse_v1`
takes already-decoded JSON. Both return a :class:`~cm_notebook.migrate._v1.V1Source`
whose records were read liberally (problems collected, not raised). Only a source
that is unreadable as a whole (not JSON, or no known shape, or an empty folder)
raises :class:`~cm_notebook.errors.MigrationError`.
"""

from __future__ import annotations

import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._input_files import read_input_file
from .._json_bytes import NotJSONText, decode_json_bytes
from ..errors import MigrationError
from ..store.paths import INDEX_NAME, METADATA_NAME
from ._pool import is_pool_record, not_v1_but_context_folder, pool_context, read_v1_folder
from ._progress import NO_PROGRESS, Progress
from ._util import FILE_DEPTH, load_json, without_half_emojis
from ._v1 import (
    _EPOCH,
    EXPECTED_SHAPES,
    SourceKind,
    V1Context,
    V1Source,
    _context,
    _id_text,
    not_v1_but_export,
)

__all__ = ["load_v1", "parse_v1", "parse_v1_file", "read_v1", "read_v1_file", "read_v1_once"]


#: What to give instead of a path that is not a file to read (see ``read_input_file``).
_GIVE_A_V1_FILE = (
    "give the path of a v1 file (contexts.json, a LocalStorage export or a per-context <uuid>.json)"
)


def _localstorage_state(data: Any) -> tuple[dict[str, Any], Any] | None:
    """(state, version) if ``data`` looks like a (possibly raw) LocalStorage export."""
    if not isinstance(data, dict):
        return None
    state = data.get("state")
    if isinstance(state, str):
        # Raw LocalStorage values are strings; a copy-paste may keep one level of that.
        try:
            state = load_json(state, max_depth=FILE_DEPTH)
        except ValueError:
            return None
    if isinstance(state, dict) and isinstance(state.get("chats"), list):
        return state, data.get("version")
    if isinstance(data.get("chats"), list):
        return data, data.get("version")
    return None


def _text(value: Any) -> str:
    """A top-level key as text for a note or an error (half emojis replaced)."""
    return str(without_half_emojis(str(value))[0])


def _record(
    record: Any, position: int, kind: SourceKind, fallback: datetime, key: str | None = None
) -> V1Context:
    """One context record of a list or mapping: a per-context record (one with a
    ``message_pool``, as v1 saved each context) wherever it appears, else a plain one.
    Read as a plain record, a pool record would lose every message."""
    if is_pool_record(record):
        return pool_context(record, position, fallback, key=key)
    return _context(record, position, kind, fallback, key=key)


def parse_v1(
    data: Any,
    *,
    name: str = "<data>",
    fallback_time: datetime | None = None,
    progress: Progress = NO_PROGRESS,
) -> V1Source:
    """Detect the shape of already-decoded v1 JSON and read its contexts.

    ``fallback_time`` is used for records without any timestamp (default: the epoch,
    which keeps conversion deterministic); ``progress`` counts the records read.
    Raises MigrationError for unknown shapes.
    """
    fallback = fallback_time or _EPOCH
    refusal = not_v1_but_export(data, name)
    if refusal is not None:
        raise MigrationError(refusal)
    if is_pool_record(data):
        return V1Source(name, "context-files", [pool_context(data, 0, fallback)])
    if isinstance(data, list):
        records = progress.over(data, READING, "record")
        contexts = [_record(r, i, "contexts.json", fallback) for i, r in enumerate(records)]
        return V1Source(name, "contexts.json", contexts)
    if isinstance(data, dict) and isinstance(data.get("contexts"), list):
        items = data["contexts"]
        source = V1Source(
            name,
            "contexts.json",
            [
                _record(r, i, "contexts.json", fallback)
                for i, r in enumerate(progress.over(items, READING, "record"))
            ],
        )
        ignored = sorted(_text(k) for k in data if k != "contexts")
        if ignored:
            source.notes.append(f"top-level fields not migrated: {', '.join(ignored)}")
        return source
    found = _localstorage_state(data)
    if found is None and isinstance(data, dict):
        # A raw LocalStorage dump: {"<store key>": "<JSON text of the store>"}.
        for key, value in data.items():
            if isinstance(value, str) and value.lstrip().startswith("{"):
                try:
                    found = _localstorage_state(load_json(value, max_depth=FILE_DEPTH))
                except ValueError:
                    continue
                if found is not None:
                    name = f"{name} [{_text(key)}]"
                    break
    if found is not None:
        state, version = found
        version = without_half_emojis(version)[0]
        current = _id_text(without_half_emojis(state.get("currentChatId"))[0])
        contexts = []
        for i, chat in enumerate(progress.over(state["chats"], READING, "record")):
            ctx = _record(chat, i, "localstorage", fallback)
            if version is not None:
                ctx.flags["v1_store_version"] = version
            if current is not None and ctx.id == current:
                ctx.flags["v1_current_chat"] = True
            contexts.append(ctx)
        return V1Source(name, "localstorage", contexts)
    if (
        isinstance(data, dict)
        and data
        and all(
            isinstance(v, dict) and ("messages" in v or is_pool_record(v)) for v in data.values()
        )
    ):
        # An id -> context mapping.
        contexts = [
            _record(v, i, "contexts.json", fallback, key=str(k))
            for i, (k, v) in enumerate(progress.over(list(data.items()), READING, "record"))
        ]
        return V1Source(name, "contexts.json", contexts)
    if isinstance(data, dict) and isinstance(data.get("messages"), list):
        return V1Source(name, "contexts.json", [_context(data, 0, "contexts.json", fallback)])
    if isinstance(data, dict):
        keys = ", ".join(sorted(map(_text, data))[:8]) or "no keys"
        got = f"a JSON object with {keys}"
    else:
        got = f"a JSON {type(data).__name__}"
    raise MigrationError(f"{name} is {got}; expected {EXPECTED_SHAPES}")


#: The phase of the progress bar that reads records.
READING = "reading"


def read_v1(source: Path | str) -> V1Source:
    """Read and parse a v1 file, or a folder of per-context files (see ``_pool``).

    Raises MigrationError if the source cannot be read as a whole.
    """
    return read_v1_once(source)[0]


def read_v1_once(
    source: Path | str, progress: Progress = NO_PROGRESS
) -> tuple[V1Source, bytes | None]:
    """:func:`read_v1`, and for a file the bytes read (see :func:`read_v1_file`);
    ``progress`` counts the records (or a folder's files) read."""
    path = Path(source)
    if path.is_dir():
        return read_v1_folder(path, progress), None
    if path.name in (METADATA_NAME, INDEX_NAME):
        mistaken = not_v1_but_context_folder(path.parent)
        if mistaken is not None:
            raise MigrationError(mistaken)
    return read_v1_file(path, progress)


def read_v1_file(path: Path, progress: Progress = NO_PROGRESS) -> tuple[V1Source, bytes]:
    """Read a v1 file once and parse it; the source and the bytes read (which are what
    a backup must copy: a pipe such as ``/dev/stdin`` cannot be read a second time).

    Raises MigrationError if the file cannot be read or is not v1 data, and at once,
    naming what it is, for a folder, a socket, a device or a FIFO that no process is
    writing into.
    """
    try:
        # Never a wait for a FIFO's writer that is not there; a pipe with one (stdin,
        # <(...)) is read like a file.
        raw, info = read_input_file(path, remedy=_GIVE_A_V1_FILE, error=MigrationError, pipes=True)
    except OSError as exc:
        raise MigrationError(f"cannot read {path}: {exc.strerror or exc}") from exc
    # The file's modification time is the best "no later than" guess for records that
    # carry no timestamps at all; data from a pipe was made no later than now.
    if stat.S_ISREG(info.st_mode):
        mtime = datetime.fromtimestamp(info.st_mtime, timezone.utc)
    else:
        mtime = datetime.now(timezone.utc)
    try:
        text = decode_json_bytes(raw, path)  # UTF-8, or UTF-16/32 (Windows PowerShell `>`)
    except NotJSONText as exc:
        raise MigrationError(f"{path} {exc}; expected {EXPECTED_SHAPES}") from None
    try:
        data = load_json(text, max_depth=FILE_DEPTH)
    except ValueError as exc:
        raise MigrationError(f"{path} is not JSON ({exc}); expected {EXPECTED_SHAPES}") from exc
    return parse_v1_file(data, path, mtime, progress), raw


def parse_v1_file(
    data: Any, path: Path, fallback_time: datetime, progress: Progress = NO_PROGRESS
) -> V1Source:
    """:func:`parse_v1` of the decoded JSON of the file ``path``: a per-context file is
    named after its context, so its name is the id when the record has none."""
    if is_pool_record(data):
        ctx = pool_context(data, 0, fallback_time, key=path.stem)
        return V1Source(str(path), "context-files", [ctx])
    return parse_v1(data, name=str(path), fallback_time=fallback_time, progress=progress)


def load_v1(source: Path | str) -> list[V1Context]:
    """The contexts of a v1 file or folder (see :func:`read_v1`)."""
    return read_v1(source).contexts
