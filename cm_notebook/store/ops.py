"""The store's operations on one context, as plain synchronous functions.

:class:`~cm_notebook.store.filestore.FileStore` validates arguments, picks the
:class:`~cm_notebook.store.context.ContextState` and runs these in a worker thread.
Functions named ``do_*`` run inside ``state.locked()`` (all write locks held, state
fresh); the others run inside ``state.view()`` (state lock held) and never write.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from types import EllipsisType
from typing import Any

from pydantic import ValidationError

from .._cli_advice import for_contexts_in
from ..errors import (
    BranchExistsError,
    BranchMovedError,
    BranchNotFoundError,
    CorruptDataError,
    InvalidInputError,
    MessageNotFoundError,
    SchemaVersionError,
    StateError,
    StoreError,
    StoreIOError,
)
from ..ids import check_branch_names_free
from ..model import (
    Branch,
    ContextMetadata,
    Message,
    MessageStatus,
    ProviderSettings,
    utcnow,
    validate_labels,
)
from .atomic import atomic_write
from .base import IndexEntry
from .codec import read_message_file
from .context import ContextState
from .diagnostics import warn
from .index import RebuildNeeded
from .oserrors import OUT_OF_RESOURCES
from .paths import data_dir_of, message_path, trusted_message_path
from .pending import file_digest
from .repair import intact

__all__ = [
    "check_head",
    "do_append",
    "do_change_labels",
    "do_create_branch",
    "do_delete_branch",
    "do_set_active_branch",
    "do_set_branch_head",
    "do_update_branch",
    "do_update_message",
    "do_update_metadata",
    "find_branch",
    "read_messages",
    "read_restoring",
    "require_message",
    "restore_lost",
    "select_page",
    "walk",
]


# -- reading ---------------------------------------------------------------------------


def find_branch(metadata: ContextMetadata, name: str | None) -> Branch:
    """The branch called ``name`` (None: the active one), or BranchNotFoundError."""
    name = metadata.active_branch if name is None else name
    branch = metadata.branches.get(name)
    if branch is None:
        raise BranchNotFoundError(
            f"context {metadata.id!r} has no branch {name!r}; it has {sorted(metadata.branches)}."
        )
    return branch


def require_message(state: ContextState, message_id: str | None) -> None:
    """Raise MessageNotFoundError unless ``message_id`` is None or in the index."""
    if message_id is not None and message_id not in state.index.entries:
        raise MessageNotFoundError(f"context {state.context_id!r} has no message {message_id!r}.")


def walk(state: ContextState, head: str | None, branch: str) -> list[str]:
    """Ids from ``head`` up to the root, head first. Reads no message files.

    Stops at the head of a recent walk and takes the rest from it (see
    :mod:`.walks`), so a turn's walk costs what the turn added.
    """
    entries = state.index.entries
    walks = state.walks
    walks.for_index(entries)
    ids: list[str] = []
    current = head
    while current is not None:
        known = walks.get(current)
        if known is not None:
            ids += known
            break
        entry = entries.get(current)
        if entry is None:
            # A lazily read index finds a damaged line (RebuildNeeded) only by parsing
            # everything: a parent link to nowhere is worth that before blaming the file.
            entry = state.index.materialize().get(current)
        if entry is None:
            raise _missing_from_index(state, current, branch)
        ids.append(current)
        if len(ids) > len(entries):
            raise CorruptDataError(
                f"the parent links of context {state.context_id!r} form a loop, so the index "
                "is damaged. Delete message_index.json to have it rebuilt from the messages.",
                state.index.index_path,
            )
        current = entry.parent_id
    if head is not None:
        walks.keep(head, ids)
    return ids


def _missing_from_index(state: ContextState, message_id: str, branch: str) -> CorruptDataError:
    # The advice depends on whether the file is there: if it is, restoring it would do
    # nothing; the index is what lost it.
    path = message_path(state.dir, message_id)
    where = (
        f"branch {branch!r} of context {state.context_id!r} leads to message "
        f"{message_id!r}, which is missing from the index"
    )
    # The command said for this store's folder: a Python caller reads it as raised.
    data_dir = data_dir_of(state.dir)
    try:
        read_message_file(path, message_id)
    except (StoreError, OSError):  # CorruptDataError, StoreIOError, ...
        return CorruptDataError(
            for_contexts_in(
                f"{where} (its file {path} is missing or unreadable). Run `cm-notebook check "
                f"{state.context_id}`: if the index disagrees with the files, `--repair` "
                "rebuilds it; else restore the file, or point the branch at another message "
                "(FileStore.set_branch_head).",
                data_dir,
            ),
            path,
        )
    return CorruptDataError(
        for_contexts_in(
            f"{where}, although its file {path} is intact: the index is older than the "
            "branch (an index file put back?), or no conversation leads to that message. Run "
            f"`cm-notebook check --repair {state.context_id}` to rebuild the index from the "
            "message files, or to learn what that message goes back to.",
            data_dir,
        ),
        state.index.index_path,
    )


def select_page(
    state: ContextState,
    metadata: ContextMetadata,
    branch: str | None,
    limit: int,
    before: str | None,
) -> list[str]:
    """Ids of the page :meth:`FileStore.page` returns, oldest first.

    Walks only as far up the branch as needed: from the head (or from ``before``) for
    ``limit`` steps, so its cost does not depend on the length of the conversation.
    """
    target = find_branch(metadata, branch)
    entries = state.index.entries
    current = target.head
    if before is not None:
        require_message(state, before)
        while current is not None and current != before:
            entry = entries.get(current)
            if entry is None:
                walk(state, current, target.name)  # raises the precise error
            current = entry.parent_id if entry is not None else None
        if current is None:
            raise InvalidInputError(
                f"message {before!r} is not on branch {target.name!r} of context "
                f"{state.context_id!r}; page(before=...) takes an id from that branch."
            )
        current = entries[before].parent_id
    chosen: list[str] = []
    while current is not None and len(chosen) < limit:
        entry = entries.get(current)
        if entry is None:
            walk(state, current, target.name)  # raises the precise error
            break  # pragma: no cover - walk always raises here
        chosen.append(current)
        current = entry.parent_id
    return chosen[::-1]


def read_messages(state: ContextState, ids: list[str]) -> list[Message]:
    """Read message files in order, skipping unreadable ones with a StoreWarning.

    ``ids`` come from the index, whose ids were validated when they entered it (from a
    caller or from disk), so their paths are joined as plain strings here; the file
    itself is still checked (a regular file, no link, the id it should hold).
    """
    messages = []
    folder = state.messages_dir
    # One check of the folder per call instead of one per file.
    trusted = not os.path.islink(folder)
    prefix = f"{folder}{os.sep}"
    restore_lost(state, ids)
    for message_id in ids:
        where: str | Path = f"{prefix}{message_id}.json" if trusted else folder
        try:
            if not trusted:
                where = message_path(state.dir, message_id)
            messages.append(read_restoring(state, where, message_id, check_folder=not trusted))
        except (CorruptDataError, SchemaVersionError, StoreIOError) as exc:
            if isinstance(exc, StoreIOError) and exc.errno in OUT_OF_RESOURCES:
                raise  # not this file's fault: skipping would show every file as gone
            # One bad file must not hide a whole conversation: skip it, by path.
            warn(f"skipped an unreadable message: {exc}", Path(where))
    return messages


def read_restoring(
    state: ContextState, path: str | Path, message_id: str, *, check_folder: bool = True
) -> Message:
    """:func:`read_message_file`; a damaged file whose message the journal still holds
    (the same size, say, so :func:`restore_lost` let it pass) is restored from it first.
    A reply whose writer died that this reader could not mark reads as marked (see
    :mod:`.unmarked_streams`).
    """
    try:
        message = read_message_file(path, message_id, check_folder=check_folder)
    except CorruptDataError:
        try:
            with state.state_lock:
                held = state.index.copy_of(message_id) is not None
        except RebuildNeeded:
            held = False
        if not held:
            raise
        state.restore([message_id], compare=True)
        message = read_message_file(path, message_id, check_folder=check_folder)
    return state.unmarked.as_marked(message)


def restore_lost(state: ContextState, ids: list[str]) -> None:
    """Restore the files of these messages that a power loss took, before reading them.

    A message whose durable copy is still in the journal is checked by its file's size
    (see :mod:`.repair`); call without holding any lock.
    """
    if os.path.islink(state.messages_dir):
        return  # never written through (readers refuse it, by path)
    prefix = f"{state.messages_dir}{os.sep}"
    try:
        with state.state_lock:
            sizes = {mid: copy[2] for mid in ids if (copy := state.index.copy_of(mid))}
    except RebuildNeeded:
        return  # remembered by the index: the next read rebuilds it
    lost = [mid for mid, size in sizes.items() if not intact(f"{prefix}{mid}.json", size)]
    if lost:
        state.restore(lost)


# -- writing (inside state.locked()) ---------------------------------------------------


def _save(state: ContextState, metadata: ContextMetadata, **changes: Any) -> ContextMetadata:
    updated = metadata.model_copy(update={**changes, "updated_at": utcnow()})
    state.write_metadata(updated)
    return updated


def _now() -> str:
    return utcnow().isoformat()


def do_append(
    state: ContextState,
    metadata: ContextMetadata,
    message: Message,
    data: tuple[bytes, bytes],
    branch: str | None,
    expected_head: str | EllipsisType | None = ...,
) -> None:
    """Message file, then one journal line: the commit point, the head move and the time.

    ``data`` is the pair :func:`~cm_notebook.store.codec.encode_message_forms` returns.
    A finished message's line carries the message and is fsync'd; a streaming one's is
    not (an unfinished reply is not acknowledged; see the FileStore docstring).
    """
    if message.id in state.index.entries:
        raise InvalidInputError(
            f"context {state.context_id!r} already has a message {message.id!r}; a new message "
            "needs a new id (update_message changes an existing one)."
        )
    require_message(state, message.parent_id)
    target = find_branch(metadata, branch) if branch is not None else None
    if target is not None:
        check_head(state, target, expected_head)
    streaming = message.status is MessageStatus.STREAMING
    if streaming:
        state.streaming.take(message.id)
    path = trusted_message_path(state.messages_dir, message.id)  # checked by the caller
    mark = state.index.mark()
    file_bytes, compact = data
    try:
        # Not fsync'd: the journal line below is the durable copy (see repair.py).
        atomic_write(path, file_bytes, fsync=None, temp_dir=state.dir)
        state.index.append(
            IndexEntry.of(message, state.index.next_seq),
            at=_now(),
            branch=target.name if target is not None else None,
            content=None if streaming else compact,
            size=len(file_bytes),
            durable=not streaming,
        )
    except BaseException:
        _undo_append(state, mark, path, message.id, streaming)
        raise
    if not streaming:
        state.flushes.note(message.id)
    state.compact_if_due()


def _undo_append(
    state: ContextState, mark: int, path: Path, message_id: str, streaming: bool
) -> None:
    # A failed append (a full disk, most likely) must leave nothing visible: take back
    # the journal line (if any of it was written) and the message file.
    # Best effort: the error that made the append fail is the one to report.
    with contextlib.suppress(OSError, StoreError, RebuildNeeded):
        state.index.retract(mark)
        path.unlink(missing_ok=True)
    if streaming:
        with contextlib.suppress(OSError):
            state.streaming.drop(message_id, remove_file=True)


def do_update_message(
    state: ContextState, metadata: ContextMetadata, message: Message, data: tuple[bytes, bytes]
) -> None:
    """Rewrite the message file; unless it is a streaming checkpoint, add a journal line.

    A checkpoint (the message stays ``streaming``) only replaces the file, without an
    fsync: it is not acknowledged. Any other update commits with one fsync'd journal
    line carrying the message. An update of a message already finished whose committed
    copy the journal holds first appends a marker (no fsync), so that a kill between
    the file and the commit line is told from damage (see :mod:`.pending`).
    """
    require_message(state, message.id)
    old = state.index.entries[message.id]
    if old.parent_id != message.parent_id or old.role != message.role:
        raise InvalidInputError(
            f"message {message.id!r} has parent {old.parent_id!r} and role {old.role!r}; "
            "update_message cannot change them (append a new message instead)."
        )
    streaming = message.status is MessageStatus.STREAMING
    if streaming and old.status is not MessageStatus.STREAMING:
        # A checkpoint that lost the race for the lock to the final update (or one sent
        # after it) must not turn the finished message back into a stream.
        raise StateError(
            f"message {message.id!r} of context {state.context_id!r} already finished with "
            f"status {old.status.value!r}; a streaming update cannot reopen it."
        )
    if streaming or old.status is MessageStatus.STREAMING:
        # Refuses (StoreError) if a live writer elsewhere is still streaming it.
        state.streaming.take(message.id)
    file_bytes, compact = data
    path = trusted_message_path(state.messages_dir, message.id)  # an id of the index
    if old.status is not MessageStatus.STREAMING and state.index.copy_of(message.id) is not None:
        # Repair compares the file with that copy: without the marker, an update killed
        # before its line below would read as a file the machine lost (a StoreWarning).
        state.index.append_marker(old, file_digest(file_bytes))
    atomic_write(path, file_bytes, fsync=None, temp_dir=state.dir)
    if not streaming:
        entry = IndexEntry.of(message, old.seq)
        state.index.append(entry, at=_now(), content=compact, size=len(file_bytes))
        state.flushes.note(message.id)
        # Only after the final state's line is written: until then a crash must still
        # read as "writer died while streaming". (A line whose fsync is made after the
        # locks are released, see quick_writes, is the OS's once written: a killed
        # process leaves it; a power loss before its fsync finds no live writer either.)
        state.streaming.drop(message.id, remove_file=True)
        state.refused.forget(message.id)
    state.compact_if_due()


def do_update_metadata(
    state: ContextState,
    metadata: ContextMetadata,
    changes: dict[str, Any],
    provider_spec: str | None,
    provider_params: dict[str, object] | None,
    expected_title: str | None = None,
) -> ContextMetadata:
    """Apply caller-supplied field changes, validated like any other metadata; with
    ``expected_title``, only if the title is still that one (else StateError)."""
    if expected_title is not None and metadata.title != expected_title:
        raise StateError(
            f"context {state.context_id!r} is now titled {metadata.title!r}, not "
            f"{expected_title!r} (another writer renamed it); nothing was changed. Read "
            "the title again before changing it."
        )
    raw = metadata.model_dump()
    raw.update(changes)
    if provider_spec is not None:
        raw["provider"]["spec"] = provider_spec
    if provider_params is not None:
        raw["provider"]["params"] = provider_params
    raw["updated_at"] = utcnow()
    try:
        ProviderSettings.model_validate(raw["provider"])
        updated = ContextMetadata.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInputError(f"cannot update context {state.context_id!r}: {exc}") from exc
    state.write_metadata(updated)
    return updated


def do_create_branch(state: ContextState, metadata: ContextMetadata, branch: Branch) -> None:
    """Add a new branch pointer."""
    do_create_branches(state, metadata, [branch])


def do_create_branches(
    state: ContextState, metadata: ContextMetadata, branches: Sequence[Branch]
) -> None:
    """Add new branch pointers, all in one metadata write (a sweep makes one per cell:
    made one at a time, each would rewrite every branch made before it)."""
    check_branch_names_free((branch.name for branch in branches), metadata.branches)
    names = dict(metadata.branches)
    for branch in branches:
        if branch.name in names:
            raise BranchExistsError(
                f"context {state.context_id!r} already has a branch {branch.name!r}; pick "
                "another name, or delete that branch first (delete_branch)."
            )
        require_message(state, branch.head)
        require_message(state, branch.forked_from)
        names[branch.name] = branch
    _save(state, metadata, branches=names)


def check_head(
    state: ContextState, branch: Branch, expected_head: str | EllipsisType | None
) -> None:
    """The compare of a compare-and-set on a head (``...``: no compare)."""
    if expected_head is not ... and branch.head != expected_head:
        raise BranchMovedError(
            f"branch {branch.name!r} of context {state.context_id!r} moved: its head is "
            f"{branch.head!r}, not {expected_head!r} (another writer moved it). Nothing "
            "was written; read the branch again and retry."
        )


def do_set_branch_head(
    state: ContextState,
    metadata: ContextMetadata,
    name: str,
    head: str | None,
    expected_head: str | EllipsisType | None = ...,
) -> Branch:
    """Move an existing branch's head (a compare-and-set with ``expected_head``)."""
    current = find_branch(metadata, name)
    check_head(state, current, expected_head)
    branch = current.model_copy(update={"head": head})
    require_message(state, head)
    state.index.append_head(name, head, at=_now())
    state.compact_if_due()
    return branch


