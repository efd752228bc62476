"""Exporting a context to JSON or Markdown, and importing the JSON back.

The JSON document (:class:`ExportDocument`) is self-contained and lossless: the
context's metadata (all branches, system prompt, provider settings, extra fields),
its messages as a tree (``parent_id`` links, tool calls, statuses, metadata) and the
scores of its replies (:mod:`cm_notebook.scores`).
Exported without a branch it holds the whole tree, so :func:`import_document`
recreates the context exactly; exported with a branch it holds that branch's path
only, with just that branch in its metadata, and still imports as a valid context.
The one field an import cannot keep is the context's ``updated_at``: the store stamps
every write (every branch's ``created_at`` is kept).

Markdown is for reading: one branch's conversation with headings per message, safe to
render with raw HTML allowed (see :mod:`cm_notebook._export_markdown`).
Both are plain functions of an :class:`ExportDocument`, so the CLI and notebooks
share them.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
from collections.abc import Collection
from datetime import datetime
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from . import _json
from ._cli_advice import for_contexts_in
from ._export_approvals import (
    ExportedApprovals,
    check_approvals,
    read_approvals,
    write_exported_approvals,
)
from ._export_markdown import markdown_of
from ._import_mark import (
    UNFINISHED_IMPORT,
    check_whole_document,
    check_whole_for_export,
    finished_tags,
    import_lock,
    import_under_way,
    is_unfinished_import,
    remove_killed_import,
)
from ._model_output import redact_metadata
from ._stranded_rounds import as_ended
from ._validation_errors import first_error
from .errors import (
    BranchNotFoundError,
    CMError,
    ContextExistsError,
    CorruptDataError,
    InvalidIdError,
    InvalidInputError,
)
from .ids import check_branch_names_free, id_key, validate_context_id, validate_message_id
from .model import Branch, ContextMetadata, Message, MessageMetadata, utcnow
from .prompts import effective_system
from .redact import redact
from .scores import Score
from .store.base import Store
from .store.order import parents_first
from .store.oserrors import translate
from .store.oslock import LockTimeout, OSLock
from .store.schema import check_not_newer

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "UNFINISHED_IMPORT",
    "ExportDocument",
    "export_context",
    "import_document",
    "import_under_way",
    "is_export",
    "is_unfinished_import",
    "parse_export",
    "remove_killed_import",
    "to_json",
    "to_markdown",
]

#: The ``format`` marker of an export document; how ``import`` recognises one.
EXPORT_FORMAT = "cm_notebook.export"
#: Bumped when the document changes incompatibly; newer documents are refused. A
#: document is written as version 1 unless it carries ``approvals`` (version 2) or a
#: scoring function's rating in its scores (``rating_sources`` or ``tag_sources``,
#: version 3), which versions that read only older ones refuse with "upgrade" rather
#: than as malformed.
EXPORT_FORMAT_VERSION = 3


class ExportDocument(BaseModel):
    """A context and its messages, as one JSON document."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["cm_notebook.export"] = "cm_notebook.export"
    format_version: StrictInt = Field(default=1, ge=1)  # not true, -1 or "1"
    exported_at: datetime = Field(default_factory=utcnow)
    branch: str | None = None  # None: the whole tree; else only this branch's path
    metadata: ContextMetadata
    messages: list[Message]  # parents before children
    # Ratings and metrics by message id (see cm_notebook.scores); left out when empty,
    # so a document without scores is what older versions wrote and read.
    scores: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Tools allowed for the whole context and the audit log of approval decisions (see
    # cm_notebook._export_approvals); left out when empty, as scores are.
    approvals: ExportedApprovals = Field(default_factory=ExportedApprovals)

    @model_validator(mode="after")
    def _consistent(self) -> ExportDocument:
        if self.format_version > EXPORT_FORMAT_VERSION:
            raise ValueError(
                f"format_version {self.format_version} was written by a newer cm_notebook "
                f"(this one reads up to {EXPORT_FORMAT_VERSION}); upgrade cm_notebook"
            )
        seen: set[str] = set()
        keys: dict[str, str] = {}  # id_key -> id: ids name files
        for message in self.messages:
            # Parents first: this also rules out cycles and dangling parent links.
            if message.parent_id is not None and message.parent_id not in seen:
                raise ValueError(
                    f"message {message.id!r} comes before its parent {message.parent_id!r} "
                    "or its parent is missing"
                )
            if message.id in seen:
                raise ValueError(f"message id {message.id!r} appears twice")
            twin = keys.setdefault(id_key(message.id), message.id)
            if twin != message.id:
                raise ValueError(
                    f"message ids {twin!r} and {message.id!r} differ only in case: they "
                    "would be one file on Windows and macOS, one message lost. Give one of "
                    "them another id in the file (and in the parent_id and branch heads "
                    "that name it)"
                )
            seen.add(message.id)
        check_branch_names_free(self.metadata.branches, ())  # no two look-alike branches
        for branch in self.metadata.branches.values():
            for ref in (branch.head, branch.forked_from):
                if ref is not None and ref not in seen:
                    raise ValueError(f"branch {branch.name!r} refers to missing message {ref!r}")
        check_approvals(self.approvals, self.messages)
        roles = {message.id: message.role for message in self.messages}
        for message_id, score in self.scores.items():
            if message_id not in seen:
                raise ValueError(f"a score refers to missing message {message_id!r}")
            if roles[message_id] != "assistant":
                raise ValueError(
                    f"the score of {message_id!r} rates a {roles[message_id]} message; only "
                    "replies (assistant messages) are rated"
                )
            try:
                scored = Score.model_validate(score)
            except ValidationError as exc:
                raise ValueError(
                    f"the score of {message_id!r}: {first_error(exc, 'document')}"
                ) from None
            if scored.message_id != message_id:
                raise ValueError(
                    f"the score listed under {message_id!r} is the score of "
                    f"{scored.message_id!r}; list each score under its own message"
                )
        return self

    def to_json(self) -> str:
        """The document as the JSON text of an export file (see :func:`to_json`)."""
        return to_json(self)

    def to_markdown(self, branch: str | None = None) -> str:
        """One branch as a Markdown transcript to read (see :func:`to_markdown`)."""
        return to_markdown(self, branch=branch)

    def path(self, branch: str | None = None) -> list[Message]:
        """The messages from the root to the head of ``branch`` (default: the document's
        branch, else the active branch)."""
        name = branch or self.branch or self.metadata.active_branch
        if name not in self.metadata.branches:
            raise BranchNotFoundError(
                f"context {self.metadata.id!r} has no branch {name!r}; "
                f"it has {', '.join(sorted(self.metadata.branches))}"
            )
        by_id = {m.id: m for m in self.messages}
        out: list[Message] = []
        node = self.metadata.branches[name].head
        while node is not None:
            out.append(by_id[node])
            node = by_id[node].parent_id
        return out[::-1]


def _check_not_newer(schema_version: int) -> None:
    # What the store says of a newer metadata.json, said of the export.
    check_not_newer(schema_version, None, what="the export", to="import it")


def _no_branches(messages: list[Any]) -> str:
    # Left out of a file, the metadata's default ("main", empty) would be imported with
    # every message on no branch, shown by nothing: a damaged export, not a choice. (A
    # branch per conversation end would invent names, an active branch and settings that
    # the lossless format is there to carry, and say nothing.) ``messages`` as in the
    # file, not yet validated: only valid ids are named.
    records = [m for m in messages if isinstance(m, dict)]
    parents = {m.get("parent_id") for m in records}
    ids = [m.get("id") for m in records]
    ends = [f'"{i}"' for i in ids if _valid_message_id(i) and i not in parents]
    more = f" and {len(ends) - 3} more" if len(ends) > 3 else ""
    return (
        f'its metadata has no "branches", so none of its {len(messages)} message(s) '
        "would be on a branch. Export the context again where it was made (a file made "
        "by `cm-notebook export` has them), or put "
        'the branches back in its metadata, e.g. "branches": {"main": {"name": "main", '
        '"head": "<id>"}} with the id of a message a conversation ends at '
        f"({', '.join(ends[:3])}{more})"
    )


def _valid_message_id(value: object) -> bool:
    try:
        validate_message_id(value)
    except InvalidIdError:
        return False
    return True


async def export_context(
    store: Store, context_id: str, *, branch: str | None = None
) -> ExportDocument:
    """Read a context from ``store`` into a document: the whole tree, or one branch.

    Raises StateError for a context whose import has not finished (see
    :mod:`cm_notebook._import_mark`): it may lack messages.
    """
    metadata = await store.get_metadata(context_id)
    check_whole_for_export(store, metadata)
    if branch is None:
        index = await store.index(context_id)
        # Arrival order, which has parents first; an index rebuilt by an older version
        # may not have, and a document needs them first.
        by_seq = sorted(index.values(), key=lambda entry: entry.seq)
        ids = [e.id for e in parents_first(by_seq, lambda e: e.id, lambda e: e.parent_id)]
    else:
        ids = await store.path(context_id, branch)
        # A branch export stands alone: only its own branch, and that one active.
        own = metadata.branches[branch].model_copy(update={"forked_from": None})
        metadata = metadata.model_copy(update={"branches": {branch: own}, "active_branch": branch})
    messages = [_redacted(message) for message in await store.get_messages(context_id, ids)]
    # A tool round a dead process left open where nothing can settle it (a folder that
    # cannot be written) as settling it will record it (see _stranded_rounds).
    messages = await as_ended(store, context_id, messages)
    if len(messages) < len(ids):
        # get_messages skipped unreadable files (each named in a warning); a document
        # with holes in its tree would not import.
        lost = [mid for mid in ids if mid not in {m.id for m in messages}]
        raise CorruptDataError(
            for_contexts_in(
                f"context {context_id!r} cannot be exported: {len(lost)} of its messages "
                f"cannot be read ({', '.join(map(repr, lost[:3]))}"
                f"{', ...' if len(lost) > 3 else ''}; the warnings say why). Run "
                f"`cm-notebook check {context_id}`, restore those files from a backup, or "
                "export a branch that does not pass through them (session.export(branch=...)).",
                getattr(store, "data_dir", None),
            )
        )
    if branch is None:
        _check_branches_whole(context_id, metadata, {m.id for m in messages}, store)
    # Provider settings refuse secrets, but files written before that (or imported
    # fields) may still hold one: an export is shared, so it never carries them.
    provider = metadata.provider.model_copy(update={"params": redact(metadata.provider.params)})
    metadata = metadata.model_copy(update={"provider": provider, "extra": redact(metadata.extra)})
    listed = getattr(store, "list_scores", None)
    scores = {} if listed is None else await listed(context_id)
    kept = {m.id for m in messages}
    scores = {mid: redact(_as_written(score)) for mid, score in scores.items() if mid in kept}
    approvals = await read_approvals(store, context_id, messages)
    try:
        return ExportDocument(
            format_version=_format_version(scores, approvals),
            branch=branch,
            metadata=metadata,
            messages=messages,
            scores=scores,
            approvals=approvals,
        )
    except ValidationError as exc:
        # get_messages skips unreadable files (with a warning); a hole breaks the tree.
        raise InvalidInputError(
            f"context {context_id!r} cannot be exported: {first_error(exc, 'document')}"
        ) from exc


def _as_written(score: dict[str, Any]) -> dict[str, Any]:
    # A score as this version writes it, without the fields older versions do not know
    # while they are empty (see cm_notebook.scores): a file written before that rule
    # may still hold them. One that does not validate is left for the document's check
    # to name.
    try:
        return Score.model_validate(score).model_dump(mode="json")
    except ValidationError:
        return score


def _format_version(scores: dict[str, dict[str, Any]], approvals: ExportedApprovals) -> int:
    # The lowest version that says what the document holds (see EXPORT_FORMAT_VERSION).
    if any(score.get("rating_sources") or score.get("tag_sources") for score in scores.values()):
        return 3
    return 2 if approvals else 1


def _check_branches_whole(
    context_id: str, metadata: ContextMetadata, exported: Collection[str], store: Store
) -> None:
    # A branch that refers to a message the tree lacks (a head moved to a message whose
    # file and index entry were lost) makes a document that would not import. Said with
    # what can be done, which the document's own validation error ("refers to missing
    # message") does not: the other branches still export, each on its own.
    problems = []
    for name, branch in metadata.branches.items():
        if branch.head is not None and branch.head not in exported:
            problems.append(f"branch {name!r} points at message {branch.head!r}, which is missing")
        if branch.forked_from is not None and branch.forked_from not in exported:
            problems.append(
                f"branch {name!r} was forked from message {branch.forked_from!r}, which is missing"
            )
    if not problems:
        return
    readable = [
        n for n, b in metadata.branches.items() if b.head is not None and b.head in exported
    ]
    fix = (
        "point the broken branch at a message that is there, or delete it "
        "(FileStore.set_branch_head or FileStore.delete_branch), then export the whole "
        "context again"
    )
    if readable:
        names = ", ".join(map(repr, readable))
        fix = (
            "export each branch that still reads on its own with "
            f"session.export(branch=...) ({names}); or {fix}"
        )
    raise CorruptDataError(
        for_contexts_in(
            f"context {context_id!r} cannot be exported whole: {'; '.join(problems)}. "
            f"{fix[0].upper()}{fix[1:]}. `cm-notebook check {context_id}` lists the damage.",
            getattr(store, "data_dir", None),  # said for its folder, as a caller reads it
        )
    )


def _redacted(message: Message) -> Message:
    # A message's metadata (an echoed error body, parameters) without secrets; what the
    # model wrote (its reasoning, signed thinking blocks) is kept as it wrote it.
    raw = redact_metadata(message.metadata.model_dump(mode="json"))
    metadata = MessageMetadata.model_validate(raw)
    return message.model_copy(update={"metadata": metadata})


def to_json(document: ExportDocument) -> str:
    """The document as indented JSON text (UTF-8 characters kept, not escaped)."""
    empty = {name for name in ("scores", "approvals") if not getattr(document, name)}
    return document.model_dump_json(indent=2, exclude=empty or None) + "\n"


def is_export(data: object) -> bool:
    """True if decoded JSON ``data`` claims to be an export document."""
    return isinstance(data, dict) and data.get("format") == EXPORT_FORMAT


def parse_export(data: str | bytes | dict[str, Any]) -> ExportDocument:
    """Validate an export document (JSON text or decoded); InvalidInputError if it is not,
    SchemaVersionError if its metadata was written by a newer cm_notebook."""
    try:
        if isinstance(data, (str, bytes)):
            data = _json.loads(data)
        else:
            _json.check_depth(data)
    except _json.JSONLimitError as exc:
        raise InvalidInputError(
            f"the export cannot be imported: it is {exc}. Export it again with cm_notebook, "
            "or trim the nested data"
        ) from None
    except ValueError as exc:
        raise InvalidInputError(f"the export is not valid JSON: {exc}") from exc
    if not is_export(data):
        raise InvalidInputError(
            f"not a cm_notebook export (expected a JSON object with format {EXPORT_FORMAT!r})"
        )
    meta = data.get("metadata") if isinstance(data, dict) else None
    version = meta.get("schema_version") if isinstance(meta, dict) else None
    if isinstance(version, int) and not isinstance(version, bool):
        # Before the format is checked: a newer one may hold fields this one refuses,
        # and "upgrade" is the remedy, not "fix the file".
        _check_not_newer(version)
    where = _json.non_finite_at(data)
    if where is not None:  # stored, it would become null: a value changed without a word
        raise InvalidInputError(
            f"the export cannot be imported: {where} is NaN or an infinity, which JSON "
            "cannot hold; replace it (with a number, or null) and import again"
        )
    messages = data.get("messages") if isinstance(data, dict) else None
    if (
        isinstance(meta, dict)
        and "branches" not in meta
        and isinstance(messages, list)
        and messages
    ):
        # Before validation: what it would say of the default branches ("the active
        # branch is not one of ['main']") hides what is wrong.
        raise InvalidInputError(f"the export cannot be imported: {_no_branches(messages)}")
    try:
        return ExportDocument.model_validate(data)
    except ValidationError as exc:
        raise InvalidInputError(
            f"invalid cm_notebook export: {first_error(exc, 'document')}"
        ) from exc


async def import_document(
    store: Store,
    document: ExportDocument,
    *,
    context_id: str | None = None,
    allow_tools: bool = False,
) -> ContextMetadata:
    """Create the document's context in ``store`` (under ``context_id`` if given).

    The document's approval log is kept; the tools it allowed to run without asking
    are allowed here too only with ``allow_tools`` (whoever made the file decided them).

    Raises ContextExistsError if the id is taken, SchemaVersionError if the document
    was written by a newer cm_notebook, and InvalidInputError if it was exported from
    a context whose import never finished (nothing is written then). If writing
    fails half-way, the half-written context is removed again; if the process is killed
    half-way, the context keeps the tag :data:`UNFINISHED_IMPORT`, which only the last
    step takes off (``cm-notebook check`` reports it; importing again under the same id
    replaces it).
    Every field of the document is kept, each branch's ``created_at`` included, except
    the context's ``updated_at``, which the store stamps on every write.
    """
    metadata = document.metadata
    _check_not_newer(metadata.schema_version)  # a document not read by parse_export
    check_whole_document(metadata)  # an export of a part, made before that was refused
    if context_id is not None:
        # model_copy does not validate, so check the id here (InvalidIdError).
        metadata = metadata.model_copy(update={"id": validate_context_id(context_id)})
    cid = metadata.id
    # A new context must start with empty branches, and forked_from can only be set by
    # create_branch once the messages exist: the branches before the first forked one
    # start it (a placeholder stands in for an active branch made later), the rest come
    # after the messages, in the document's order (which the context's list keeps).
    names = list(metadata.branches)
    forked = [i for i, n in enumerate(names) if metadata.branches[n].forked_from is not None]
    first_later = forked[0] if forked else len(names)
    plain = {n: metadata.branches[n].model_copy(update={"head": None}) for n in names[:first_later]}
    placeholder = None
    if metadata.active_branch not in plain:
        placeholder = next(
            f"import-{i}" for i in itertools.count() if f"import-{i}" not in metadata.branches
        )
        plain[placeholder] = Branch(name=placeholder)
    start = metadata.model_copy(
        update={
            "branches": plain,
            "active_branch": placeholder or metadata.active_branch,
            "tags": [*finished_tags(metadata.tags), UNFINISHED_IMPORT],
        }
    )
    lock = _take_import_lock(store, cid)
    try:
        await _import_into(store, document, metadata, start, placeholder, allow_tools)
    finally:
        if lock is not None:
            lock.close()
            with contextlib.suppress(OSError):
                lock.path.unlink()
    return await store.get_metadata(cid)


def _take_import_lock(store: Store, context_id: str) -> OSLock | None:
    path = import_lock(store, context_id)
    if path is None:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:  # a file where the data directory should be
        not_a_folder = OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path.parent))
        raise translate(not_a_folder, path.parent, "use") from None
    except OSError as exc:
        raise translate(exc, path.parent, "use") from exc
    lock = OSLock(path)
    try:
        lock.acquire(timeout=0)
    except LockTimeout:
        lock.close()
        raise ContextExistsError(
            f"context {context_id!r} is being imported by another process now; wait for "
            "that import to end, or import this copy beside it with a new id",
            existing=context_id,
        ) from None
    except OSError as exc:
        # The lock file is the import's first write: a read-only data directory (or
        # one without write permission) refuses it, and says so as every store write does.
        lock.close()
        raise translate(exc, path, "write") from exc
    return lock


