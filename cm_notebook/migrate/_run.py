"""Running a migration against a Store: plan, back up, write, validate, report."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

import anyio

from .._cli_advice import for_contexts_in
from .._input_files import read_input_file
from .._migration_mark import UNFINISHED_MIGRATION
from ..errors import CMError, MigrationError
from ..ids import id_key
from ..model import ContextMetadata, Message
from ..store.base import Store
from ._backup_temps import clear_stale_copies, write_locked
from ._convert import ConvertedContext, context_id_for, convert
from ._finish import branch_names as _names
from ._finish import finish_marked, is_marked, mark_finished, unfinished_writes, unset_heads
from ._lock import one_migration_at_a_time
from ._pool import folder_files
from ._progress import NO_PROGRESS, Progress
from ._report import ContextResult, ContextStatus, MigrationReport, said_for
from ._sources import read_v1_once
from ._taken import ORIGIN, other_record, source_origin
from ._util import content_digest, derived_id
from ._v1 import V1Source

__all__ = ["check_converted", "migrate", "migrate_source"]

_WRITE_ERRORS = (CMError, OSError, ValueError)  # ValueError covers pydantic validation


@dataclass
class _Plan:
    result: ContextResult
    conv: ConvertedContext | None = None
    action: Literal["none", "write", "check"] = "none"
    existing_id: str | None = None  # for "check": the context that came from this record


def _compare(
    conv: ConvertedContext, lookup: Mapping[str, Message], paths: Mapping[str, list[str]]
) -> list[str]:
    """Differences between the v1 source and a written (or in-memory) tree."""
    problems = []
    missing = [m.id for m in conv.messages if m.id not in lookup]
    if missing:
        return [f"{len(missing)} message(s) missing after writing, e.g. {missing[0]!r}"]
    if len(conv.originals) != len(conv.source.messages):
        problems.append(
            f"{len(conv.source.messages)} readable v1 messages but {len(conv.originals)} converted"
        )
    source = content_digest((m.role, m.content) for m, _ in conv.originals)
    written = content_digest((lookup[i].role, lookup[i].content) for _, i in conv.originals)
    if source != written:
        problems.append("message contents differ from the source (sha256 of role+content)")
    for expected in conv.messages:
        if lookup[expected.id].parent_id != expected.parent_id:
            problems.append(f"message {expected.id!r} has the wrong parent")
            break
    for name, listed in conv.branch_sources.items():
        path = paths.get(name, [])
        if path != conv.path(name):
            problems.append(f"branch {name!r} does not lead to the expected messages")
            continue
        tail = path[len(path) - len(listed) :] if listed else []
        got = content_digest((lookup[i].role, lookup[i].content) for i in tail)
        if len(tail) != len(listed) or got != content_digest((m.role, m.content) for m in listed):
            problems.append(f"branch {name!r} does not read like the v1 branch")
    return problems


def check_converted(conv: ConvertedContext) -> list[str]:
    """Validate a conversion in memory (what a dry run checks); [] means all is well."""
    lookup = {m.id: m for m in conv.messages}
    return _compare(conv, lookup, {name: conv.path(name) for name in conv.metadata.branches})


async def _check_written(conv: ConvertedContext, store: Store) -> tuple[list[str], str]:
    """Read the written context back; (problems, content sha256 of what was read)."""
    cid = conv.metadata.id
    index = await store.index(cid)
    present = [m.id for m in conv.messages if m.id in index]
    lookup = {m.id: m for m in await store.get_messages(cid, present)}
    paths = {name: await store.path(cid, name) for name in conv.metadata.branches}
    problems = _compare(conv, lookup, paths)
    if not problems and len(index) != len(conv.messages):
        problems.append(f"the store holds {len(index)} messages, expected {len(conv.messages)}")
    written = await store.get_metadata(cid)
    if written.system_prompt != conv.metadata.system_prompt:
        problems.append("the context's system prompt differs from the source")
    for name, branch in conv.metadata.branches.items():
        got = written.branches.get(name)
        if got is None or got.system_prompt != branch.system_prompt:
            problems.append(f"branch {name!r} does not carry its v1 system prompt")
    readable = [i for _, i in conv.originals if i in lookup]
    digest = content_digest((lookup[i].role, lookup[i].content) for i in readable)
    return problems, digest


async def _write(conv: ConvertedContext, store: Store) -> None:
    cid = conv.metadata.id
    # Branches start empty and get their heads once their messages exist, so that a
    # store that checks heads never sees one pointing at a message not yet written.
    empty = {n: b.model_copy(update={"head": None}) for n, b in conv.metadata.branches.items()}
    # Marked unfinished until _execute has checked it all (see cm_notebook._migration_mark).
    tags = [*conv.metadata.tags, UNFINISHED_MIGRATION]
    await store.create_context(conv.metadata.model_copy(update={"branches": empty, "tags": tags}))
    try:
        for message in conv.messages:
            await store.append_message(cid, message, branch=None)
        for name, branch in conv.metadata.branches.items():
            if branch.head is not None:
                await store.set_branch_head(cid, name, branch.head)
    except BaseException:
        # Remove the half-written context, even on cancellation, so that running the
        # migration again starts this context afresh instead of finding it "incomplete".
        with anyio.CancelScope(shield=True):
            await _discard(store, cid)
        raise


async def _discard(store: Store, cid: str) -> None:
    # Best effort: the error that made us discard the context is the one worth reporting.
    with contextlib.suppress(*_WRITE_ERRORS):
        await store.delete_context(cid)


def _folder_bytes(folder: Path) -> dict[str, bytes]:
    """Name -> contents of the files a folder source consists of (unreadable ones left
    out: they were reported as failed and nothing of them is migrated)."""
    out = {}
    for path in folder_files(folder):
        if not path.is_symlink():
            with contextlib.suppress(OSError, MigrationError):  # a folder, a FIFO: left out
                out[path.name] = _file_bytes(path, "")
    return out


def _file_bytes(path: Path, remedy: str) -> bytes:
    # Only a regular file: a FIFO where a backup reads would wait for a writer.
    return read_input_file(path, remedy=remedy, error=MigrationError)[0]


def _same_backup(old: Path, content: bytes | dict[str, bytes]) -> bool:
    if old.name.endswith(".tmp"):
        return False  # a copy that was cut short
    if isinstance(content, bytes):
        try:
            return _file_bytes(old, "") == content
        except (OSError, MigrationError):  # gone, or not a file: not that backup
            return False
    return old.is_dir() and _folder_bytes(old) == content


def _beside(source: Path) -> bool:
    """Whether a backup of ``source`` may go next to it: only for a plain file or folder.
    Next to a pipe, ``/dev/stdin`` or ``/dev/fd/63`` (what ``<(...)`` gives) is a
    system folder, never where the user keeps the data."""
    if source.parts[1:2] in (("dev",), ("proc",)):
        return False  # /dev/stdin names a plain file when stdin is redirected from one
    try:
        mode = source.stat().st_mode
    except OSError:
        return False
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)


#: Why a source that is not a file cannot be backed up by reading it again.
_READ_AGAIN = (
    "give the path of the v1 file or folder that was read, or pass what was read from it "
    "as content= (or migrate without a backup)"
)


def _backup(
    source: Path,
    data_dir: Path | None,
    into: Path | None = None,
    content: bytes | dict[str, bytes] | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Copy ``source`` (a file, or a folder's JSON files) next to itself, else into
    ``<data dir>/backups``; or only into ``into`` when given. Never modifies it.
    ``content``: what was read from it, when it cannot be read again (a pipe).
    Copies a killed run left half written there are removed, said in ``notes``."""
    # Absolute, so that "." or ".." is backed up next to the folder it names (as
    # "<folder>.v1-backup-..."), not inside it as ".v1-backup-...".
    source = Path(os.path.abspath(source))
    if content is None:
        content = _folder_bytes(source) if source.is_dir() else _file_bytes(source, _READ_AGAIN)
    if into is not None:
        targets = [into]
    else:
        targets = [source.parent] if _beside(source) else []
        targets += [data_dir / "backups"] if data_dir is not None else []
    for folder in targets:
        (notes if notes is not None else []).extend(clear_stale_copies(folder, source.name))
        for old in sorted(folder.glob(f"{glob.escape(source.name)}.v1-backup-*")):
            if _same_backup(old, content):
                return old  # an identical backup exists: re-running does not pile up copies
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    errors = []
    for folder in targets:
        target = folder / f"{source.name}.v1-backup-{stamp}"
        n = 2
        while target.exists():
            target = folder / f"{source.name}.v1-backup-{stamp}-{n}"
            n += 1
        temp = target.with_name(target.name + ".tmp")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            write_locked(temp, target, content)  # a backup is either complete or absent
        except OSError as exc:
            errors.append(f"{folder}: {exc.strerror or exc}")
            shutil.rmtree(temp, ignore_errors=True)
            with contextlib.suppress(OSError):
                temp.unlink()
            continue
        return target
    if not targets:
        errors.append("there is no folder to keep a copy in")
    raise MigrationError(
        f"cannot back up {source} ({'; '.join(errors)}); nothing was migrated. "
        "Make the folder writable, or migrate without a backup (--no-backup)."
    )


