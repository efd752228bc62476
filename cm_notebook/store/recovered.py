"""What a rebuilt index keeps of the one it replaces, and branches for conversations
it had lost: ``recovered``, ``recovered-2``, ...

A message whose journal line is gone (the journal cut short, deleted, damaged, or put
back from an older copy) is listed again once the index is rebuilt from the message
files, but the head move that line carried is gone with it: the conversation it ends
is on no branch, and no view would show it. Both repairs that bring such messages
back, ``check --repair`` and the rebuild a damaged index gets when it is read, give
each such conversation end a branch of its own, so that it shows up in the branch
selector. Nothing is moved: the branches the user made keep their heads.

A rebuild reads the message files; one it cannot read (damaged, or gone, with no
journal line left to restore it from) would drop out of the index, and with it every
branch through it. When the damaged index still tells where that message was, its
entry is kept instead (:func:`rebuilt_entries`): reads skip that message with a
warning, as they skip any unreadable file, and the rest of its conversation reads.

A message file no conversation leads to (its parent is neither a file nor an entry,
or parent links go round in a loop: see :func:`.order.unrooted`) is left out of a
rebuilt index, with a warning, and gets no branch: listed, it would make every read
of the whole tree (an export) and of its branch fail. Its file stays; ``cm-notebook
check`` names it, and once the messages it goes back to are restored, a repair
brings it in. Where what it goes back to is a message file that is there but cannot
be read, ``check --repair`` keeps that file aside and puts a marked stand-in in its
place first (see :mod:`.stand_ins`), so one damaged file does not take the rest of
its conversation with it.

The branches a repair makes are named so that none looks like a branch already there
(``recovered-2`` beside a user's ``Recovered``: see :func:`cm_notebook.ids.branch_name_key`),
as everything else that reads the branches refuses such look-alikes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .._cli_advice import for_contexts_in
from ..errors import CorruptDataError, StoreError
from ..ids import branch_name_key
from ..model import Branch, ContextMetadata, Message, utcnow
from .base import IndexEntry
from .codec import read_message_file, read_regular
from .diagnostics import warn
from .journal import JournalLine
from .links import index_broken, trusted_entry
from .order import parents_first, unrooted
from .paths import data_dir_of, message_path
from .snapshot import RebuildNeeded, parse_snapshot

if TYPE_CHECKING:
    from .context import ContextState

__all__ = [
    "RECOVERED",
    "branch_hidden_ends",
    "head_the_index_lost",
    "known_entries",
    "listed_entries",
    "rebuilt_entries",
    "recover_hidden",
]

#: The name of the first branch a repair makes (then ``recovered-2``, ...).
RECOVERED = "recovered"


def branch_hidden_ends(
    state: ContextState, metadata: ContextMetadata, found: Mapping[str, Message]
) -> tuple[str, ...]:
    """Give each conversation end among ``found`` (messages the index did not list) that
    no branch reaches a branch of its own, in metadata.json (write locks held); returns
    the names made. ``found`` may already be in the index (after a rebuild) or not yet.
    A message no conversation leads to (see :func:`.order.unrooted`) gets none: its
    branch could not be read.
    """
    entries = state.index.entries
    links = {mid: entry.parent_id for mid, entry in entries.items()}
    links.update((mid, message.parent_id) for mid, message in found.items())
    broken = unrooted(links)
    if broken:
        found = {mid: message for mid, message in found.items() if mid not in broken}

    def parent_of(message_id: str) -> str | None:
        if message_id in found:
            return found[message_id].parent_id
        entry = entries.get(message_id)
        return None if entry is None else entry.parent_id

    reached: set[str] = set()
    for branch in metadata.branches.values():
        at = branch.head
        while at is not None and at not in reached and (at in entries or at in found):
            reached.add(at)
            at = parent_of(at)
    parents = {message.parent_id for message in found.values()} | {
        entry.parent_id for entry in entries.values() if entry.parent_id in found
    }
    ends = sorted(
        (message for mid, message in found.items() if mid not in parents and mid not in reached),
        key=lambda message: (message.created_at, message.id),
    )
    if not ends:
        return ()
    branches = dict(metadata.branches)
    # Not only the exact names: one that looks like a user's branch ("recovered" beside
    # "Recovered") is refused by every later check of the branches (an export's).
    taken = {branch_name_key(name) for name in branches}
    made = []
    for end in ends:
        name, number = RECOVERED, 1
        while branch_name_key(name) in taken:
            number += 1
            name = f"{RECOVERED}-{number}"
        taken.add(branch_name_key(name))
        fork = end.parent_id
        while fork is not None and fork not in reached and (fork in found or fork in entries):
            fork = parent_of(fork)  # where it leaves what the branches show
        branches[name] = Branch(
            name=name,
            head=end.id,
            forked_from=fork,
            description="messages the index had lost, brought back by a repair",
        )
        made.append(name)
    state.write_metadata(metadata.model_copy(update={"branches": branches, "updated_at": utcnow()}))
    return tuple(made)


def head_the_index_lost(
    ctx_dir: Path, entries: Mapping[str, IndexEntry], metadata: ContextMetadata
) -> Branch | None:
    """The first branch whose head ``entries`` (the index) lacks although a rebuild
    would list it: its file reads, and its conversation leads back to a first message
    through files and entries. The index lost journal lines then.

    A head whose file is gone or unreadable is left to the readers, which report that
    file by path, and so is one no conversation leads to (a rebuild leaves it out
    again, see the module docstring): rebuilding could not bring either back, and
    would be tried again on every read.
    """
    # What one walk learned serves the next: branches share most of their path, and
    # each file is read at most once however many branches go through it.
    verdicts: dict[str, bool] = {}
    for branch in metadata.branches.values():
        if (
            branch.head is not None
            and branch.head not in entries
            and _leads_to_a_first(ctx_dir, entries, branch.head, verdicts)
        ):
            return branch
    return None


def _leads_to_a_first(
    ctx_dir: Path, entries: Mapping[str, IndexEntry], head: str, verdicts: dict[str, bool]
) -> bool:
    # Up from ``head`` through the files the index lacks (a few: what lost lines listed)
    # to a first message or an entry; False at a file gone or unreadable, or a loop.
    # ``verdicts``: what earlier walks found for the ids they went through (updated).
    at: str | None = head
    path: list[str] = []
    seen: set[str] = set()
    verdict = True
    while at is not None and at not in entries:
        known = verdicts.get(at)
        if known is not None:
            verdict = known
            break
        if at in seen:
            verdict = False
            break
        seen.add(at)
        path.append(at)
        try:
            at = read_message_file(message_path(ctx_dir, at), at).parent_id
        except CorruptDataError:
            verdict = False
            break
    verdicts.update(dict.fromkeys(path, verdict))
    return verdict


def listed_entries(snapshot_path: Path) -> dict[str, IndexEntry] | None:
    """The entries ``message_index.json`` lists, by id, or None if it cannot be read
    (before a rebuild: what it finds beyond these and the journal's surviving lines
    lost lines)."""
    try:
        data = read_regular(snapshot_path, check_folder=False)
        entries = parse_snapshot(data, snapshot_path)[0]
    except (OSError, StoreError, RebuildNeeded):
        return None
    return {entry.id: entry for entry in entries}


def known_entries(
    listed: Mapping[str, IndexEntry] | None, salvaged: Iterable[JournalLine]
) -> dict[str, IndexEntry]:
    """What a damaged index still tells of each message: the snapshot's entry, updated
    by the journal lines that survived (the last line of a message wins)."""
    known = dict(listed or {})
    for line in salvaged:
        if line.entry is not None:
            known[line.entry.id] = line.entry
    return known


def rebuilt_entries(
    found: list[Message],
    skipped: list[tuple[str, Path]],
    known: Mapping[str, IndexEntry],
    folder: Path,
) -> list[IndexEntry]:
    """The entries of a rebuilt index, numbered by creation time, then id, with every
    parent before its children (see :mod:`.order`): one per
    message ``found`` in the files, and the ``known`` entry of each message whose file
    is unreadable or gone (see the module docstring), with a warning for each file in
    ``skipped`` (unreadable ones, with what is wrong with them). Messages no
    conversation leads to are left out, with a warning (see the module docstring). A
    file whose parent or role is not the one of a ``known`` entry that the old index
    still links to a first message gets that entry's (see :mod:`.links`)."""
    read = {message.id for message in found}
    problems = {file.name: problem for problem, file in skipped}
    kept = [entry for message_id, entry in known.items() if message_id not in read]
    # A file's link where the old index's leads nowhere; the committed one where it
    # does (a file naming another is what was changed: see .links).
    broken_before = index_broken(known)
    trusted = (trusted_entry(message, known, broken_before, folder) for message in found)
    listed = [*trusted, *kept]
    broken = unrooted({entry.id: entry.parent_id for entry in listed})
    if broken:
        _warn_left_out(broken, folder)
        listed = [entry for entry in listed if entry.id not in broken]
        kept = [entry for entry in kept if entry.id not in broken]
    for entry in kept:
        file = folder / f"{entry.id}.json"
        problem = problems.pop(file.name, "it is missing")
        warn(
            f"kept the index entry of message {entry.id!r}, whose file cannot be read "
            f"({problem}): reads skip this message and the rest of its conversation still "
            "reads. Restore the file from a backup if you have one.",
            file,
        )
    for problem, file in skipped:
        if file.name in problems:
            warn(f"skipped an unreadable message file while rebuilding the index: {problem}", file)
    ordered = parents_first(
        sorted(listed, key=lambda entry: (entry.created_at, entry.id)),
        lambda entry: entry.id,
        lambda entry: entry.parent_id,
    )
    return [entry.model_copy(update={"seq": seq}) for seq, entry in enumerate(ordered)]


