"""Finishing a context that an interrupted migration left marked unfinished.

:func:`~cm_notebook.migrate._run._write` creates a context with the tag
:data:`~cm_notebook._migration_mark.UNFINISHED_MIGRATION`, and the tag comes off only
once every message is written, every head set and the whole checked. A context that
still has it is this migration's to finish, whatever the user did with it since (the
session warns when it is opened, but does not refuse): the messages not yet written are
added off-branch, and each v1 branch is made to lead to its v1 path:

* a branch still empty gets its head (a compare-and-set);
* a branch the user carried on from its migrated head keeps the user's messages;
* a branch the user wrote on otherwise (sent on it while it was still empty, or moved
  its head) is left as it is, and the v1 branch's path goes on a new branch,
  ``<name>-v1``, with a note.

Nothing is deleted. Only a message of the source that reads differently now stops it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .._migration_mark import is_unfinished_migration, without_mark
from ..ids import branch_name_key, free_branch_name
from ..model import Branch
from ..store.base import Store
from ._convert import ConvertedContext
from ._util import content_digest

__all__ = [
    "Finished",
    "branch_names",
    "finish_marked",
    "is_marked",
    "mark_finished",
    "unfinished_writes",
    "unset_heads",
]


@dataclass
class Finished:
    """What finishing a marked context did (or, in a dry run, would do)."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    failed: bool = False
    content_sha256: str | None = None


def branch_names(branches: list[str]) -> str:
    quoted = ", ".join(repr(b) for b in branches)
    return f"branch {quoted}" if len(branches) == 1 else f"branches {quoted}"


async def is_marked(store: Store, context_id: str) -> bool:
    return is_unfinished_migration(await store.get_metadata(context_id))


async def mark_finished(store: Store, context_id: str) -> None:
    """Take the unfinished mark off (the last step of a migration)."""
    meta = await store.get_metadata(context_id)
    if is_unfinished_migration(meta):
        await store.update_metadata(context_id, tags=without_mark(meta.tags))


def _incomplete(cid: str, why: str) -> Finished:
    return Finished(
        problems=[
            f"an earlier migration was interrupted, and {why}",
            f"context {cid!r} was left incomplete; remove it (`cm-notebook rm {cid}`) and "
            f"migrate again (what was added to it since goes with it: `cm-notebook export "
            f"{cid}` first keeps a copy)",
        ],
        failed=True,
    )