def _plan(
    source: V1Source, existing: dict[str, ContextMetadata], progress: Progress = NO_PROGRESS
) -> list[_Plan]:
    by_hash: dict[str, str] = {}
    for meta in existing.values():
        digest = meta.extra.get("v1_source_sha256")
        if isinstance(digest, str):
            by_hash.setdefault(digest, meta.id)
    plans: list[_Plan] = []
    in_source: dict[str, int] = {}  # source sha256 -> position of its first occurrence
    # By id_key: ids that differ only in case are one folder on Windows and macOS.
    ids_in_source: set[str] = set()
    existing_keys = {id_key(i): i for i in existing}
    for ctx in progress.over(source.contexts, "converting"):
        result = ContextResult(
            position=ctx.position,
            id=None,
            v1_id=ctx.id,
            title=ctx.title,
            status=ContextStatus.FAILED,
            source_messages=ctx.message_count,
            source_sha256=ctx.source_sha256,
            source_file=None if ctx.source_file is None else str(ctx.source_file),
        )
        plan = _Plan(result)
        plans.append(plan)
        if ctx.fatal is not None:
            result.problems.append(f"cannot convert: {ctx.fatal}")
            continue
        if ctx.source_sha256 in in_source:
            result.status = ContextStatus.SKIPPED
            result.notes.append(
                f"identical to context #{in_source[ctx.source_sha256]} of the source"
            )
            continue
        in_source[ctx.source_sha256] = ctx.position
        cid = context_id_for(ctx)
        twin = existing_keys.get(id_key(cid), cid)
        origin = source_origin(source, ctx)
        if origin is not None:
            ctx.flags.setdefault(ORIGIN, origin)
        other = None
        if cid in existing and ctx.source_sha256 not in by_hash:
            other = other_record(existing[cid], ctx, origin)
        if id_key(cid) in ids_in_source or twin != cid or other is not None:
            # Two different records share an id: keep both, the later under a new id.
            new = derived_id("c", "v1-duplicate-id", ctx.id, ctx.source_sha256)
            if other is not None:
                why = f"is taken by an existing context that {other}"
            elif twin != cid:
                why = f"differs only in case from the existing context {twin!r}"
            else:
                why = "is used twice in the source"
            result.notes.append(f"id {cid!r} {why}; this one is {new!r}")
            cid = new
        ids_in_source.add(id_key(cid))
        result.id = cid
        try:
            conv = convert(ctx, context_id=cid)
        except ValueError as exc:
            result.problems.append(f"cannot convert: {exc}")
            continue
        plan.conv = conv
        result.messages_migrated = len(conv.originals)
        result.messages_copied = conv.copies
        result.branches = len(conv.metadata.branches)
        result.problems.extend(conv.problems)
        result.notes.extend(conv.notes)
        invalid = check_converted(conv)
        if invalid:
            result.problems.extend(f"conversion check failed: {p}" for p in invalid)
            continue
        if ctx.source_sha256 in by_hash:
            plan.action, plan.existing_id = "check", by_hash[ctx.source_sha256]
        elif cid in existing:
            # The same record, migrated before it changed in v1 (see _taken).
            result.problems.append(
                f"context {cid!r} was migrated earlier from a different version of this "
                "record (the v1 data changed since); it was left alone. Remove it "
                f"(`cm-notebook rm {cid}`) to migrate this record again."
            )
        else:
            plan.action = "write"
    return plans


