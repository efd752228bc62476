"""Where the store keeps its files, and path building that cannot be steered outside it.

Every path below the data directory is built from an id that has first been checked
by :mod:`cm_notebook.ids` (one safe path component), and a context folder is also
resolved (following symlinks) and checked to lie inside the data directory, so
neither a hostile id nor a planted symlink can make the store read or write
elsewhere.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import InvalidIdError
from ..ids import validate_context_id, validate_message_id

__all__ = [
    "CREATING_LOCK_NAME",
    "DATA_DIR_ENV",
    "DECISIONS_DIR",
    "INDEX_NAME",
    "JOURNAL_NAME",
    "LOCK_NAME",
    "LOG_NAME",
    "MESSAGES_DIR",
    "METADATA_NAME",
    "SIGNALS_DIR",
    "STREAMING_PREFIX",
    "STREAMING_SUFFIX",
    "context_dir",
    "contexts_root",
    "data_dir_of",
    "default_data_dir",
    "ensure_inside",
    "message_path",
    "platform_data_dir",
    "safe_join",
    "streaming_lock_path",
    "trusted_message_path",
]

#: Environment variable that overrides the default data directory.
DATA_DIR_ENV = "CM_NOTEBOOK_DATA_DIR"

METADATA_NAME = "metadata.json"
INDEX_NAME = "message_index.json"
JOURNAL_NAME = "message_index.journal"
LOCK_NAME = ".lock"
CREATING_LOCK_NAME = ".creating.lock"  # in the data directory; see context.creation_lock
STREAMING_PREFIX = ".streaming-"
STREAMING_SUFFIX = ".lock"
MESSAGES_DIR = "messages"
# The signal log's folder (see cm_notebook.signal_log). A folder of its own, so that
# watching the log for changes is not woken by every write of the store beside it.
SIGNALS_DIR = "signals"
LOG_NAME = "signals.log"  # in SIGNALS_DIR
# Decision and stop records of tool calls and turns (see cm_notebook._remote_decisions).
DECISIONS_DIR = "decisions"
_CONTEXTS_DIR = "contexts"


def default_data_dir() -> Path:
    """The data directory used when ``FileStore`` is given none.

    In order: ``$CM_NOTEBOOK_DATA_DIR`` if set and non-empty; on Windows
    ``%LOCALAPPDATA%\\cm_notebook``; on macOS ``~/Library/Application Support/cm_notebook``;
    elsewhere ``$XDG_DATA_HOME/cm_notebook`` (when ``XDG_DATA_HOME`` is an absolute path,
    as the XDG specification requires) or ``~/.local/share/cm_notebook``.
    """
    override = os.environ.get(DATA_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return platform_data_dir()


def platform_data_dir() -> Path:
    """The platform's data directory for cm_notebook (:func:`default_data_dir` without
    ``$CM_NOTEBOOK_DATA_DIR``)."""
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA", "").strip()
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "cm_notebook"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "cm_notebook"
    xdg = os.environ.get("XDG_DATA_HOME", "").strip()
    # The XDG spec says relative values must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "cm_notebook"


def safe_join(root: Path, *parts: str) -> Path:
    """``root / parts...``, refusing any part that is empty, absolute or climbs out of ``root``.

    This is a lexical check (no file system access); callers validate ids first, so it
    is a second line of defence, cheap enough to run on every message path.
    """
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part or "\x00" in part:
            raise InvalidIdError(f"{part!r} is not a safe path component below {root}")
    joined = root.joinpath(*parts)
    base = os.path.normpath(root)
    if os.path.commonpath([base, os.path.normpath(joined)]) != base:
        raise InvalidIdError(f"{joined} is outside {root}")
    return joined


def ensure_inside(root: Path, path: Path) -> Path:
    """Return ``path`` if, with symlinks resolved, it lies inside ``root``; else raise.

    Guards against a symlink planted in the data directory (``contexts/x -> /etc``).
    """
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    if os.path.commonpath([real_root, real]) != real_root:
        raise InvalidIdError(
            f"{path} resolves to {real}, which is outside the data directory {root}; "
            f"refusing to use it. {_remedy_for_link(root, path)}"
        )
    return path


def _remedy_for_link(root: Path, path: Path) -> str:
    # Names the link that leads out (``contexts`` itself, say, moved to another disk
    # and linked back), and for a moved ``contexts`` folder the data directory to use.
    try:
        parts = path.relative_to(root).parts
    except ValueError:
        parts = ()
    current = root
    for part in parts:
        current = current / part
        if os.path.islink(current):
            target = os.path.realpath(current)
            if part == _CONTEXTS_DIR and os.path.basename(target) == _CONTEXTS_DIR:
                return (
                    f"{current} is a symbolic link to {target}: use the folder that holds "
                    f"it as the data directory ({os.path.dirname(target)}), or move it back."
                )
            return f"{current} is a symbolic link to {target}: remove it or move the folder back."
    return "Remove the symlink or move the folder back."


def contexts_root(data_dir: Path) -> Path:
    """The folder that holds one sub-folder per context."""
    return data_dir / _CONTEXTS_DIR


def context_dir(data_dir: Path, context_id: str) -> Path:
    """The folder of ``context_id`` (validated; need not exist yet)."""
    validate_context_id(context_id)
    root = contexts_root(data_dir)
    return ensure_inside(data_dir, safe_join(root, context_id))


def data_dir_of(ctx_dir: Path) -> Path:
    """The data directory a context folder (made by :func:`context_dir`) is in."""
    return ctx_dir.parent.parent


def message_path(ctx_dir: Path, message_id: str) -> Path:
    """``messages/<message_id>.json`` inside a context folder (id validated)."""
    validate_message_id(message_id)
    return safe_join(ctx_dir, MESSAGES_DIR, f"{message_id}.json")


def trusted_message_path(messages_dir: str, message_id: str) -> Path:
    """:func:`message_path` for an id already validated (by the caller's boundary check,
    or as it entered the index), ``messages_dir`` being ``<context>/messages``.

    A write joins its message's path with this: validating the id again and the
    lexical check of :func:`safe_join` cost as much as encoding the message.
    """
    return Path(f"{messages_dir}{os.sep}{message_id}.json")


def streaming_lock_path(ctx_dir: Path, message_id: str) -> Path:
    """The lock file a live writer holds while ``message_id`` is streaming."""
    validate_message_id(message_id)
    return safe_join(ctx_dir, f"{STREAMING_PREFIX}{message_id}{STREAMING_SUFFIX}")
