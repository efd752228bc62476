"""The mark a context carries while an import writes it (see ``cm_notebook.export``).

An import creates the context with the tag :data:`UNFINISHED_IMPORT` and takes it off
as its last step. A context that still has it was cut short (the process killed) or
is being imported now: it may lack messages, so it is never exported (an export would
pass a part on as the whole), and an export that carries the tag (made before that
rule) is never imported as whole. ``ls``, ``show`` and ``check`` say so.
"""

from __future__ import annotations

from pathlib import Path

from ._cli_advice import for_contexts_in
from .errors import ContextNotFoundError, InvalidInputError, StateError
from .model import ContextMetadata
from .store.base import Store
from .store.oslock import lock_is_held

__all__ = [
    "UNFINISHED_IMPORT",
    "check_whole_document",
    "check_whole_for_export",
    "finished_tags",
    "import_lock",
    "import_under_way",
    "is_unfinished_import",
    "redo_advice",
    "remove_killed_import",
]

#: The tag a context carries while an import writes it.
UNFINISHED_IMPORT = "unfinished-import"


def finished_tags(tags: list[str]) -> list[str]:
    return [tag for tag in tags if tag != UNFINISHED_IMPORT]


def is_unfinished_import(metadata: ContextMetadata) -> bool:
    """Whether ``metadata`` is of a context whose import has not finished: killed, or
    still under way in another process (see :func:`import_under_way`)."""
    return UNFINISHED_IMPORT in metadata.tags


def import_lock(store: Store, context_id: str) -> Path | None:
    """The lock file held by the process importing ``context_id`` for as long as it
    imports; beside ``contexts/`` (a context's own folder is made, and may be removed,
    by the import)."""
    data_dir = getattr(store, "data_dir", None)
    return data_dir / f".import-{context_id}.lock" if isinstance(data_dir, Path) else None


def import_under_way(store: Store, context_id: str) -> bool:
    """Whether a live process is importing ``context_id`` now (an unfinished import
    that is not a killed one: it must not be replaced)."""
    path = import_lock(store, context_id)
    return path is not None and lock_is_held(path)


def redo_advice(context_id: str) -> str:
    """What to do about ``context_id`` whose import was killed. An import with
    --new-id gave it an id of its own: importing the file again makes another context
    beside it, so removing it is the advice that always works."""
    return (
        f"remove it (`cm-notebook rm {context_id} --yes`), then import the file again "
        "(an import under this id replaces it by itself)"
    )


async def remove_killed_import(store: Store, context_id: str, *, beside: str) -> bool:
    """Remove the context ``context_id`` if it is what a killed import left, so that a
    new import can take its place; True if it did. Any other context is left alone.

    Raises StateError if another process is importing it now; ``beside`` names how the
    caller imports a copy under a new id instead (``--new-id``, ``new_id=True``).
    """
    try:
        there = await store.get_metadata(context_id)
    except ContextNotFoundError:
        return False
    if not is_unfinished_import(there):
        return False
    if import_under_way(store, context_id):
        raise StateError(
            f"context {context_id!r} is being imported by another process now: wait for "
            f"that import to end, or import this copy beside it with {beside}"
        )
    await store.delete_context(context_id)
    return True


def check_whole_for_export(store: Store, metadata: ContextMetadata) -> None:
    """Raise StateError if ``metadata``'s context is still being imported, or its
    import was killed: it may lack messages, and an export would pass it on as whole
    (an import of that export would then be called finished)."""
    if not is_unfinished_import(metadata):
        return
    cid = metadata.id
    if import_under_way(store, cid):
        raise StateError(
            f"context {cid!r} cannot be exported yet: another process is importing it "
            "now; export it once that import has ended"
        )
    raise StateError(
        for_contexts_in(
            f"context {cid!r} cannot be exported: its import never finished (the process "
            "was stopped), so it may hold only part of the file it was imported from, "
            f"which an export would pass on as whole. {redo_advice(cid).capitalize()}, "
            "and export that",
            getattr(store, "data_dir", None),
        )
    )


def check_whole_document(metadata: ContextMetadata) -> None:
    """Raise InvalidInputError if an export document's ``metadata`` carries the mark:
    it was made (by a version that allowed it) from a context whose import never
    finished, and may hold only part of it."""
    if is_unfinished_import(metadata):
        raise InvalidInputError(
            f"this export of context {metadata.id!r} was made while its import was "
            "unfinished (the process was stopped), so it may hold only part of that "
            "context: import the file that import was reading instead; to import this "
            f"part all the same, remove {UNFINISHED_IMPORT!r} from the tags in its "
            "metadata first"
        )