async def _check_existing(plan: _Plan, store: Store, dry_run: bool) -> None:
    """A context this source was migrated to before: complete, or finish it, or say why not."""
    result, conv = plan.result, plan.conv
    assert conv is not None
    assert plan.existing_id is not None
    conversion = (list(result.problems), list(result.notes))
    counts = (result.messages_migrated, result.messages_copied)
    # What the conversion would have said matters no more unless something is written.
    result.problems.clear()
    result.notes.clear()
    result.messages_migrated = result.messages_copied = 0
    if plan.existing_id != conv.metadata.id:
        result.status = ContextStatus.SKIPPED
        result.notes.append(f"already migrated as {plan.existing_id!r}")
        return
    cid = conv.metadata.id
    try:
        marked = await is_marked(store, cid)
        finished = await finish_marked(conv, store, dry_run) if marked else None
    except _WRITE_ERRORS as exc:
        result.problems.append(
            f"context {cid!r} is an unfinished migration, and finishing it failed: {exc}; "
            "run it again"
        )
        return
    if finished is not None:
        result.problems.extend(finished.problems)
        if not finished.failed:
            result.problems[:0] = conversion[0]
            result.notes.extend([*conversion[1], *finished.notes])
            result.messages_migrated, result.messages_copied = counts
            result.content_sha256 = finished.content_sha256
            result.status = ContextStatus.PARTIAL if result.problems else ContextStatus.MIGRATED
        return
    retry = f"remove it (`cm-notebook rm {cid}`) and migrate again"
    # Messages added since are fine; messages missing mean an interrupted earlier run.
    index = await store.index(cid)
    missing = [m for m in conv.messages if m.id not in index]
    if missing:
        try:
            doubt = await unfinished_writes(conv, store, index)
        except _WRITE_ERRORS as exc:
            # Not a finding about the context: a failure to run again.
            result.problems.append(
                f"context {cid!r} exists but lacks {len(missing)} of its messages, and it "
                f"could not be read: {exc}; run the migration again"
            )
            return
        if doubt is not None:
            # Not marked unfinished, so not left by this version: an earlier one migrated
            # it (and converted some messages differently, or dropped them) or was cut
            # short before it marked its work. Either way the context is the user's now:
            # left as it is, said so, not a failure with advice to delete it.
            result.status = ContextStatus.SKIPPED
            result.notes.append(
                f"already migrated as {cid!r} by an earlier version of cm_notebook (which "
                "converted this record differently, or was stopped before the end): "
                f"{len(missing)} message(s) this version makes of it are not in it, and "
                f"{doubt}. It is left as it is; to have it "
                f"as this version converts it, keep a copy (`cm-notebook export {cid}`), "
                f"{retry}"
            )
            return
        cut = f"an earlier migration was interrupted after {len(index)} of its messages"
        if dry_run:
            result.problems.extend(conversion[0])
            result.notes.extend(conversion[1])
            result.messages_migrated, result.messages_copied = counts
            result.notes.append(f"{cut}; migrating finishes it")
            result.status = ContextStatus.PARTIAL if result.problems else ContextStatus.MIGRATED
            return
        try:
            for message in missing:  # in the order written: parents first
                await store.append_message(cid, message, branch=None)
        except _WRITE_ERRORS as exc:
            result.problems.append(f"{cut}, and finishing it failed: {exc}; run it again")
            result.status = ContextStatus.FAILED
            return
        result.notes.append(f"{cut}; the other {len(missing)} written now")
    expected = {name: conv.path(name) for name in conv.metadata.branches}
    try:
        unset = await unset_heads(conv, store)
        # The messages as the branches will lead to them once their heads are set.
        ids = [m.id for m in conv.messages] if unset else []
        lookup = {m.id: m for m in await store.get_messages(cid, ids)}
    except _WRITE_ERRORS as exc:
        result.problems.append(f"context {cid!r} exists but could not be read: {exc}")
        return
    if not unset:
        result.status = ContextStatus.SKIPPED
        result.notes.append("already migrated")
        return
    what = f"an earlier migration was interrupted before it set the head of {_names(unset)}"
    problems = _compare(conv, lookup, expected)
    if problems:
        result.problems.extend(f"{what}, and {p}" for p in problems)
        result.problems.append(f"context {cid!r} was left incomplete; {retry}")
        return
    # An interrupted earlier run: this one finishes it, and reports it as migrated.
    result.problems.extend(conversion[0])
    result.notes.extend(conversion[1])
    result.messages_migrated, result.messages_copied = counts
    result.content_sha256 = content_digest(
        (lookup[i].role, lookup[i].content) for _, i in conv.originals
    )
    if not dry_run:
        try:
            for name in unset:
                # A compare-and-set: a head someone set meanwhile is left alone.
                head = conv.metadata.branches[name].head
                await store.set_branch_head(cid, name, head, expected_head=None)
            wrong = [n for n in unset if await store.path(cid, n) != expected[n]]
        except _WRITE_ERRORS as exc:
            result.problems.append(f"{what}, and finishing it failed: {exc}; run it again")
            result.status = ContextStatus.FAILED
            return
        if wrong:
            result.problems.append(f"{what}, and {_names(wrong)} still lead elsewhere; {retry}")
            result.status = ContextStatus.FAILED
            return
    result.notes.append(f"{what}; {'migrating finishes it' if dry_run else 'finished now'}")
    result.status = ContextStatus.PARTIAL if result.problems else ContextStatus.MIGRATED