async def _import_into(
    store: Store,
    document: ExportDocument,
    metadata: ContextMetadata,
    start: ContextMetadata,
    placeholder: str | None,
    allow_tools: bool,
) -> None:
    cid = metadata.id
    await store.create_context(start)
    try:
        for message in document.messages:
            await store.append_message(cid, message, branch=None)
        # The later branches as they were exported, created_at included (create_branch
        # would stamp them with now), in one write now that their messages exist.
        later = [b for n, b in metadata.branches.items() if n not in start.branches]
        await store.create_branches(cid, later)
        for name, branch in metadata.branches.items():
            if name in start.branches and branch.head is not None:
                await store.set_branch_head(cid, name, branch.head)
        if placeholder is not None:
            await store.set_active_branch(cid, metadata.active_branch)
            await store.delete_branch(cid, placeholder)
        await _import_scores(store, cid, document)
        await write_exported_approvals(store, cid, document.approvals, allow_tools=allow_tools)
        # Done: the last step.
        await store.update_metadata(cid, tags=finished_tags(metadata.tags))
    except BaseException:
        with anyio.CancelScope(shield=True), contextlib.suppress(CMError, OSError):
            await store.delete_context(cid)  # best effort; the original error is reported
        raise


async def _import_scores(store: Store, context_id: str, document: ExportDocument) -> None:
    update = getattr(store, "update_score", None)
    if update is None:
        return
    for message_id, score in document.scores.items():  # checked by the document
        data = Score.model_validate(score).model_dump(mode="json")
        await update(context_id, message_id, lambda _old, data=data: data)


def to_markdown(document: ExportDocument, *, branch: str | None = None) -> str:
    """One branch of the document (default: its branch, else the active one) as Markdown.

    For reading, and safe to render with raw HTML allowed: no message can carry live
    markup or script links into it, leave a block open, or forge a turn (see
    :mod:`cm_notebook._export_markdown`).
    """
    meta = document.metadata
    name = branch or document.branch or meta.active_branch
    return markdown_of(
        title=meta.title,
        context_id=meta.id,
        branch=name,
        others=sorted(n for n in meta.branches if n != name),
        created=f"{meta.created_at:%Y-%m-%d %H:%M} UTC",
        tags=list(meta.tags),
        # The branch's prompt now; each reply is shown under the one it was made under.
        system_prompt=effective_system(meta, name),
        messages=document.path(name),
    )
