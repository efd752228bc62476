"""The ``cm-notebook`` command: list, show, export, import, migrate and remove contexts.

Subcommands live in :data:`COMMANDS`, a registry of name -> :class:`Command`
(help text, a function that adds its arguments, and an async handler that gets the
parsed arguments and an open :class:`~cm_notebook.store.base.Store`). Adding a
subcommand is one decorated function::

    def _configure_demo(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", default="local")

    @command("demo", "Run a short scripted conversation.", _configure_demo)
    async def _demo(args: argparse.Namespace, store: Store) -> int:
        ...
        return 0

Expected errors (any ``CMError``, missing files, bad JSON) are printed to stderr as
one line, ``cm-notebook: error: ...``, without a traceback. Exit codes: 0 success,
1 failure, 2 usage (bad arguments, invalid ids, a confirmation that a script must
give with ``--yes``), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, TextIO

import anyio

from . import __version__, _json
from ._unicode import for_terminal
from .errors import (
    CMError,
    ContextExistsError,
    ContextNotFoundError,
    InvalidInputError,
    MigrationError,
)
from .export import (
    export_context,
    import_document,
    is_export,
    is_unfinished_import,
    parse_export,
    to_json,
    to_markdown,
)
from .ids import new_id
from .migrate import EXPECTED_SHAPES, migrate, parse_v1
from .model import Message
from .prompts import effective_system
from .render import status_label
from .store import FileStore
from .store.atomic import atomic_write
from .store.base import Store
from .store.diagnostics import StoreWarning

__all__ = ["COMMANDS", "Command", "build_parser", "command", "main"]

PROG = "cm-notebook"

Handler = Callable[[argparse.Namespace, Store], Awaitable[int]]


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, its arguments and its handler."""

    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Handler


#: Subcommands in the order ``--help`` lists them.
COMMANDS: dict[str, Command] = {}


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    del parser


def command(
    name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] = _no_arguments
) -> Callable[[Handler], Handler]:
    """Register the decorated async handler as subcommand ``name``."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = Command(help, configure, handler)
        return handler

    return register


class CommandError(Exception):
    """A failure to report as one line with an exit code (1 failure, 2 usage)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _out(text: str = "") -> None:
    # Shown, never obeyed: a reply or a title may hold terminal escapes.
    print(for_terminal(text), file=sys.stdout)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CommandError(f"{path} is not UTF-8 text") from exc
    try:
        return _json.loads(text)
    except _json.JSONLimitError as exc:
        raise CommandError(f"{path} cannot be read: it is {exc}") from None
    except json.JSONDecodeError as exc:
        raise CommandError(
            f"{path} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from exc


def _when(value: datetime) -> str:
    return f"{value:%Y-%m-%d %H:%M}"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())  # titles with newlines must not break the table
    return text if len(text) <= width else text[: width - 1] + "…"


# -- ls -------------------------------------------------------------------------------