async def _execute(plan: _Plan, store: Store, dry_run: bool) -> None:
    result, conv = plan.result, plan.conv
    assert conv is not None
    if plan.action == "check":
        await _check_existing(plan, store, dry_run)
        return
    partial = ContextStatus.PARTIAL if result.problems else ContextStatus.MIGRATED
    if dry_run:
        result.content_sha256 = content_digest((m.role, m.content) for m, _ in conv.originals)
        result.status = partial
        return
    try:
        await _write(conv, store)
    except _WRITE_ERRORS as exc:
        result.problems.append(f"could not write: {exc}")
        return
    try:
        problems, result.content_sha256 = await _check_written(conv, store)
    except _WRITE_ERRORS as exc:
        problems = [f"could not read it back: {exc}"]
    if problems:
        await _discard(store, conv.metadata.id)
        result.problems.extend(f"validation failed (nothing kept): {p}" for p in problems)
        return
    try:
        await mark_finished(store, conv.metadata.id)
    except _WRITE_ERRORS as exc:
        result.problems.append(
            f"written and checked, but it could not be marked finished: {exc}; run the "
            "migration again to finish it"
        )
        return
    result.status = partial


async def migrate_source(
    source: V1Source,
    store: Store,
    *,
    path: Path | None = None,
    dry_run: bool = False,
    progress: bool | Progress = True,
    backup: bool = True,
    backup_dir: Path | None = None,
    content: bytes | None = None,
) -> MigrationReport:
    """Migrate an already-read v1 source (see :func:`migrate`); ``path`` is backed up
    (``content``, if given, as the bytes read from it: a pipe cannot be read again).
    ``progress``: a bar already shown (reading the source), or whether to show one."""
    report = MigrationReport(
        source=path or Path(source.name),
        source_kind=source.kind,
        dry_run=dry_run,
        notes=list(source.notes),
    )
    async with contextlib.AsyncExitStack() as stack:
        if isinstance(progress, Progress):
            bar = progress
        else:
            bar = stack.enter_context(Progress(progress, "converting"))
        if not dry_run:  # planned and written with no other run in between
            await stack.enter_async_context(one_migration_at_a_time(store, say=bar.write))
        existing = {meta.id: meta for meta in await store.list_contexts()}
        plans = _plan(source, existing, bar)
        report.contexts = [p.result for p in plans]
        writes = any(p.action == "write" for p in plans)
        if backup and not dry_run and path is not None and writes:
            data_dir = getattr(store, "data_dir", None)
            folder = data_dir if isinstance(data_dir, Path) else None
            report.backup = _backup(path, folder, backup_dir, content, report.notes)
        active = [p for p in plans if p.action != "none"]
        for plan in bar.over(active, "checking" if dry_run else "migrating"):
            await _execute(plan, store, dry_run)
    return said_for(report, getattr(store, "data_dir", None))


