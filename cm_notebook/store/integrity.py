"""Checking a context folder against its message index, and repairing it.

Opening a context trusts its index (``message_index.json`` and the journal): it never
lists ``messages/``, which is what keeps opening a 10,000-message context cheap. An
older snapshot beside the current journal is noticed on opening (the journal's first
line comes after the snapshot's end; see :func:`.snapshot.check_journal_follows`) and
rebuilt. But an index replaced by an older copy of both files (a context folder
restored from a backup file by file, a sync tool putting back an earlier
``message_index.journal``) is consistent in itself and hides the messages written
since, although their files are still there. :func:`check_context` finds that, and
every other disagreement between the index and the files:

* ``unindexed``: message files the index does not list (hidden messages);
* ``missing``: messages the index lists whose file is gone;
* ``unreadable``: message files that do not decode (named with what is wrong);
* ``stale``: message files whose status is not the one the index gives (an older copy
  put back: a reply the index says is complete, still ``streaming`` in its file);
* ``mislinked``: index entries whose parent or role is not the file's, where the
  index's own link leads nowhere (an index edited or damaged in a way that still
  parses: reading the branch then fails);
* ``damaged_links``: message files whose parent or role is not the index's, where the
  index's conversation through them is whole: the file is what was changed (a
  message's parent and role never change; see :mod:`.links`), and the index keeps
  reading as before;
* ``dangling``: branches whose head names a message neither the index nor the files
  hold (reading such a branch fails; point it elsewhere with ``set_branch_head``);
* ``unwalkable``: branches whose head is there, but whose path back to the first
  message is not (it goes back to a message that is gone, or round a loop of parent
  links): reading such a branch fails too;
* ``detached``: message files no conversation leads to, for the same reasons (see
  :func:`.order.unrooted`). They are only named: the index leaves them out (a rebuild
  does too), which is what lets everything else read, so they do not make the check
  fail. Once the messages they go back to are restored, they are ``unindexed``, and a
  repair brings them in. A repair does that itself where what they go back to is an
  unreadable file: it keeps the file aside and puts a marked stand-in in its place
  (see :mod:`.stand_ins`). An index that lists such a message disagrees with the files
  (``mislinked``), and a repair leaves it out.

A missing or unreadable file whose text the journal still holds is rewritten from it
first (as a read of it would be). With ``repair``, a file with a damaged link is
rewritten first, from the journal's copy or the index (see :mod:`.links`): the index is
never rebuilt from a link that would send a whole conversation round a loop or cut
messages off a branch when the index's own link reaches a first message. Then an index
that misses files or whose links lead nowhere where the files' do is rebuilt from them
(the head moves the journal holds are kept), and each hidden conversation that ends
off every branch gets a branch of its own (``recovered``, ``recovered-2``, ..., none
like a name already there), so it shows up in the branch selector (written before the
index, so a repair cut short is finished by the next open, see :func:`check_context`).
Nothing is deleted (what a rewritten file named is reported).
Missing and unreadable files the journal no longer holds, and dangling heads, are only
reported, for the user to restore from a backup or point elsewhere; while files are
missing, no rebuild is made: they are to come back first.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ..errors import CorruptDataError, StoreIOError
from ..model import ContextMetadata, Message
from .atomic import is_temp_name
from .codec import read_message_file
from .context import ContextState
from .links import index_broken, link_difference
from .order import unrooted
from .paths import MESSAGES_DIR
from .recovered import branch_hidden_ends
from .relink import relink_files
from .repair import repair_files
from .stand_ins import ends_cut_off, stand_in_unreadable

__all__ = ["IntegrityChecks", "IntegrityReport", "check_context"]

T = TypeVar("T")

# A folder this user may read but not write: a check without repair only reports then.
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


@dataclass(frozen=True)
class IntegrityReport:
    """What :meth:`FileStore.check <cm_notebook.store.FileStore.check>` found in a context.

    ``relinked``, ``brought_back`` and ``recovered_branches`` are filled by a repair:
    the files rewritten because their link was damaged, the messages the index lists
    again, and the branches made for those that end off every branch (``rebuilt``: the
    index was rebuilt from the files).
    """

    context_id: str
    indexed: int
    unindexed: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    unreadable: tuple[tuple[str, str], ...] = ()  # (file name, what is wrong with it)
    stale: tuple[tuple[str, str], ...] = ()  # (file name, how it differs from the index)
    mislinked: tuple[tuple[str, str], ...] = ()  # (file name, how the index differs)
    dangling: tuple[tuple[str, str], ...] = ()  # (branch, the message its head names)
    # (branch, its head, what its path goes back to instead of a first message)
    unwalkable: tuple[tuple[str, str, str], ...] = ()
    # (file name, what it goes back to): left out of the index, not a failure (see module)
    detached: tuple[tuple[str, str], ...] = ()
    repaired: bool = False
    brought_back: tuple[str, ...] = ()
    recovered_branches: tuple[str, ...] = ()
    # Added later, so last (a positional construction of the others stays as it was):
    # (file name, how it differs from the index, whose link is the one kept: see module)
    damaged_links: tuple[tuple[str, str], ...] = ()
    relinked: tuple[tuple[str, str], ...] = ()  # (file name, what was done to it)
    rebuilt: bool = False
    # (file name, what was done): unreadable files replaced by a stand-in (see .stand_ins)
    stood_in: tuple[tuple[str, str], ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the index and the files agree, every file reads and every branch
        can be read from its head to its first message (``detached`` files are only
        named: see the module)."""
        return not (
            self.unindexed
            or self.missing
            or self.unreadable
            or self.stale
            or self.mislinked
            or self.damaged_links
            or self.dangling
            or self.unwalkable
        )

    def __str__(self) -> str:
        if self.ok and not self.repaired and not self.detached:
            return f"{self.context_id}: {self.indexed} message(s), ok"
        lines = [f"{self.context_id}: {self.indexed} message(s) indexed"]
        lines += [f"  repaired: messages/{name} {how}" for name, how in self.relinked]
        lines += [f"  repaired: messages/{name} {how}" for name, how in self.stood_in]
        if self.rebuilt:
            lines.append(
                f"  repaired: {len(self.brought_back)} message(s) brought back into the index"
            )
            lines += [f"  new branch {name!r}" for name in self.recovered_branches]
        lines += [f"  not in the index: messages/{mid}.json" for mid in self.unindexed]
        lines += [f"  file missing: messages/{mid}.json" for mid in self.missing]
        lines += [f"  unreadable: messages/{name}: {problem}" for name, problem in self.unreadable]
        lines += [f"  older than the index: messages/{name}: {how}" for name, how in self.stale]
        lines += [f"  the index disagrees: messages/{name}: {how}" for name, how in self.mislinked]
        lines += [
            f"  the file disagrees with the index: messages/{name}: {how}"
            for name, how in self.damaged_links
        ]
        lines += [
            f"  branch {name!r} points at message {head!r}, which is in neither the index nor "
            f"messages/: point it at another message (FileStore.set_branch_head)"
            for name, head in self.dangling
        ]
        lines += _unwalkable_lines(self.unwalkable)
        lines += _detached_lines(self.detached)
        if self.missing or self.unreadable or self.stale:
            lines.append("  restore or fix the files named above (a backup, by hand)")
        if self.unindexed and not self.repaired:
            lines.append(
                "  (a file the index does not list: written by an append that a crash "
                "stopped before its commit, never acknowledged, or hidden by an older "
                "index put back)"
            )
        if self.damaged_links and not self.repaired:
            lines.append(
                "  (the index's conversation through these files is whole, so each file is "
                "what was changed: run with --repair to give it the index's parent and role "
                "again, from the journal's copy where it still holds one)"
            )
        if (self.unindexed or self.mislinked) and not self.repaired:
            first = "then " if self.missing else ""  # a rebuild waits for missing files
            lines.append(f"  {first}run with --repair to rebuild the index from the files")
        elif self.ok:
            lines.append("  ok")
        return "\n".join(lines)


