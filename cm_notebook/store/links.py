"""Which parent link to trust when a message file and the index disagree on it.

A message's parent and role never change once it is written (``update_message``
refuses to: see :func:`.ops.do_update_message`), so a message file and an index entry
that name different ones mean that one of the two was damaged or edited. Where their
links lead tells which (see :func:`.order.unrooted`):

* where the index's conversation through the message reaches a first message, the
  index is the committed truth (an fsync'd journal line, or a snapshot made from such
  lines) and the file is what was changed. That holds even when the file's link leads
  somewhere too: taking it would send the conversation round a loop (every message
  after it unreadable) or cut the messages it skips off every branch;
* where the index's own link leads nowhere (to a message that is gone, or round a
  loop), the file's is taken, as a rebuild of the index from the files does.

``check --repair`` rewrites such a file (:func:`.relink.relink_files`): from the journal's
copy of the message while it holds one (the whole committed message), otherwise from
the file itself with the index's parent and role (its text and everything else kept).
The parent and role it named are in the report and in a warning, so nothing is
dropped without a trace. A rebuild of the index keeps the old index's link for such a
message too (:func:`trusted_entry`), so that a rebuild on opening never does what the
repair would not.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from .._cli_advice import for_contexts_in
from ..model import Message
from .base import IndexEntry
from .diagnostics import warn
from .order import unrooted
from .paths import data_dir_of

__all__ = ["index_broken", "link_difference", "trusted_entry"]


def index_broken(entries: Mapping[str, IndexEntry]) -> dict[str, str]:
    """The entries whose conversation in the index alone reaches no first message,
    each with what it goes back to instead (see :func:`.order.unrooted`): the ones
    whose link a file may correct. Every other entry's link is the committed truth."""
    return unrooted({message_id: entry.parent_id for message_id, entry in entries.items()})


def link_difference(message: Message, entry: IndexEntry) -> str | None:
    """How the file's ``message`` names another parent or role than the index's
    ``entry``, or None if they agree."""
    if (message.parent_id, message.role) == (entry.parent_id, entry.role):
        return None
    return (
        f"its parent is {message.parent_id!r} and role {message.role!r}, "
        f"the index says {entry.parent_id!r} and {entry.role!r}"
    )


def trusted_entry(
    message: Message, known: Mapping[str, IndexEntry], broken: Mapping[str, str], folder: Path
) -> IndexEntry:
    """The entry a rebuilt index gives the file's ``message``: the file's, except for
    the parent and role of a message the old index (``known``, whose ``broken`` links
    lead nowhere: see :func:`index_broken`) still links to a first message, which
    are the committed ones (see the module docstring). Its ``seq`` is set later."""
    entry = IndexEntry.of(message, 0)
    old = known.get(message.id)
    if old is None or message.id in broken or link_difference(message, old) is None:
        return entry
    ctx_dir = folder.parent
    warn(
        for_contexts_in(
            f"kept the index's parent {old.parent_id!r} and role {old.role!r} of message "
            f"{message.id!r} while rebuilding the index: its file names parent "
            f"{message.parent_id!r} and role {message.role!r}, which the index never "
            f"committed (`cm-notebook check --repair {ctx_dir.name}` rewrites the file "
            "from the index)",
            data_dir_of(ctx_dir),
        ),
        folder / f"{message.id}.json",
    )
    return entry.model_copy(update={"parent_id": old.parent_id, "role": old.role})
