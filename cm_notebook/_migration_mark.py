"""The mark a context carries while a v1 migration writes it (see ``cm_notebook.migrate``).

A migration creates each context with the tag :data:`UNFINISHED_MIGRATION`, writes its
messages, sets its branch heads, checks what it wrote, and only then takes the tag off.
A context that still has it was cut short (the process killed) or is being written now:
``ls``, ``check`` and :meth:`ContextSession.open` say so, and running the migration
again finishes it. Light on purpose: the CLI's ``ls`` and the session read it without
loading the migration machinery.
"""

from __future__ import annotations

from pathlib import Path

from .model import ContextMetadata
from .store.base import Store
from .store.oslock import lock_is_held

__all__ = [
    "MIGRATE_LOCK_NAME",
    "UNFINISHED_MIGRATION",
    "UnfinishedMigrationWarning",
    "finish_advice",
    "is_unfinished_migration",
    "migration_under_way",
    "unfinished_warning",
    "without_mark",
]

#: The tag a context carries until the migration writing it has finished.
UNFINISHED_MIGRATION = "unfinished-migration"

#: The lock file in the data folder, held by a running migration.
MIGRATE_LOCK_NAME = ".migrate.lock"


class UnfinishedMigrationWarning(UserWarning):
    """A context opened before the v1 migration that writes it has finished."""


def is_unfinished_migration(metadata: ContextMetadata) -> bool:
    """Whether ``metadata`` is of a context whose v1 migration has not finished: killed,
    or still under way (see :func:`migration_under_way`)."""
    return UNFINISHED_MIGRATION in metadata.tags


def without_mark(tags: list[str]) -> list[str]:
    return [tag for tag in tags if tag != UNFINISHED_MIGRATION]


def migration_under_way(store: Store) -> bool:
    """Whether a live process is migrating into ``store``'s data folder now."""
    data_dir = getattr(store, "data_dir", None)
    return isinstance(data_dir, Path) and lock_is_held(data_dir / MIGRATE_LOCK_NAME)


def finish_advice(metadata: ContextMetadata) -> str:
    """What to run to finish the migration of ``metadata``'s context."""
    # Imported here: _cli_advice loads the store, whose modules import _cli_advice in
    # turn, so it must not be loaded first from a module the package loads before it.
    from ._cli_advice import path_argument

    source = metadata.extra.get("v1_source")
    if isinstance(source, str) and source:
        return f"run `cm-notebook migrate {path_argument(source)}` again"
    return "run `cm-notebook migrate` again on the v1 data it came from"


def unfinished_warning(
    metadata: ContextMetadata, data_dir: object = None
) -> UnfinishedMigrationWarning:
    """The warning given when such a context, stored in ``data_dir`` (the store's
    folder, named in the advised command unless it is the default one), is opened."""
    from ._cli_advice import for_contexts_in  # here: see finish_advice

    advice = finish_advice(metadata)
    return UnfinishedMigrationWarning(
        for_contexts_in(
            f"context {metadata.id!r} is not completely migrated yet (the migration from v1 "
            "was stopped, or is still running): its branches may lack messages. "
            f"{advice[0].upper()}{advice[1:]} to finish it; what you add meanwhile is kept.",
            data_dir,
        )
    )