async def migrate(
    source: Path | str,
    store: Store,
    *,
    dry_run: bool = False,
    progress: bool = True,
    backup: bool = True,
    backup_dir: Path | None = None,
) -> MigrationReport:
    """Migrate a v1 ``contexts.json``, LocalStorage export, per-context ``<uuid>.json``
    file, or a folder of those per-context files into ``store``.

    The source is never modified; with ``backup`` it is first copied next to itself as
    ``<name>.v1-backup-<UTC time>`` (a folder's JSON files into a folder of that name),
    or into ``<data dir>/backups`` when that folder is read-only or the source is not a
    plain file or folder (a pipe, ``/dev/stdin``: read once, and that is copied), or only into
    ``backup_dir`` when given, unless an identical backup exists there or nothing needs
    writing (a copy a killed run left half written, ``<name>.v1-backup-<time>.tmp``, is
    removed, with a note, unless another run is writing it). Each context is converted,
    written through the store, read back and validated (message counts, sha256 of
    role+content in order, every branch path and system prompt); a context that fails
    is removed again and reported, and the others carry on. In a folder, a file that
    cannot be read is reported as a failed context naming the file, and the other files
    are migrated. Contexts migrated before (same id and
    same ``extra["v1_source_sha256"]``) are skipped, so running twice changes nothing;
    except that a context a killed run left unfinished (it keeps the tag
    :data:`UNFINISHED_MIGRATION` until it is written and checked; ``ls``, ``check`` and
    opening it say so) is finished and reported as migrated: its missing messages
    written, its empty branches given their heads, and a branch written on meanwhile
    kept as it is, with the v1 branch then on ``<name>-v1`` (see ``_finish``). A run
    waits for another migration into the same data folder to finish (saying so on
    stderr), so two at once do not both plan the same writes. Text holding half of an emoji
    (a lone UTF-16 surrogate) gets U+FFFD in its place, with a note.
    ``dry_run`` converts and validates in memory and writes nothing. ``progress`` shows
    one tqdm bar through reading, converting and writing: in a Jupyter kernel as a
    notebook widget (text in the cell without ipywidgets), elsewhere on stderr when it
    is a terminal (never into a file it is redirected to).

    Raises MigrationError only if the source as a whole cannot be read; at once, naming
    what it is, for a socket, a device or a FIFO that no process is writing into.
    """
    path = Path(source)
    # Open before reading: reading and converting a large archive is most of the time.
    with Progress(progress) as bar:
        try:
            # Once: a pipe has nothing left for the backup.
            v1, content = read_v1_once(path, progress=bar)
        except MigrationError as exc:  # its advice (`cm-notebook import`) said for the store
            said = for_contexts_in(str(exc), getattr(store, "data_dir", None))
            raise exc if said == str(exc) else MigrationError(said) from exc
        return await migrate_source(
            v1,
            store,
            path=path,
            dry_run=dry_run,
            progress=bar,
            backup=backup,
            backup_dir=backup_dir,
            content=content,
        )