#: How many branches or files one cause is listed with before the rest are counted.
SHOWN = 5


def _unwalkable_lines(unwalkable: tuple[tuple[str, str, str], ...]) -> list[str]:
    # One line per branch while few go back to the same message; then one for them all
    # (200 branches after one damaged message are one problem).
    lines = []
    for cause, group in _by_cause([(name, cause, head) for name, head, cause in unwalkable]):
        if len(group) <= SHOWN:
            lines += [
                f"  branch {name!r} points at message {head!r}, whose conversation goes back "
                f"to {cause}: restore that message, or point the branch at another message "
                "(FileStore.set_branch_head)"
                for name, head in group
            ]
            continue
        names = ", ".join(repr(name) for name, _head in group[:SHOWN])
        lines.append(
            f"  {len(group)} branches ({names} and {len(group) - SHOWN} more) point at "
            f"messages whose conversation goes back to {cause}: restore that message, or "
            "point the branches at other messages (FileStore.set_branch_head)"
        )
    return lines


def _detached_lines(detached: tuple[tuple[str, str], ...]) -> list[str]:
    # Named one a line while few go back to the same message, else counted.
    lines = []
    for cause, group in _by_cause([(name, cause, "") for name, cause in detached]):
        if len(group) <= SHOWN:
            lines += [
                f"  left out of the index: messages/{name}: its conversation goes back to {cause}"
                for name, _ in group
            ]
            continue
        named = ", ".join(f"messages/{name}" for name, _ in group[:SHOWN])
        lines.append(
            f"  left out of the index: {len(group)} message file(s) whose conversation goes "
            f"back to {cause}: {named} and {len(group) - SHOWN} more (from Python, "
            "FileStore.check's report lists them all: its detached)"
        )
    if detached:
        lines.append(
            "  (no conversation leads to these files, so nothing shows them; they are "
            "kept. Where the message they go back to is an unreadable file, run with "
            "--repair: it keeps that file aside, puts a marked stand-in in its place and "
            "brings them back. Where it is gone, restore it from a backup, or fix their "
            "parent_id, then run with --repair)"
        )
    return lines


