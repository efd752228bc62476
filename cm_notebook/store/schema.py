"""Versioned on-disk formats and the numbered upgrade steps between them.

Every file the store writes carries ``schema_version`` (``metadata.json``, each message
file and ``message_index.json``). On read, a raw dict goes through :func:`upgrade`:

* a version greater than :data:`cm_notebook.model.SCHEMA_VERSION` is refused with
  :class:`~cm_notebook.errors.SchemaVersionError` (an older cm_notebook must not
  misread, and later overwrite, data from a newer one);
* an older version is brought up to date by applying the :data:`UPGRADES` steps in
  order, in memory. The file itself is rewritten in the current format the next time
  the store writes it, so old files upgrade lazily and a context may mix versions.

Rules for adding a step when the format changes: bump ``SCHEMA_VERSION`` in
``model.py``, append an :class:`Upgrade` whose ``from_version`` is the old version, and
never edit a released step again. ``message_index.json`` needs no step: it is derived
data, rebuilt from the message files when its format is older than
:data:`INDEX_FORMAT_SINCE`.

The versions:

1. The first format.
2. Branches may carry their own ``system_prompt``, ``provider`` and ``params``;
   message metadata may carry ``system_prompt`` and ``stats``. All are optional, so
   version 1 files read unchanged. The bump exists so that an older cm_notebook,
   which refuses unknown fields, says "written by a newer cm_notebook" instead of
   calling the file damaged.
3. Branch head moves and the time of a write live in the journal
   (``message_index.journal``), and ``metadata.json`` gains ``heads_at``: the journal
   line number its branch heads include (see :mod:`cm_notebook.store.filestore`).
   Files read unchanged; the bump makes an older cm_notebook refuse a context whose
   heads it would misread.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..errors import CorruptDataError, SchemaVersionError
from ..model import SCHEMA_VERSION

__all__ = ["INDEX_FORMAT_SINCE", "UPGRADES", "Kind", "Upgrade", "check_not_newer", "upgrade"]

RawDict = dict[str, Any]
Kind = Literal["metadata", "message"]

#: Files written before ``schema_version`` existed do not exist: version 1 is the first
#: format and every writer has stored the key. A missing key is therefore read as 1.
_FIRST_VERSION = 1


def _unchanged(raw: RawDict) -> RawDict:
    return raw


@dataclass(frozen=True)
class Upgrade:
    """One numbered step: turns ``from_version`` dicts into ``from_version + 1`` dicts."""

    from_version: int
    metadata: Callable[[RawDict], RawDict] = _unchanged
    message: Callable[[RawDict], RawDict] = _unchanged

    def apply(self, kind: Kind, raw: RawDict) -> RawDict:
        """Run the step for a file of the given ``kind``."""
        return self.metadata(raw) if kind == "metadata" else self.message(raw)


#: The upgrade steps, oldest first.
UPGRADES: tuple[Upgrade, ...] = (
    # 1 -> 2: only new optional fields (see the module docstring); nothing to convert.
    Upgrade(1),
    # 2 -> 3: heads_at is optional (0: the heads of metadata.json are the heads).
    Upgrade(2),
)

#: The oldest schema version whose ``message_index.json`` has today's format. Older
#: snapshots are rebuilt from the message files; these are read as they are (the index
#: did not change in version 2, so opening a version 1 context reads no message file).
INDEX_FORMAT_SINCE = 1


def _version_of(raw: RawDict, path: Path) -> int:
    version = raw.get("schema_version", _FIRST_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise CorruptDataError(
            f"{path} has schema_version {version!r}, which is not a version number. "
            "Restore the file from a backup or fix the value by hand.",
            path,
        )
    return version


def check_not_newer(
    version: int,
    path: Path | None,
    current: int = SCHEMA_VERSION,
    *,
    what: str | None = None,
    to: str = "open it",
) -> None:
    """Refuse data written by a newer cm_notebook (SchemaVersionError).

    ``what`` names the data in the message (default: ``path``), ``to`` what upgrading
    lets the user do with it ("open it", "import it").
    """
    if version > current:
        raise SchemaVersionError(
            f"{what or path} was written by a newer cm_notebook (schema {version}); this one "
            f"reads schema {current} and older. Upgrade cm_notebook to {to}.",
            path,
        )


def upgrade(
    raw: RawDict,
    kind: Kind,
    path: Path,
    *,
    steps: Sequence[Upgrade] = UPGRADES,
    target: int = SCHEMA_VERSION,
) -> RawDict:
    """Return ``raw`` brought to schema ``target`` (a copy; ``raw`` is not changed).

    The result's ``schema_version`` is ``target``.
    ``steps`` and ``target`` default to the real ones; tests pass their own to exercise
    the mechanism without inventing history.
    """
    version = _version_of(raw, path)
    check_not_newer(version, path, target)
    result = dict(raw)
    by_version = {step.from_version: step for step in steps}
    while version < target:
        step = by_version.get(version)
        if step is None:
            raise CorruptDataError(
                f"{path} has schema_version {version}, and this cm_notebook has no upgrade "
                f"from it (it reads {sorted(by_version) or 'no'} older versions). Restore "
                "the file from a backup.",
                path,
            )
        result = step.apply(kind, result)
        version += 1
        result["schema_version"] = version
    result["schema_version"] = target
    return result
