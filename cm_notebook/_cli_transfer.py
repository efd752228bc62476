"""``cm-notebook export``, ``import`` and ``migrate``: contexts in and out of a store."""

from __future__ import annotations

import argparse
import errno
import hashlib
import os
import stat
import sys
import unicodedata
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ._cli_advice import path_argument
from ._cli_base import (
    PROG,
    CommandError,
    cli_wording,
    command,
    decode_json,
    isatty,
    out,
    write_whole,
    writing_stdout,
)
from ._export_approvals import not_allowed_note
from ._input_files import read_input_file
from ._unicode import for_terminal, json_for_terminal
from .errors import (
    ContextExistsError,
    InvalidIdError,
    InvalidInputError,
    MigrationError,
    SchemaVersionError,
    StateError,
    StoreError,
)
from .export import (
    ExportDocument,
    export_context,
    import_document,
    import_under_way,
    is_export,
    parse_export,
    remove_killed_import,
    to_json,
    to_markdown,
)
from .ids import new_id, validate_context_id
from .migrate import (
    EXPECTED_SHAPES,
    MigrationReport,
    V1Source,
    migrate,
    migrate_source,
    parse_v1_file,
    read_v1_folder,
)
from .store.atomic import atomic_write
from .store.base import Store

__all__: list[str] = []  # subcommands, registered with cm_notebook.cli's registry


# -- export / import ------------------------------------------------------------------

#: The most bytes a file name may hold on most file systems (ext4, APFS, NTFS's 255
#: characters hold at least as much).
_NAME_BYTES = 255
#: How many hex digits of the branch name's SHA-256 end a name that had to be cut.
_DIGEST_DIGITS = 12