def _warn_left_out(broken: Mapping[str, str], folder: Path) -> None:
    # One warning for all of them (a loop of a hundred files is one problem), naming a
    # few: `cm-notebook check` lists every one.
    shown = sorted(broken)[:5]
    named = "; ".join(
        f"messages/{message_id}.json (its conversation goes back to {broken[message_id]})"
        for message_id in shown
    )
    more = f"; and {len(broken) - len(shown)} more" if len(broken) > len(shown) else ""
    ctx_dir = folder.parent
    warn(
        for_contexts_in(
            f"left {len(broken)} message file(s) out of the rebuilt index, as no "
            f"conversation leads to them: {named}{more}. The files are kept (`cm-notebook "
            f"check {ctx_dir.name}` lists them). `cm-notebook check --repair "
            f"{ctx_dir.name}` brings them back where what they go back to is an unreadable "
            "file (kept aside, a marked stand-in put in its place); a message that is gone "
            "is to be restored from a backup first, or their parent_id fixed.",
            data_dir_of(ctx_dir),
        ),
        folder,
    )


def recover_hidden(
    state: ContextState,
    metadata: ContextMetadata,
    listed: Mapping[str, IndexEntry] | None,
    salvaged: Iterable[JournalLine],
    found: Iterable[Message],
) -> ContextMetadata:
    """After a rebuild that read ``found``: branch the conversations of messages neither
    the old snapshot (``listed``; None: unknown, nothing is done) nor a ``salvaged``
    journal line listed, with a warning; returns the metadata as now saved."""
    if listed is None:
        return metadata  # no telling which messages only lost lines listed
    known = known_entries(listed, salvaged)
    hidden = {message.id: message for message in found if message.id not in known}
    made = branch_hidden_ends(state, metadata, hidden) if hidden else ()
    if not made or state.metadata is None:
        return metadata
    warn(
        f"{len(hidden)} message(s) of context {state.context_id!r} were listed only by "
        "journal lines that are lost, with the head moves that put them on a branch; "
        f"the conversations no branch reached are on {', '.join(map(repr, made))} now",
        state.metadata_path,
    )
    return state.metadata
