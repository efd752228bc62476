"""Whether an existing context that has a v1 record's id is that record, or another one.

Ids in v1 were only unique within one source: two exports (a work and a home browser,
say) can each hold a context ``"1"``. A record whose id is taken by an existing context
that is not the same record gets a new id (as a case twin does) and both are kept; the
only contexts the report may offer to remove are earlier migrations of the same record.
"""

from __future__ import annotations

import os

from .._unicode import without_surrogates
from ..model import ContextMetadata
from ._v1 import V1Context, V1Source

__all__ = ["other_record", "source_origin"]

#: Where ``extra`` records the file a context was migrated from.
ORIGIN = "v1_source"


def source_origin(source: V1Source, ctx: V1Context) -> str | None:
    """The absolute path of the file ``ctx`` was read from; None for data that was not
    read from a file (``parse_v1`` of data in memory)."""
    name = str(ctx.source_file) if ctx.source_file is not None else source.name
    if name.startswith("<"):
        return None
    # Text that UTF-8 can hold (a file name that is not UTF-8 may hold a lone surrogate).
    return without_surrogates(os.path.abspath(name))


def other_record(meta: ContextMetadata, ctx: V1Context, origin: str | None) -> str | None:
    """None if the existing context ``meta`` was migrated from the v1 record ``ctx`` (an
    earlier version of it), else why it is another record. In doubt, another record:
    keeping both loses nothing, and the report says where each came from."""
    if "v1_source_sha256" not in meta.extra:
        return "did not come from v1"
    theirs = meta.extra.get(ORIGIN)
    if isinstance(theirs, str) and origin is not None and theirs != origin:
        return f"was migrated from {theirs}"
    if meta.extra.get("v1_source_kind") != ctx.kind:
        return f"was migrated from a v1 source of another kind ({meta.extra.get('v1_source_kind')})"
    if meta.created_at != ctx.started_at():
        return "is a different conversation (it started at another time)"
    if not isinstance(theirs, str) and meta.title != ctx.title:
        # Migrated before the source was recorded: the title must match too.
        return "is a different conversation (it has another title)"
    return None