def _configure_export(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("context_id", metavar="ID", help="the context to export")
    parser.add_argument(
        "--format",
        "-f",
        choices=("json", "markdown"),
        default="json",
        help="json: lossless, for `import` (default); markdown: for reading",
    )
    parser.add_argument(
        "--branch",
        "-b",
        help="export only this branch's path (default: json the whole tree, "
        "markdown the active branch)",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=_output_argument,
        help="write to FILE instead of stdout (a folder: to <context id>.json or .md in "
        "it, or <context id>.<branch>.json or .md with --branch, where the branch name "
        "keeps its letters and digits, of any script, '_', '-' and '.', and has its other "
        "characters %%-escaped (a space as %%20, '+' as %%2B); a file name that would "
        f"pass {_NAME_BYTES} bytes in UTF-8 has the branch name cut (at a character) to "
        "fit, ending in '~' and a short digest of the whole branch name, so that two "
        "long names never share a file)",
    )


def _output_argument(value: str) -> str:
    # Path("") is the current folder, which would quietly get the file.
    if not value.strip():
        raise argparse.ArgumentTypeError(
            "an empty path; give a file or a folder, or leave -o out to write to stdout"
        )
    return value


def _name_piece(char: str) -> str:
    # Letters and digits of any script are kept: every file system holds them, and a
    # Japanese or accented name stays readable (%-escaping its UTF-8 tripled its length
    # past what a file name holds). The rest is %-escaped, as quote() escapes it.
    if char in "_-." or unicodedata.category(char)[0] in "LN":
        return char
    return quote(char, safe="")


def _export_name(context_id: str, branch: str | None, extension: str) -> str:
    """The file name of an export in a folder (see the help of ``-o``)."""
    if branch is None:
        return f"{context_id}.{extension}"
    pieces = [_name_piece(char) for char in branch]
    name = f"{context_id}.{''.join(pieces)}.{extension}"
    if len(name.encode("utf-8")) <= _NAME_BYTES:
        return name
    # Cut between pieces (never inside a character or its escape), and end in a digest
    # of the whole name: two names that start alike keep a file each. A branch name
    # cannot hold '~' (see ids.validate_branch_name), so no uncut name has this one.
    digest = hashlib.sha256(branch.encode("utf-8")).hexdigest()[:_DIGEST_DIGITS]
    tail = f"~{digest}.{extension}"
    room = _NAME_BYTES - len(f"{context_id}.{tail}".encode())
    kept: list[str] = []
    for piece in pieces:
        room -= len(piece.encode("utf-8"))
        if room < 0:
            break
        kept.append(piece)
    return f"{context_id}.{''.join(kept)}{tail}"


def _write(given: str, text: str, name_in_folder: str, on_terminal: Callable[[str], str]) -> Path:
    # A folder as the output gets a file named after the context.
    output = Path(given)
    folder = _is_folder(output)
    if given.endswith(("/", os.sep)) and not folder:
        # Meant as a folder (Path() would drop the slash and write a file of that name).
        raise CommandError(f"there is no folder {given}: make it first, or name a file")
    target = output / name_in_folder if folder else output
    try:
        mode = os.stat(target).st_mode  # through a link: what it names
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise _not_written(target, exc) from None
    if mode is not None and not stat.S_ISREG(mode):
        # A pipe, a terminal, /dev/null, /dev/stdout: written into, never replaced (a
        # rename would put a plain file in its place).
        try:
            with open(target, "wb") as stream:
                # A terminal (/dev/tty, /dev/stdout on one) shows it as stdout does.
                shown = on_terminal(text) if stream.isatty() else text
                write_whole(stream, shown.encode("utf-8"))  # all of it, or an error
        except BrokenPipeError:
            raise  # the reader went away: the command line says nothing of it
        except OSError as exc:  # a full device (/dev/full, a full disk behind a pipe)
            raise CommandError(
                f"cannot write {target}: {exc.strerror or exc}; nothing else was written"
            ) from None
        return target
    # A file (or a link to one, which stays a link): written next to what it names and
    # renamed, so an interrupted export leaves no half file, and a failed one (a full
    # disk) no temporary file either.
    final = Path(os.path.realpath(target)) if mode is not None else target
    try:
        atomic_write(final, text.encode("utf-8"))
    except StoreError as exc:
        raise _not_written(target, exc) from None
    return target


def _is_folder(path: Path) -> bool:
    # Path.is_dir() raises for a folder that may not be looked into (EACCES): that is
    # then not known to be a folder, and writing there fails with the remedy of -o.
    try:
        return stat.S_ISDIR(os.stat(path).st_mode)
    except (OSError, ValueError):
        return False


def _not_written(target: Path, exc: Exception) -> CommandError:
    # The export's own wording: atomic_write's is the store's, which blames the data
    # directory (and names a Python argument), while -o chose where this went.
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    reason = cause.strerror if isinstance(cause, OSError) else None
    if reason is None and isinstance(cause, OSError) and cause.errno is not None:
        reason = os.strerror(cause.errno)
    full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
    remedy = "free some space there, or choose" if full else "choose"
    return CommandError(
        f"cannot write {target}: {reason or cause}; {remedy} another place with -o "
        "(nothing was written)"
    )


@command("export", "Export a context as JSON (lossless) or Markdown.", _configure_export)
async def _export(args: argparse.Namespace, store: Store) -> int:
    document = await export_context(store, args.context_id, branch=args.branch)
    text = to_json(document) if args.format == "json" else to_markdown(document)
    # Read on a terminal: a reply's escape sequences must not act on it (as in `show`);
    # JSON stays JSON, with them as \u escapes. Into a file or a pipe, the text stays as
    # it is.
    shown = json_for_terminal if args.format == "json" else for_terminal
    if args.output is None or args.output == "-":
        _write_stdout(shown(text) if isatty(sys.stdout) else text)
        return 0
    extension = "json" if args.format == "json" else "md"
    # Each branch of a context gets a file of its own in a folder: exporting two
    # branches into one folder must not leave only the last.
    name = _export_name(args.context_id, args.branch or None, extension)
    target = _write(args.output, text, name, shown)
    print(f"wrote {target}", file=sys.stderr)
    return 0


def _write_stdout(text: str) -> None:
    # An export is UTF-8 whatever the console's encoding: the one main() sets up
    # writes what a narrow encoding lacks as backslash escapes, which is no longer the
    # JSON (or the text) that was exported.
    buffer = getattr(sys.stdout, "buffer", None)
    with writing_stdout():
        if buffer is None:  # a stream replaced by one without bytes (text only)
            sys.stdout.write(text)
            return
        sys.stdout.flush()
        # All of it, or an error (a short write would leave a cut file that exits 0).
        write_whole(buffer, text.encode("utf-8"))
        buffer.flush()


def _configure_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help="an `export` JSON file, or v1 data as `migrate` takes it (a file or a folder); "
        "- reads standard input",
    )
    parser.add_argument(
        "--new-id", action="store_true", help="import an export under a fresh context id"
    )
    parser.add_argument(
        "--no-backup",
        action="store_true",
        help="for v1 data: do not keep a copy of it in <data dir>/backups",
    )
    parser.add_argument(
        "--allow-tools",
        action="store_true",
        help="for an export: let the tools it allowed for its context run without asking "
        "here too (the decisions of whoever made the file)",
    )


