"""Migration from v1: the single ``contexts.json``, the web front end's LocalStorage,
and the per-context ``<uuid>.json`` files (one file, or a folder of them).

Two layers:

* a pure one, testable without a store: :func:`load_v1` / :func:`parse_v1` read a
  source liberally into :class:`V1Context` records (problems are collected, not
  raised; a damaged file in a folder becomes one failed record naming it), and
  :func:`convert` turns one into validated cm_notebook models (:class:`ConvertedContext`):
  safe ids, a message tree built from the flat list (or the pool's parent links) and
  v1's ``branches`` with their system prompts, tool calls, timestamps, and every
  unknown field kept in metadata;
* :func:`migrate`, which writes conversions through a :class:`~cm_notebook.store.base.Store`,
  backs the source up, validates what was written and returns a
  :class:`MigrationReport`. It is idempotent and has a dry run.

See ``_convert``'s docstring for how the tree and ids are made. Tool calls: a call with
a result (or answered by a ``tool`` message right after its own asking message; see
``_toollinks``) is ``done``; one with an error is
``failed``; a v1 denial stays ``denied``; a call with no result (v1 "pending",
"approved", "running" or no status) becomes ``failed`` with a reason saying so, never
``pending``: a migrated context must not resurrect an approval prompt for a call made
long ago in another system. v1's own status is kept in ``metadata.v1_tool_call_extra``.
Call ids are made unique in the context (v1 repeated them), and a ``tool`` message that
answers no call is kept as a user message and reported, so the context can be sent on.
"""

from __future__ import annotations

from .._migration_mark import (
    UNFINISHED_MIGRATION,
    UnfinishedMigrationWarning,
    is_unfinished_migration,
)
from ._convert import ConvertedContext, context_id_for, convert
from ._pool import read_v1_folder
from ._report import ContextResult, ContextStatus, MigrationReport
from ._run import check_converted, migrate, migrate_source
from ._sources import load_v1, parse_v1, parse_v1_file, read_v1, read_v1_file
from ._util import content_digest
from ._v1 import EXPECTED_SHAPES, V1Context, V1Message, V1Source, parse_timestamp

__all__ = [
    "EXPECTED_SHAPES",
    "UNFINISHED_MIGRATION",
    "ContextResult",
    "ContextStatus",
    "ConvertedContext",
    "MigrationReport",
    "UnfinishedMigrationWarning",
    "V1Context",
    "V1Message",
    "V1Source",
    "check_converted",
    "content_digest",
    "context_id_for",
    "convert",
    "is_unfinished_migration",
    "load_v1",
    "migrate",
    "migrate_source",
    "parse_timestamp",
    "parse_v1",
    "parse_v1_file",
    "read_v1",
    "read_v1_file",
    "read_v1_folder",
]