@command("ls", "List contexts: id, title, messages, branches, last update.")
async def _ls(args: argparse.Namespace, store: Store) -> int:
    contexts = await store.list_contexts()
    if not contexts:
        where = getattr(store, "data_dir", "the data directory")
        _out(f"No contexts in {where}.")
        return 0
    rows = [("ID", "TITLE", "MESSAGES", "BRANCHES", "UPDATED")]
    for meta in contexts:
        try:
            count = str(len(await store.index(meta.id)))
        except CMError as exc:
            # One damaged context must not hide the others: list it, say what is wrong.
            count = "?"
            problem = StoreWarning(f"context {meta.id!r}: {exc}", getattr(exc, "path", None))
            warnings.warn(problem, stacklevel=1)
        rows.append(
            (
                meta.id,
                _clip(meta.title, 40)
                + (" (import unfinished)" if is_unfinished_import(meta) else ""),
                count,
                str(len(meta.branches)),
                _when(meta.updated_at),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        cells = [
            row[0].ljust(widths[0]),
            row[1].ljust(widths[1]),
            row[2].rjust(widths[2]),
            row[3].rjust(widths[3]),
            row[4],
        ]
        _out("  ".join(cells).rstrip())
    return 0


# -- show -----------------------------------------------------------------------------


def _configure_show(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("context_id", metavar="ID", help="the context to show")
    parser.add_argument("--branch", "-b", help="branch to show (default: the active branch)")
    parser.add_argument("--limit", "-n", type=_positive_int, help="show only the last N messages")


def _print_message(message: Message) -> None:
    label = status_label(message)
    status = f" ({label})" if label else ""
    answers = f" -> {message.tool_call_id}" if message.tool_call_id else ""
    _out(f"[{_when(message.created_at)}] {message.role}{status}{answers}")
    for line in message.content.splitlines() or ([""] if not message.tool_calls else []):
        _out(f"    {line}".rstrip())
    for call in message.tool_calls:
        args = json.dumps(call.arguments, ensure_ascii=False)
        _out(f"    tool call {call.name}({args}) [{call.status.value}]")
        if call.reason:
            _out(f"      reason: {call.reason}")
        if call.result is not None:
            _out(f"      result: {_clip(call.result, 200)}")
    if message.metadata.error:
        _out(f"    error: {message.metadata.error}")
    _out()


@command("show", "Print a context's conversation.", _configure_show)
async def _show(args: argparse.Namespace, store: Store) -> int:
    meta = await store.get_metadata(args.context_id)
    branch = args.branch or meta.active_branch
    ids = await store.path(meta.id, branch)
    wanted = len(ids)
    if args.limit is not None and args.limit < len(ids):
        wanted = args.limit
        messages = await store.page(meta.id, branch, limit=args.limit)
    else:
        messages = await store.get_messages(meta.id, ids)
    _out(meta.title)
    _out(f"id {meta.id} · branch {branch} · {len(ids)} message(s)")
    others = [name for name in meta.branches if name != branch]
    if others:
        _out(f"other branches: {', '.join(others)} (see one with --branch NAME)")
    prompt = effective_system(meta, branch)
    if prompt:
        _out(f"system prompt: {prompt}")
    _out()
    if wanted < len(ids):
        _out(f"... {len(ids) - wanted} earlier message(s) not shown")
        _out()
    if len(messages) < wanted:
        # The store skipped damaged files, each with a warning that names it.
        _out(f"... {wanted - len(messages)} unreadable message(s) skipped (see the warnings)")
        _out()
    for message in messages:
        _print_message(message)
    return 0


# -- export / import ------------------------------------------------------------------


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
    parser.add_argument("-o", "--output", type=Path, help="write to FILE instead of stdout")


@command("export", "Export a context as JSON (lossless) or Markdown.", _configure_export)
async def _export(args: argparse.Namespace, store: Store) -> int:
    document = await export_context(store, args.context_id, branch=args.branch)
    text = to_json(document) if args.format == "json" else to_markdown(document)
    if args.output is None or str(args.output) == "-":
        sys.stdout.write(text)
        return 0
    # Written next to the target and renamed, so an interrupted export leaves no half
    # file, and a failed one (a full disk) no temporary file either.
    atomic_write(args.output, text.encode("utf-8"))
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def _configure_import(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "file",
        type=Path,
        metavar="FILE",
        help="an `export` JSON file, or v1 data as `migrate` takes it (a file or a folder)",
    )
    parser.add_argument(
        "--new-id", action="store_true", help="import an export under a fresh context id"
    )
    parser.add_argument(
        "--no-backup",
        action="store_true",
        help="for v1 data: do not keep a copy of it in <data dir>/backups",
    )


def _backups_dir(store: Store) -> Path | None:
    data_dir = getattr(store, "data_dir", None)
    return data_dir / "backups" if isinstance(data_dir, Path) else None


@command(
    "import",
    "Import an exported JSON file, or v1 data (via migrate). Nothing is written next to "
    "FILE: a copy of v1 data is kept in <data dir>/backups instead.",
    _configure_import,
)
async def _import(args: argparse.Namespace, store: Store) -> int:
    if args.file.is_dir():
        return await _import_v1(args, store)
    data = _read_json(args.file)
    if is_export(data):
        document = parse_export(data)
        target = new_id("c") if args.new_id else None
        cid = target or document.metadata.id
        try:
            there = await store.get_metadata(cid)
        except ContextNotFoundError:
            there = None
        if there is not None and is_unfinished_import(there):
            # An import of it was killed half-way: this one takes its place.
            await store.delete_context(cid)
            print(f"{PROG}: replacing {cid}, whose import never finished", file=sys.stderr)
        try:
            meta = await import_document(store, document, context_id=target)
        except ContextExistsError:
            where = getattr(store, "data_dir", "the data directory")
            cid = document.metadata.id
            raise CommandError(
                f"context {cid!r} is already in {where}: import this copy beside it with "
                f"--new-id, or remove the one there first (`cm-notebook rm {cid}`)"
            ) from None
        counts = f"{len(document.messages)} message(s), {len(meta.branches)} branch(es)"
        _out(f"imported {meta.id} ({meta.title!r}): {counts}")
        return 0
    try:
        parse_v1(data, name=str(args.file))  # only to recognise the shape
    except MigrationError:
        raise CommandError(
            f"{args.file} is neither a cm_notebook export (an object with format "
            f"'cm_notebook.export', made by `cm-notebook export`) nor {EXPECTED_SHAPES}"
        ) from None
    return await _import_v1(args, store)


async def _import_v1(args: argparse.Namespace, store: Store) -> int:
    # Unlike `migrate`, whose backup beside the source is documented and can be turned
    # off, an import leaves the user's folder as it found it: the copy of the v1 data
    # goes into the data directory.
    backups = _backups_dir(store)
    report = await migrate(
        args.file,
        store,
        backup=not args.no_backup and backups is not None,
        backup_dir=backups,
    )
    _out(str(report))
    return 0 if report.ok else 1


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
        "to it (or to <data dir>/backups when that folder is read-only)",
    )


@command(
    "migrate",
    "Migrate v1 data (contexts.json, LocalStorage export, or per-context files).",
    _configure_migrate,
)
async def _migrate(args: argparse.Namespace, store: Store) -> int:
    report = await migrate(args.source, store, dry_run=args.dry_run, backup=not args.no_backup)
    _out(str(report))
    # Exit 1 only for failed contexts: partial ones were written and their problems listed.
    return 0 if report.ok else 1


# -- rm -------------------------------------------------------------------------------


def _configure_rm(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("context_id", metavar="ID", help="the context to delete")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")


@command("rm", "Delete a context and all its messages.", _configure_rm)
async def _rm(args: argparse.Namespace, store: Store) -> int:
    meta = await store.get_metadata(args.context_id)  # unknown ids fail before any prompt
    if not args.yes:
        if not _isatty(sys.stdin):
            raise CommandError(
                f"refusing to delete {meta.id!r} without confirmation: stdin is not a "
                "terminal. Pass --yes to delete from a script.",
                code=2,
            )
        count = len(await store.index(meta.id))
        prompt = f"Delete context {meta.id} ({meta.title!r}, {count} message(s))? [y/N] "
        # input() blocks the loop, which is harmless here (the CLI runs one task) and,
        # unlike a worker thread, lets Ctrl-C end the prompt at once.
        answer = input(prompt)  # noqa: ASYNC250
        if answer.strip().lower() not in ("y", "yes"):
            _out("Not deleted.")
            return 1
    await store.delete_context(meta.id)
    _out(f"deleted {meta.id}")
    return 0


# -- check ----------------------------------------------------------------------------


def _configure_check(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "context_ids", metavar="ID", nargs="*", help="contexts to check (default: all)"
    )
    parser.add_argument(
        "--repair",
        action="store_true",
        help="rebuild the message index from the files where they disagree; messages it "
        "had lost come back, on a branch named 'recovered' if no branch shows them",
    )


@command(
    "check",
    "Check each context's message index against its message files (--repair to fix).",
    _configure_check,
)
async def _check(args: argparse.Namespace, store: Store) -> int:
    if not isinstance(store, FileStore):  # pragma: no cover - the command line's store
        raise CommandError("check needs the file store")
    troubled = 0
    ids = args.context_ids
    if not ids:
        # Listing skips what is not a readable context, with a warning: here each is a
        # finding, so that `check` never says all is well while a context is unreadable.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StoreWarning)
            ids = [meta.id for meta in await store.list_contexts()]
        skipped = [w for w in caught if issubclass(w.category, StoreWarning)]
        for warning in skipped:
            _error(str(warning.message))
        troubled += len(skipped)
    if not ids:
        _out(f"No readable contexts in {store.data_dir}.")
        return 1 if troubled else 0
    from tqdm import tqdm  # loaded for this command only

    # Every message file of every context is read: a bar on a terminal, for many contexts.
    show = len(ids) > 1 and sys.stderr.isatty()
    with tqdm(
        total=len(ids), desc="checking", unit="context", file=sys.stderr, disable=not show
    ) as bar:
        for context_id in ids:
            try:
                report = await store.check(context_id, repair=args.repair)
            except CMError as exc:  # an unknown id, a folder that cannot be read or locked
                with bar.external_write_mode(file=sys.stderr):
                    _error(f"{context_id}: {exc}")
                troubled += 1
            else:
                with bar.external_write_mode(file=sys.stderr):
                    _out(str(report))
                    unfinished = is_unfinished_import(await store.get_metadata(context_id))
                    if unfinished:
                        _error(
                            f"{context_id}: its import never finished (the process was "
                            "stopped): import the file again to replace it"
                        )
                troubled += not report.ok or unfinished
            bar.update()
    # 1 while anything is left to fix (unreadable files stay for the user to handle).
    return 1 if troubled else 0


# -- demo -----------------------------------------------------------------------------


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", default="local", help="provider spec (default: local)")
    parser.add_argument("--max-tokens", type=int, default=64, help="reply length limit")


@command("demo", "Run the quick-start conversation on the offline model.", _configure_demo)
async def _demo(args: argparse.Namespace, store: Store) -> int:
    from .demo import run_demo  # loads the session machinery only for this command

    await run_demo(provider=args.provider, store=store, max_tokens=args.max_tokens)
    return 0


# -- serve ----------------------------------------------------------------------------


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=8888, help="port (default: 8888; 0: any)")
    parser.add_argument("--ip", default="127.0.0.1", help="address (default: 127.0.0.1)")
    parser.add_argument(
        "--data-dir", type=Path, metavar="DIR", default=argparse.SUPPRESS, help="as above"
    )


@command("serve", "Run a Jupyter server with only the REST + SSE API.", _configure_serve)
async def _serve(args: argparse.Namespace, store: Store) -> int:
    from .server.launch import serve  # needs jupyter_server, only for this command

    return serve(port=args.port, ip=args.ip, data_dir=args.data_dir)


# -- main -----------------------------------------------------------------------------


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors in the same ``cm-notebook: error:`` form as the rest."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{PROG}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = _Parser(
        prog=PROG,
        description="Manage cm_notebook contexts on disk.",
        epilog="The data directory is --data-dir, else $CM_NOTEBOOK_DATA_DIR, else the "
        "platform default (e.g. ~/.local/share/cm_notebook).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--data-dir", type=Path, metavar="DIR", help="where contexts are stored")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        sub = subparsers.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.configure(sub)
    return parser


async def _run(cmd: Command, args: argparse.Namespace) -> int:
    store = FileStore(args.data_dir)
    try:
        return await cmd.run(args, store)
    finally:
        await store.close()


def _error(message: object) -> None:
    # One line, so that scripts can show or grep it.
    text = for_terminal(" ".join(str(message).split()))
    print(f"{PROG}: error: {text}", file=sys.stderr)


def _describe_os_error(exc: OSError) -> str:
    if exc.filename is not None:
        return f"{exc.filename}: {exc.strerror or exc}"
    return str(exc)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (never raises for expected errors)."""
    for stream in (sys.stdout, sys.stderr):
        # Titles and messages may hold any character; never crash on a narrow console.
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse reported
        return exc.code if isinstance(exc.code, int) else 2
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        return _dispatch(args)


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    # Store warnings (a damaged file skipped or repaired) matter to the user, but as one
    # line like the errors, not with a source location.
    del category, filename, lineno, file, line
    print(f"{PROG}: warning: {for_terminal(' '.join(str(message).split()))}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return anyio.run(_run, COMMANDS[args.command], args)
    except CommandError as exc:
        _error(exc)
        return exc.code
    except InvalidInputError as exc:
        _error(exc)
        return 2
    except CMError as exc:
        _error(exc)
        return 1
    except BrokenPipeError:
        # The reader went away (`cm-notebook export X | head`): nothing to report. Point
        # stdout at devnull so the interpreter's final flush does not complain either.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:
        _error(_describe_os_error(exc))
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