def do_set_active_branch(
    state: ContextState, metadata: ContextMetadata, name: str
) -> ContextMetadata:
    """Switch the active branch."""
    find_branch(metadata, name)
    return _save(state, metadata, active_branch=name)


def do_delete_branch(state: ContextState, metadata: ContextMetadata, name: str) -> None:
    """Remove a branch pointer; its messages stay."""
    find_branch(metadata, name)
    if name == metadata.active_branch:
        raise StateError(
            f"branch {name!r} is the active branch of context {state.context_id!r}; switch to "
            "another branch (set_active_branch) before deleting it."
        )
    _save(
        state,
        metadata,
        branches={key: value for key, value in metadata.branches.items() if key != name},
    )


def do_update_branch(
    state: ContextState, metadata: ContextMetadata, name: str, changes: dict[str, Any]
) -> Branch:
    """Change a branch's own defaults (system prompt, provider, parameters), validated."""
    raw = find_branch(metadata, name).model_dump()
    raw.update(changes)
    try:
        branch = Branch.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInputError(f"cannot update branch {name!r}: {exc}") from exc
    _save(state, metadata, branches={**metadata.branches, name: branch})
    return branch


def do_change_labels(
    state: ContextState,
    metadata: ContextMetadata,
    changes: dict[str, dict[str, str | None]],
    unique: str | None,
) -> dict[str, Branch]:
    """Merge label changes into the branches' labels as they are now (None removes a
    label); with ``unique``, every other branch loses that label. Returns the branches
    whose labels changed (nothing is written when none did)."""
    changed: dict[str, Branch] = {}
    for name in changes:
        find_branch(metadata, name)
    for name, branch in metadata.branches.items():
        labels = dict(branch.labels)
        for key, value in changes.get(name, {}).items():
            if value is None:
                labels.pop(key, None)
            else:
                labels[key] = value
        if unique is not None and changes.get(name, {}).get(unique) is None:
            labels.pop(unique, None)
        if labels == branch.labels:
            continue
        try:
            checked = validate_labels(labels)
        except ValueError as exc:
            raise InvalidInputError(f"labels of branch {name!r}: {exc}") from exc
        changed[name] = branch.model_copy(update={"labels": checked})
    if changed:
        _save(state, metadata, branches={**metadata.branches, **changed})
    return changed