def _backups_dir(store: Store) -> Path | None:
    data_dir = getattr(store, "data_dir", None)
    return data_dir / "backups" if isinstance(data_dir, Path) else None


#: What `import` takes instead of a path that is not a file to read.
_GIVE_A_FILE = (
    "give the path of a JSON file made by `cm-notebook export`, or of v1 data (a file, or "
    "a folder of per-context files)"
)


@command(
    "import",
    "Import an exported JSON file, or v1 data (via migrate). Nothing is written next to "
    "FILE: a copy of v1 data is kept in <data dir>/backups instead.",
    _configure_import,
)
async def _import(args: argparse.Namespace, store: Store) -> int:
    if str(args.file) == "-":
        args.file = Path("/dev/stdin")  # read as the pipe it is (see read_input_file)
    if args.file.is_dir():
        return await _import_v1(args, store, read_v1_folder(args.file))
    # Once: FILE may be a pipe (/dev/stdin, <(...)). Never a wait for a FIFO's writer
    # that is not there: that, a socket or a device is refused at once.
    raw, info = read_input_file(args.file, remedy=_GIVE_A_FILE, pipes=True)
    data = decode_json(raw, args.file)
    if is_export(data):
        _check_exported_id(data, args)
        try:
            return await _import_export(args, store, parse_export(data))
        except (InvalidInputError, SchemaVersionError) as exc:
            # What is wrong is in the file, not in how the command was given: a data
            # error (1), not a usage error (2).
            raise CommandError(f"{args.file}: {exc}") from None
    try:
        source = parse_v1_file(data, args.file, _made_no_later_than(info))
    except MigrationError:
        raise CommandError(
            f"{args.file} is neither a cm_notebook export (an object with format "
            f"'cm_notebook.export', made by `cm-notebook export`) nor {EXPECTED_SHAPES}"
        ) from None
    # The data already read is migrated (and backed up): a pipe has no more to give.
    return await _import_v1(args, store, source, raw)


def _check_exported_id(data: dict[str, Any], args: argparse.Namespace) -> None:
    # An id no store takes ('../x'): not a context to list, but a file to import under
    # an id of its own, which --new-id gives it (the file's id is then never used).
    metadata = data.get("metadata")
    if not isinstance(metadata, dict) or "id" not in metadata:
        return  # parse_export says what is missing
    try:
        validate_context_id(metadata["id"])
    except InvalidIdError as exc:
        if args.new_id:
            metadata["id"] = new_id("c")  # a stand-in: the import gives it its own
            return
        reason = str(exc).split(". List existing")[0]
        raise CommandError(
            f"{args.file}: its context id cannot be used here ({reason}): import it under "
            f"a new id with `{PROG} import --new-id {path_argument(args.file)}`"
        ) from None


def _made_no_later_than(info: os.stat_result) -> datetime:
    # The time v1 records without timestamps get: the file's, or now for a pipe.
    if stat.S_ISREG(info.st_mode):
        return datetime.fromtimestamp(info.st_mtime, timezone.utc)
    return datetime.now(timezone.utc)