def _by_cause(items: list[tuple[str, str, str]]) -> list[tuple[str, list[tuple[str, str]]]]:
    # (name, cause, detail) grouped by cause, in the order causes first appear.
    groups: dict[str, list[tuple[str, str]]] = {}
    for name, cause, detail in items:
        groups.setdefault(cause, []).append((name, detail))
    return list(groups.items())


class IntegrityChecks:
    """The check of :class:`~cm_notebook.store.filestore.FileStore` (a base of it)."""

    async def _run(self, func: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError  # FileStore's: the work on a worker thread

    def _write(self, context_id: str, func: Callable[..., T], *args: Any) -> T:
        raise NotImplementedError  # FileStore's: one write under the context's locks

    def _view(self, context_id: str, func: Callable[[ContextState, ContextMetadata], T]) -> T:
        raise NotImplementedError  # FileStore's: a read of fresh state

    async def check(self, context_id: str, *, repair: bool = False) -> IntegrityReport:
        """Compare the context's message index with its ``messages/`` folder.

        Finds message files the index does not list (an older index put back, say, hides
        the messages written since), listed messages without a file, unreadable files,
        files older than the index (their status is not the index's) and branch heads
        that lead to no message. With ``repair``, rewrites the files whose parent or role
        is not the one the index committed (while the index's conversation through them
        is whole: see :mod:`.links`), then rebuilds the index from the files and
        gives each hidden conversation a ``recovered`` branch; nothing is deleted. Message
        files no conversation leads to (their parent is gone, or parent links loop) are
        named and left out of the index, and branches that lead to them are named. Reads
        every message file: a maintenance call, not for each turn. Without ``repair`` it
        writes only to restore missing or unreadable files from the journal, so a
        context on a read-only copy (a backup, a mounted snapshot) is checked too: such
        files are then only reported. What looks wrong is looked at again under the
        context's write lock (waiting for another writer up to ``lock_timeout``, as
        writes do), so an append another process is making is not reported as damage.
        """
        if repair:
            return await self._run(self._write, context_id, check_context, True)
        return await self._run(self._check_reading, context_id)

    def _check_reading(self, context_id: str) -> IntegrityReport:
        report = self._view(context_id, lambda state, metadata: _inspect(state, metadata)[0])
        if report.ok:
            return report
        try:
            # Looked at again under the write lock (waiting for it as every writer
            # does): another process's append may have written its file but not yet
            # committed it, which looks like a file the index does not list. And those
            # whose text the journal holds come back.
            return self._write(context_id, check_context, False)
        except StoreIOError as exc:
            if exc.errno not in _READ_ONLY:
                raise
            return report  # a folder this user cannot write: they stay reported


def check_context(
    state: ContextState, metadata: ContextMetadata, repair: bool = False
) -> IntegrityReport:
    """Compare the index of a context with its ``messages/`` folder (write locks held,
    as :meth:`ContextState.locked` gives them); with ``repair``, rebuild (see module)."""
    report, hidden, cut_off = _inspect(state, metadata)
    restorable = _restorable(report)
    # Those whose text the journal holds (the locks are held: not state.restore()),
    # looked at again only if some came back (each look reads every file).
    if restorable and repair_files(
        state.index, state.fsync, flush=False, only=restorable, compare=True
    ):
        report, hidden, cut_off = _inspect(state, metadata)
    if not repair:
        return report
    # Before anything reads the files' links (a rebuild): the index's are kept there.
    relinked = relink_files(
        state, metadata, [name[: -len(".json")] for name, _ in report.damaged_links]
    )
    made = _stand_in_cut_off(state, report, cut_off)
    stood_in = tuple((name, how) for name, how, _ in made)
    if made:  # the files after them lead back to a first message again
        report, hidden, cut_off = _inspect(state, metadata)
        # The conversations the damaged messages answered get a branch if none shows them.
        hidden = {
            **ends_cut_off(
                [stand_in for _, _, stand_in in made],
                state.index.materialize(),
                hidden,
                [branch.head for branch in metadata.branches.values()],
                state.dir,
            ),
            **hidden,
        }
    if not (report.unindexed or report.mislinked) or report.missing:
        # Missing files must come back first: reads would skip them. Unreadable ones a
        # rebuild keeps in the tree (see .recovered).
        if not (relinked or stood_in):
            return report
        return replace(
            _inspect(state, metadata)[0], repaired=True, relinked=relinked, stood_in=stood_in
        )
    # The branches first, then the index: killed in between, the next open finds heads
    # the index does not list and rebuilds it itself (ContextState._check_heads). The
    # other way round, the messages would be back in the index on no branch, and a new
    # check would find nothing left to do.
    branches = branch_hidden_ends(state, metadata, hidden)
    state.rebuild_index(
        f"a check found {len(report.unindexed)} message file(s) the index did not list "
        f"and {len(report.mislinked)} entry(ies) whose parent or role was not the file's"
    )
    return replace(
        _inspect(state, metadata)[0],
        repaired=True,
        relinked=relinked,
        stood_in=stood_in,
        rebuilt=True,
        brought_back=tuple(mid for mid in report.unindexed if mid in state.index.entries),
        recovered_branches=branches,
    )


def _stand_in_cut_off(
    state: ContextState, report: IntegrityReport, cut_off: dict[str, Message]
) -> list[tuple[str, str, Message]]:
    # A stand-in for each unreadable file that files no conversation leads to go back
    # to, the damaged file kept aside (see .stand_ins); none while files are missing
    # (they are to come back first, and may be what the others go back to).
    if report.missing or not report.unreadable or not cut_off:
        return []
    entries = state.index.materialize()
    unreadable = {name.removesuffix(".json") for name, _ in report.unreadable} - entries.keys()
    children: dict[str, list[Message]] = {}  # every reply by parent: a stand-in's calls
    for message in cut_off.values():  # follow from the tool results after it
        if message.parent_id is not None:
            children.setdefault(message.parent_id, []).append(message)
    known = set(entries) | set(cut_off) | set(report.unindexed)
    return stand_in_unreadable(state, unreadable, children, known)


def _restorable(report: IntegrityReport) -> list[str]:
    # Files a power loss may have taken or damaged: restored from the journal while it
    # holds their text (as reading them would).
    return [*report.missing, *(name.removesuffix(".json") for name, _ in report.unreadable)]


def _inspect(
    state: ContextState, metadata: ContextMetadata
) -> tuple[IntegrityReport, dict[str, Message], dict[str, Message]]:
    # The report, the hidden messages as read (a repair branches them without reading
    # their files again), and the readable files no conversation leads to.
    entries = state.index.materialize()
    # The entries whose link a file may correct; every other one is committed truth.
    broken_in_index = index_broken(entries)
    folder = state.dir / MESSAGES_DIR
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        names = []
    on_disk: set[str] = set()
    hidden: dict[str, Message] = {}  # readable files the index does not list
    # Parent links as a repair would leave them: the index's where they reach a first
    # message (see .links), else the file's where it reads, else the index's.
    links = {message_id: entry.parent_id for message_id, entry in entries.items()}
    read: set[str] = set()  # the files that read
    unreadable: list[tuple[str, str]] = []
    stale: list[tuple[str, str]] = []
    mislinked: list[tuple[str, str]] = []
    damaged_links: list[tuple[str, str]] = []
    for name in sorted(names):
        if is_temp_name(name) or not name.endswith(".json"):
            continue  # a writer's temporary file, or not ours
        message_id = name[: -len(".json")]
        try:
            message = read_message_file(folder / name, message_id)
        except CorruptDataError as exc:
            unreadable.append((name, str(exc)))  # reported as such, not as hidden
        else:
            read.add(message_id)
            entry = entries.get(message_id)
            if entry is None or message_id in broken_in_index:
                links[message_id] = message.parent_id
            if entry is None:
                hidden[message_id] = message
            elif entry.status is not message.status and not state.unmarked.resolves(entry):
                # Not for a dead stream this reader could not mark (a read-only folder):
                # marking it journals the file's status (a completion line cut off the
                # journal), so the two agree once a writable open has been.
                how = (
                    f"its status is {message.status.value!r}, the index says {entry.status.value!r}"
                )
                stale.append((name, how))
            elif (differs := link_difference(message, entry)) is None:
                pass  # they agree
            elif message_id in broken_in_index:
                # The index's link leads nowhere: the file's is the one to take (see .links).
                mislinked.append((name, differs))
            else:
                damaged_links.append((name, differs))  # the index's link is the committed one
        on_disk.add(message_id)
    # The files and entries no conversation leads to: listed, they would break every
    # read of the whole tree and of their branches (see .order.unrooted).
    broken = unrooted(links)
    detached = [(f"{mid}.json", broken[mid]) for mid in sorted(hidden) if mid in broken]
    cut_off = {mid: message for mid, message in hidden.items() if mid in broken}
    hidden = {mid: message for mid, message in hidden.items() if mid not in broken}
    mislinked_names = {name for name, _how in mislinked}
    mislinked += [
        (f"{mid}.json", f"the index lists it, but its conversation goes back to {broken[mid]}")
        for mid in sorted(entries.keys() & broken.keys() & read)
        if f"{mid}.json" not in mislinked_names
    ]
    report = IntegrityReport(
        context_id=state.context_id,
        indexed=len(entries),
        unindexed=tuple(sorted(hidden)),
        missing=tuple(sorted(entries.keys() - on_disk)),
        unreadable=tuple(unreadable),
        stale=tuple(stale),
        mislinked=tuple(mislinked),
        damaged_links=tuple(damaged_links),
        dangling=tuple(
            (name, branch.head)
            for name, branch in sorted(metadata.branches.items())
            if branch.head is not None and branch.head not in links  # the index's or a file's
        ),
        unwalkable=tuple(
            (name, branch.head, broken[branch.head])
            for name, branch in sorted(metadata.branches.items())
            if branch.head is not None and branch.head in broken
        ),
        detached=tuple(detached),
    )
    return report, hidden, cut_off
