"""Rewriting a message file whose parent or role is not the one the index committed.

Which link is the committed one, and why the file is then what was changed: see
:mod:`.links`. The file is rewritten from the journal's copy of the message while the
journal holds one (the whole committed message: its text too may be what was changed),
otherwise from the file itself with the index's parent and role (its text and
everything else kept), fsync'd as it is then the message's only copy. What it named
before is reported and warned about, so that nothing goes without a trace.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CorruptDataError
from ..model import ContextMetadata, Message, MessageStatus
from .atomic import atomic_write
from .base import IndexEntry
from .codec import encode_message, encode_message_forms, read_message_file
from .diagnostics import warn
from .links import link_difference
from .ops import do_update_message
from .repair import repair_files

if TYPE_CHECKING:
    from .context import ContextState

__all__ = ["relink_files"]


def relink_files(
    state: ContextState, metadata: ContextMetadata, message_ids: list[str]
) -> tuple[tuple[str, str], ...]:
    """Rewrite the files of these messages, whose parent or role is not the one their
    index entry (a committed one: see the module docstring) gives, from the journal's
    copy or else from the index (write locks held). Returns, for each file rewritten,
    its name and what was done (with the parent and role it named)."""
    entries = state.index.entries
    # The files as the check read them, before the journal's copies replace any: what
    # they named is reported. One that no longer reads is left to the next check.
    as_read = {mid: message for mid in message_ids if (message := _read(state, mid)) is not None}
    held = [mid for mid in as_read if state.index.copy_of(mid) is not None]
    if held:
        # The whole committed message: its text too may be what was changed.
        repair_files(state.index, state.fsync, flush=False, only=held, compare=True)
    done = []
    for message_id, was in as_read.items():
        entry = entries[message_id]
        name = f"{message_id}.json"
        now = _read(state, message_id)
        if now is not None and link_difference(now, entry) is None:
            done.append((name, f"restored from the journal's copy ({_named(was)})"))
            continue
        _write_linked(state, metadata, was, entry)
        done.append(
            (
                name,
                f"rewritten with the index's parent {entry.parent_id!r} and role "
                f"{entry.role!r} ({_named(was)})",
            )
        )
    return tuple(done)


def _named(message: Message) -> str:
    return f"it named parent {message.parent_id!r} and role {message.role!r}"


def _read(state: ContextState, message_id: str) -> Message | None:
    try:
        return read_message_file(_path(state, message_id), message_id)
    except CorruptDataError:
        return None


def _path(state: ContextState, message_id: str) -> Path:
    return Path(state.messages_dir) / f"{message_id}.json"


def _write_linked(
    state: ContextState, metadata: ContextMetadata, message: Message, entry: IndexEntry
) -> None:
    path = _path(state, message.id)
    relinked = message.model_copy(update={"parent_id": entry.parent_id, "role": entry.role})
    if state.index.copy_of(message.id) is not None and entry.status is not MessageStatus.STREAMING:
        # The journal's copy names the wrong link itself (it was edited, or rotted and
        # still decodes): committed anew, or the next compaction would put it back.
        do_update_message(state, metadata, relinked, encode_message_forms(relinked))
    else:
        # Fsync'd: the journal holds no copy to restore it from; the file is its only one.
        atomic_write(path, encode_message(relinked), fsync=state.fsync, temp_dir=state.dir)
    warn(
        f"message file {path} named parent {message.parent_id!r} and role "
        f"{message.role!r}, not the index's {entry.parent_id!r} and {entry.role!r}, whose "
        "conversation is whole: it was rewritten with the index's (its text is kept)",
        path,
    )