async def _import_export(args: argparse.Namespace, store: Store, document: ExportDocument) -> int:
    if args.no_backup:
        # Kind to scripts that always pass it, but never ignored without a word.
        print(
            f"{PROG}: note: --no-backup is for v1 data; an export file is never copied",
            file=sys.stderr,
        )
    target = new_id("c") if args.new_id else None
    cid = target or document.metadata.id
    try:
        # An import of it killed half-way: this one takes its place.
        if await remove_killed_import(store, cid, beside="--new-id"):
            print(f"{PROG}: replacing {cid}, whose import never finished", file=sys.stderr)
    except StateError as exc:
        raise CommandError(str(exc)) from None
    try:
        meta = await import_document(
            store, document, context_id=target, allow_tools=args.allow_tools
        )
    except ContextExistsError as exc:
        if import_under_way(store, cid):
            raise CommandError(str(exc)) from None  # another import began meanwhile
        raise CommandError(_taken(store, cid, exc.existing or cid)) from None
    counts = f"{len(document.messages)} message(s), {len(meta.branches)} branch(es)"
    out(f"imported {meta.id} ({meta.title!r}): {counts}")
    if not args.allow_tools:
        note = not_allowed_note(document.approvals, "import with --allow-tools to allow the same")
        if note is not None:
            print(f"{PROG}: note: {note}", file=sys.stderr)
    return 0


def _taken(store: Store, asked: str, existing: str) -> str:
    # The remedy names the context that is there: the store also refuses an id that
    # differs only in case from an existing one, and `rm` of the id asked for would
    # find nothing.
    where = getattr(store, "data_dir", "the data directory")
    if existing == asked:
        what = f"context {asked!r} is already in {where}"
    else:
        what = (
            f"context id {asked!r} differs only in case from the context {existing!r} in "
            f"{where} (the two would be one folder on Windows and macOS)"
        )
    return (
        f"{what}: import this copy beside it with --new-id, or remove the one there "
        f"first (`{PROG} rm {existing}`)"
    )


async def _import_v1(
    args: argparse.Namespace, store: Store, source: V1Source, content: bytes | None = None
) -> int:
    if args.new_id:
        # Never ignored without a word: v1 contexts keep their ids, so that importing
        # the same data again skips what is already there.
        raise CommandError(
            "--new-id is for a file made by `cm-notebook export`; v1 data is imported "
            "with its contexts' own ids (those already there are skipped): leave --new-id "
            "out",
            code=2,
        )
    if args.allow_tools:
        print(
            f"{PROG}: note: --allow-tools is for an export file; v1 data allows no tools",
            file=sys.stderr,
        )
    # Unlike `migrate`, whose backup beside the source is documented and can be turned
    # off, an import leaves the user's folder as it found it: the copy of the v1 data
    # goes into the data directory.
    backups = _backups_dir(store)
    report = await migrate_source(
        source,
        store,
        path=args.file,
        backup=not args.no_backup and backups is not None,
        backup_dir=backups,
        content=content,
    )
    out(cli_wording(str(report)))
    return _exit_code(report)


# -- migrate --------------------------------------------------------------------------


def _configure_migrate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        type=Path,
        metavar="SRC",
        help="v1 contexts.json, LocalStorage export, per-context <uuid>.json file, or a "
        "folder of per-context files (a damaged file there is reported, the others migrated)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="convert and validate only; write nothing"
    )
    parser.add_argument(
        "--no-backup",
        action="store_true",
        help="do not copy the source (a folder's JSON files) to <SRC>.v1-backup-<time> next "
        "to it (or to <data dir>/backups when that folder is read-only, or SRC is a pipe "
        "such as /dev/stdin)",
    )


@command(
    "migrate",
    "Migrate v1 data (contexts.json, LocalStorage export, or per-context files).",
    _configure_migrate,
)
async def _migrate(args: argparse.Namespace, store: Store) -> int:
    report = await migrate(args.source, store, dry_run=args.dry_run, backup=not args.no_backup)
    out(cli_wording(str(report)))
    return _exit_code(report)


def _exit_code(report: MigrationReport) -> int:
    """1 if a context failed, or was written without some of its messages (a script
    must not take a lossy migration for a complete one); else 0. Partial contexts whose
    messages all arrived (a branch naming a message v1 never had, a guessed role) are
    written with their problems listed: 0."""
    return 0 if report.ok and not report.incomplete else 1
