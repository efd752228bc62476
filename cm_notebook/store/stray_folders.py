"""A folder among the contexts that has no ``metadata.json``: what it is, and what to do.

Three kinds, told apart by what the folder holds:

- nothing: no context (a folder made by hand, or what a tool left); removing it loses
  nothing;
- the message index or journal: a context that lost its ``metadata.json`` (deleted by
  hand, dropped by a sync tool). No command makes that file again (``check --repair``
  rebuilds the message index, not the title and branches): restore it from a backup,
  or delete the context;
- anything else: no context, but files someone may want; they are named, so that the
  user decides before deleting the folder.

Reading any of them changes nothing in it (see ``ContextState.view``): the advice a
listing or a failed read gives stays true.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .._cli_advice import for_contexts_in
from ..errors import ContextNotFoundError, CorruptDataError
from .paths import INDEX_NAME, JOURNAL_NAME, LOCK_NAME, METADATA_NAME, data_dir_of

__all__ = ["holds_no_context", "without_metadata"]

#: How many of a folder's entries a message names (the rest are counted).
_SHOWN = 5


def holds_no_context(folder: Path) -> bool:
    """Whether ``folder`` (a context's, its id validated) is a folder of its own (not a
    link) without ``metadata.json``: something a deletion of that id may remove,
    though no context can be read from it."""
    try:
        if not stat.S_ISDIR(os.lstat(folder).st_mode):
            return False
    except OSError:
        return False
    return not os.path.lexists(folder / METADATA_NAME)


def without_metadata(folder: Path, context_id: str) -> ContextNotFoundError | CorruptDataError:
    """The error for the folder of ``context_id`` that has no ``metadata.json`` (see the
    module docstring): ContextNotFoundError unless it holds a context's messages. Its
    advice names `cm-notebook` commands (a server rewords them into requests)."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        names = []
    data_dir = data_dir_of(folder)
    if not names:
        return ContextNotFoundError(
            for_contexts_in(
                f"no context {context_id!r}: {folder} is an empty folder; "
                f"`cm-notebook rm {context_id} --yes` removes it",
                data_dir,
            )
        )
    held = [name for name in (INDEX_NAME, JOURNAL_NAME) if (folder / name).is_file()]
    if held:
        return CorruptDataError(
            for_contexts_in(
                f"context {context_id!r} has lost its {METADATA_NAME} (title, branches), "
                f"though its folder {folder} still holds its messages and "
                f"{', '.join(held)}. Restore {METADATA_NAME} from a backup (the messages "
                "are untouched; no command makes it again); or "
                f"`cm-notebook rm {context_id} --yes` removes it with all it holds.",
                data_dir,
            ),
            folder / METADATA_NAME,
        )
    # The store's own lock file (a write, or `check`, may have made it) says nothing.
    theirs = [name for name in names if name != LOCK_NAME]
    shown = [name + ("/" if (folder / name).is_dir() else "") for name in theirs[:_SHOWN]]
    if len(theirs) > _SHOWN:
        shown.append(f"and {len(theirs) - _SHOWN} more")
    shown = shown or ["the store's lock file"]
    return ContextNotFoundError(
        f"no context {context_id!r}: its folder {folder} has no {METADATA_NAME}, message "
        f"index or journal, only {', '.join(shown)}; move what you want to keep out of it, "
        "then remove the folder"
    )