async def finish_marked(conv: ConvertedContext, store: Store, dry_run: bool) -> Finished:
    """Finish ``conv``'s context, which carries the unfinished mark (see the module).

    Store errors propagate: the caller reports them, and the mark stays on.
    """
    cid = conv.metadata.id
    index = await store.index(cid)
    present = [m.id for m in conv.messages if m.id in index]
    missing = [m for m in conv.messages if m.id not in index]
    lookup = {m.id: m for m in await store.get_messages(cid, present)}
    for source in conv.messages:
        if source.id not in index:
            continue
        stored = lookup.get(source.id)
        if stored is None:
            return _incomplete(cid, f"message {source.id!r} cannot be read (see the warnings)")
        if (stored.role, stored.content, stored.parent_id) != (
            source.role,
            source.content,
            source.parent_id,
        ):
            return _incomplete(
                cid,
                "the message contents differ from the source "
                f"(message {source.id!r} differs from the source)",
            )
    meta = await store.get_metadata(cid)
    taken = {branch_name_key(name) for name in meta.branches}
    unset: list[str] = []  # branches that get their migrated head
    moved: dict[str, Branch] = {}  # branch written on by the user -> the v1 branch, renamed
    where: dict[str, str] = {}  # v1 branch -> the branch that leads to its path
    for name, branch in conv.metadata.branches.items():
        if branch.head is None:
            continue  # an empty v1 branch: created empty, nothing to finish
        have = meta.branches.get(name)
        if have is not None and have.head is None:
            unset.append(name)
            where[name] = name
        elif have is not None and have.head == branch.head:
            where[name] = name
        elif have is not None and (await store.path(cid, name))[: len(conv.path(name))] == (
            conv.path(name)
        ):
            where[name] = name  # carried on from its migrated head: the user's messages stay
        else:
            new = free_branch_name(f"{name}-v1", lambda n: branch_name_key(n) in taken, bare=True)
            taken.add(branch_name_key(new))
            moved[name] = branch.model_copy(update={"name": new})
            where[name] = new
    finish = "migrating finishes it" if dry_run else "finished now"
    done = Finished()
    if missing:
        cut = f"an earlier migration was interrupted after {len(present)} of its messages"
        done.notes.append(
            f"{cut}; {finish}" if dry_run else f"{cut}; the other {len(missing)} written now"
        )
    if unset:
        what = (
            f"an earlier migration was interrupted before it set the head of {branch_names(unset)}"
        )
        done.notes.append(f"{what}; {finish}")
    for name, branch in moved.items():
        done.notes.append(
            f"branch {name!r} was written on before the migration finished; it is kept as it "
            f"is, and the v1 branch {name!r} {'would be' if dry_run else 'is now'} the branch "
            f"{branch.name!r}"
        )
    if not done.notes:
        done.notes.append(f"an earlier migration was interrupted before it finished; {finish}")
    if dry_run:
        done.content_sha256 = content_digest((m.role, m.content) for m, _ in conv.originals)
        return done
    for message in missing:  # in the order written: parents first
        await store.append_message(cid, message, branch=None)
    for name in unset:
        # A compare-and-set: a head someone set meanwhile is not overwritten.
        await store.set_branch_head(
            cid, name, conv.metadata.branches[name].head, expected_head=None
        )
    if moved:
        await store.create_branches(cid, list(moved.values()))
    wrong = []
    for name, branch_name in where.items():
        expected = conv.path(name)
        if (await store.path(cid, branch_name))[: len(expected)] != expected:
            wrong.append(branch_name)
    if wrong:
        done.problems.append(
            f"finishing it failed: {branch_names(wrong)} still lead elsewhere; run it again"
        )
        done.failed = True
        return done
    written = {m.id: m for m in await store.get_messages(cid, [i for _, i in conv.originals])}
    unreadable = [i for _, i in conv.originals if i not in written]
    if unreadable:
        done.problems.append(
            f"finishing it failed: message {unreadable[0]!r} cannot be read (see the "
            "warnings); run it again"
        )
        done.failed = True
        return done
    done.content_sha256 = content_digest(
        (written[i].role, written[i].content) for _, i in conv.originals
    )
    await mark_finished(store, cid)
    return done


# -- contexts written before the mark existed -----------------------------------------


async def unset_heads(conv: ConvertedContext, store: Store) -> list[str]:
    """The branches whose head an interrupted earlier run left unset.

    ``_run._write`` creates the context (with the ``v1_source_sha256`` that a second run
    recognises it by) with every branch empty, appends the messages, and only then sets
    each head. A run killed in between leaves branches with no head where v1 has
    messages. Nothing else leaves that state (the package never empties a branch; a
    branch moved back, as for a regenerated reply, still has a head), so those heads
    are safe to set, whatever else was done with the context since.
    """
    written = await store.get_metadata(conv.metadata.id)
    return [
        name
        for name, branch in conv.metadata.branches.items()
        if branch.head is not None
        and name in written.branches
        and written.branches[name].head is None
    ]


async def unfinished_writes(
    conv: ConvertedContext, store: Store, index: Mapping[str, object]
) -> str | None:
    """None if the context looks as ``_run._write`` leaves it when killed while writing
    the messages (every branch still empty, the messages there the source's own), so
    writing the rest finishes it; else what makes that unsafe."""
    written = await store.get_metadata(conv.metadata.id)
    moved = [name for name, branch in written.branches.items() if branch.head is not None]
    if moved:
        return f"{branch_names(moved)} already {'leads' if len(moved) == 1 else 'lead'} somewhere"
    expected = {m.id: m for m in conv.messages}
    present = [i for i in index if i in expected]
    for stored in await store.get_messages(conv.metadata.id, present):
        source = expected[stored.id]
        if (stored.role, stored.content, stored.parent_id) != (
            source.role,
            source.content,
            source.parent_id,
        ):
            return f"message {stored.id!r} differs from the source"
    return None
