"""The ``cm-notebook`` command: list, show, export, import, migrate and remove contexts.

Subcommands live in :data:`COMMANDS` (:mod:`cm_notebook._cli_base`), a registry of
name -> :class:`Command` (help text, a function that adds its arguments, and an async
handler that gets the parsed arguments and an open
:class:`~cm_notebook.store.base.Store`). Adding a
subcommand is one decorated function::

    def _configure_demo(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--model", default="local")

    @command("demo", "Run a short scripted conversation.", _configure_demo)
    async def _demo(args: argparse.Namespace, store: Store) -> int:
        ...
        return 0

Expected errors (any ``CMError``, missing files, bad JSON) are printed to stderr as
one line, ``cm-notebook: error: ...``, without a traceback. Exit codes (:data:`EXIT_CODES`):
0 success; 1 failure, invalid data included (a file to import or migrate, a damaged
context); 2 usage (bad arguments, invalid ids or branch names on the command line, a
confirmation that a script must give with ``--yes``); 130 interrupted.

``ls`` and ``show`` are in :mod:`cm_notebook._cli_reading`; ``export``, ``import``
and ``migrate`` in :mod:`cm_notebook._cli_transfer`; the others here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import stat
import sys
import warnings
from pathlib import Path
from typing import NoReturn, TextIO

import anyio

# The subcommands of these modules register in this order (the order --help lists).
from . import __version__, _cli_reading, _cli_transfer  # noqa: F401
from ._cli_base import (
    COMMANDS,
    PROG,
    Command,
    CommandError,
    advising_for,
    cli_wording,
    command,
    isatty,
    of_a_listed_context,
    out,
    port_number,
    positive_int,
    writing_stdout,
)
from ._import_mark import import_under_way, is_unfinished_import, redo_advice
from ._migration_mark import finish_advice, is_unfinished_migration, migration_under_way
from ._unicode import for_terminal
from .errors import CMError, CorruptDataError, InvalidInputError
from .ids import validate_branch_name, validate_context_id
from .model import ContextMetadata
from .store import FileStore
from .store.base import Store
from .store.deletion import busy_error
from .store.diagnostics import StoreWarning
from .store.paths import contexts_root, default_data_dir

__all__ = ["COMMANDS", "EXIT_CODES", "Command", "build_parser", "command", "main"]

#: What the exit codes mean, as ``--help`` says it.
EXIT_CODES = (
    "0 success, 1 failure (invalid data in a file or the store included), 2 usage "
    "(bad arguments, invalid ids, --yes needed), 130 interrupted"
)

# -- rm -------------------------------------------------------------------------------


def _configure_rm(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("context_id", metavar="ID", help="the context to delete")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    parser.add_argument(
        "--force",
        action="store_true",
        help="delete it even while another process is writing into it (a reply being "
        "streamed, a turn running), which is refused otherwise, --yes or not; that "
        "process's next write then fails",
    )


@command(
    "rm",
    "Delete a context and all its messages (not while another process is writing into "
    "it, unless --force).",
    _configure_rm,
)
async def _rm(args: argparse.Namespace, store: Store) -> int:
    context_id, damage = args.context_id, ""
    file_store = store if isinstance(store, FileStore) else None
    if file_store is not None and _removed_empty_folder(file_store, context_id):
        return 0
    try:
        meta: ContextMetadata | None = await store.get_metadata(context_id)
    except CorruptDataError as exc:
        # A damaged context is one the user most needs to delete, and the store can
        # delete it whatever state its files are in. Unknown ids still fail here,
        # before any prompt.
        meta, damage = None, str(exc)
    if file_store is not None and not args.force:
        # Before any prompt: no question whose yes is then refused. The deletion looks
        # again, under the context's lock.
        writers = await file_store.live_writers(context_id)
        if writers:
            raise busy_error(context_id, writers)
    if not args.yes:
        if not isatty(sys.stdin):
            raise CommandError(
                f"refusing to delete {context_id!r} without confirmation: stdin is not a "
                "terminal. Pass --yes to delete from a script.",
                code=2,
            )
        if meta is None:
            what = f"its metadata is unreadable: {' '.join(damage.split())}"
        else:
            try:
                count = f"{len(await store.index(meta.id))} message(s)"
            except CMError:  # a damaged index: what --yes would delete all the same
                count = "its message index unreadable"
            what = f"{meta.title!r}, {count}"
        prompt = for_terminal(f"Delete context {context_id} ({what})? [y/N] ")
        try:
            # input() blocks the loop, which is harmless here (the CLI runs one task)
            # and, unlike a worker thread, lets Ctrl-C end the prompt at once.
            answer = input(prompt)  # noqa: ASYNC250
        except EOFError:  # Ctrl-D, or stdin closed: no answer is no
            answer = ""
            out()  # the prompt's line was left open
        if answer.strip().lower() not in ("y", "yes"):
            out("Not deleted.")
            return 1
    if file_store is not None:
        await file_store.delete_context(context_id, force=args.force)
    else:  # pragma: no cover - the command line's store is a FileStore
        await store.delete_context(context_id)
    out(f"deleted {context_id}")
    return 0


def _removed_empty_folder(store: FileStore, context_id: str) -> bool:
    """Remove ``contexts/<context_id>`` if it is an empty folder (which `ls` warns of
    as no readable context, on every run); True if it did. Nothing is lost, so nothing
    is asked; a folder with anything in it is left alone (rmdir refuses it)."""
    folder = contexts_root(store.data_dir) / context_id
    try:
        os.rmdir(folder)
    except OSError:
        return False
    out(f"deleted {context_id} (an empty folder, not a context)")
    return True


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
    for context_id in ids:
        validate_context_id(context_id)  # a bad id is a usage error (2), not a finding
    if not ids:
        # Listing skips what is not a readable context, with a warning: here each is a
        # finding, so that `check` never says all is well while a context is unreadable.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", StoreWarning)
            ids = [meta.id for meta in await store.list_contexts()]
        for warning in caught:
            if of_a_listed_context(warning.message, store.data_dir, ids):
                # A repair made while reading it (an index rebuilt): a notice, as
                # `check ID` shows it; its check below says whether anything is left.
                _show_warning(warning.message, warning.category, warning.filename, 0)
            else:
                _error(str(warning.message))
                troubled += 1
    if not ids:
        out(f"No readable contexts in {store.data_dir}.")
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
                    out(cli_wording(str(report)))
                    meta = await store.get_metadata(context_id)
                    unfinished = _unfinished(store, meta)
                troubled += not report.ok or unfinished
            bar.update()
    # 1 while anything is left to fix (unreadable files stay for the user to handle).
    return 1 if troubled else 0


def _unfinished(store: Store, meta: ContextMetadata) -> bool:
    """Say so if the import or migration that writes the context has not finished;
    whether that is a finding (False while another process is still writing it)."""
    if is_unfinished_migration(meta):
        if migration_under_way(store):
            out(f"{meta.id}: being migrated from v1 now (a migration into this folder runs)")
            return False
        _error(
            f"{meta.id}: migration unfinished (the process was stopped): "
            f"{finish_advice(meta)} to finish it; what was added to it since is kept"
        )
        return True
    if not is_unfinished_import(meta):
        return False
    if import_under_way(store, meta.id):
        out(f"{meta.id}: being imported by another process now")
        return False  # not damage: another process is importing it
    _error(
        f"{meta.id}: its import never finished (the process was stopped): {redo_advice(meta.id)}"
    )
    return True


# -- demo -----------------------------------------------------------------------------


def _configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--provider", default="local", help="provider spec (default: local)")
    parser.add_argument("--max-tokens", type=positive_int, default=64, help="reply length limit")
    # Also after the command, as `python -m cm_notebook.demo --data-dir DIR` (this same
    # parser) has always taken it.
    _data_dir_after_command(parser, "where contexts are stored (as --data-dir before the command)")


@command("demo", "Run the quick-start conversation on the offline model.", _configure_demo)
async def _demo(args: argparse.Namespace, store: Store) -> int:
    from .demo import run_demo  # loads the session machinery only for this command

    try:
        await run_demo(provider=args.provider, store=store, max_tokens=args.max_tokens)
    except InvalidInputError as exc:  # a --provider spec that names no usable provider
        raise CommandError(str(exc), code=2) from None
    return 0


# -- serve ----------------------------------------------------------------------------


def _configure_serve(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--port", type=port_number, default=8888, help="port (default: 8888; 0: any)"
    )
    parser.add_argument("--ip", default="127.0.0.1", help="address (default: 127.0.0.1)")
    _data_dir_after_command(parser, "as above")
    parser.add_argument(
        "--allow-root",
        action="store_true",
        help="run as root (Jupyter refuses to otherwise; e.g. in a container)",
    )
    parser.epilog = (
        "Jupyter settings follow as --Class.name=value and are passed on to the server, "
        "e.g. --CMNotebookApp.tool_policy=deny or --ServerApp.base_url=/api/"
    )
    parser.set_defaults(jupyter_settings=[])


@command("serve", "Run a Jupyter server with only the REST + SSE API.", _configure_serve)
async def _serve(args: argparse.Namespace, store: Store) -> int:
    from .server.launch import serve  # needs jupyter_server, only for this command

    return serve(
        port=args.port,
        ip=args.ip,
        data_dir=args.data_dir,
        allow_root=args.allow_root,
        settings=args.jupyter_settings,
    )


# -- main -----------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors in the same ``cm-notebook: error:`` form as the rest."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{PROG}: error: {message}\n")


def _data_dir_after_command(parser: argparse.ArgumentParser, help_text: str) -> None:
    # ``--data-dir`` after the command too; left unset when not given (SUPPRESS), so
    # the one given before the command still counts.
    parser.add_argument(
        "--data-dir",
        type=data_dir_argument,
        metavar="DIR",
        default=argparse.SUPPRESS,
        help=help_text,
    )


def data_dir_argument(value: str) -> Path:
    """``--data-dir``'s value as a path; an empty one is refused (``Path("")`` is the
    current folder, which would quietly become the data directory)."""
    if not value.strip():
        raise argparse.ArgumentTypeError(
            "an empty path; give a folder, or leave --data-dir out to use "
            "$CM_NOTEBOOK_DATA_DIR or the platform default"
        )
    return Path(value)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = _Parser(
        prog=PROG,
        description="Manage cm_notebook contexts on disk.",
        epilog="The data directory is --data-dir, else $CM_NOTEBOOK_DATA_DIR, else the "
        f"platform default (e.g. ~/.local/share/cm_notebook). Exit codes: {EXIT_CODES}.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--data-dir", type=data_dir_argument, metavar="DIR", help="where contexts are stored"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, cmd in COMMANDS.items():
        sub = subparsers.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.configure(sub)
    return parser


def _check_arguments(args: argparse.Namespace) -> None:
    """Refuse malformed ids and branch names given on the command line, as usage errors
    (2), before the command runs: what it then finds invalid is in the data (1)."""
    try:
        for context_id in [getattr(args, "context_id", None), *getattr(args, "context_ids", [])]:
            if context_id is not None:
                validate_context_id(context_id)
        if getattr(args, "branch", None) is not None:
            validate_branch_name(args.branch)
    except InvalidInputError as exc:
        raise CommandError(str(exc), code=2) from None


async def _run(cmd: Command, args: argparse.Namespace) -> int:
    _check_arguments(args)
    store = FileStore(args.data_dir)
    _check_data_dir(store.data_dir)
    try:
        return await cmd.run(args, store)
    finally:
        await store.close()


def _check_data_dir(data_dir: Path) -> None:
    # Something other than a folder there: said as that, not as each command's own
    # failure inside it (`show` said it had no such context).
    try:
        mode = os.stat(data_dir).st_mode
    except OSError:
        return  # none yet (made by the first write), or the command's own error says why
    if not stat.S_ISDIR(mode):
        raise CommandError(
            f"the data directory {data_dir} is not a folder: give a folder with --data-dir "
            "(or $CM_NOTEBOOK_DATA_DIR), or move that file away"
        )


def _error(message: object) -> None:
    # One line, so that scripts can show or grep it.
    text = for_terminal(" ".join(cli_wording(str(message)).split()))
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
        args, unknown = parser.parse_known_args(argv)
        if unknown:
            _take_jupyter_settings(parser, args, unknown)
    except SystemExit as exc:  # --help, --version, or a usage error argparse reported
        return exc.code if isinstance(exc.code, int) else 2
    # The commands an error or a report advises act on this run's data directory.
    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    with warnings.catch_warnings(), advising_for(data_dir):
        warnings.showwarning = _show_warning
        return _dispatch(args)


#: A Jupyter (traitlets) setting on the command line: ``--Class.name=value``.
_JUPYTER_SETTING = re.compile(r"--[A-Z]\w*\.[A-Za-z_]\w*=.*", re.DOTALL)


def _take_jupyter_settings(
    parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str]
) -> None:
    # ``serve`` passes Jupyter settings on to the server (as `jupyter server` takes
    # them); any other unknown word, or one for another command, is a usage error.
    settings = [word for word in unknown if _JUPYTER_SETTING.fullmatch(word)]
    if args.command != "serve" or len(settings) < len(unknown):
        rest = [word for word in unknown if word not in settings] or unknown
        hint = (
            "; Jupyter settings take the form --Class.name=value"
            if args.command == "serve"
            and any(word.startswith("--") and "." in word for word in rest)
            else ""
        )
        parser.error(f"unrecognized arguments: {' '.join(rest)}{hint}")
    for word in settings:
        name, _, value = word.partition("=")
        if name == "--ServerApp.port":
            # The check --port has: Jupyter would take 99999 and listen on another port.
            try:
                port_number(value)
            except argparse.ArgumentTypeError as exc:
                parser.error(f"argument {name}: {exc}")
    args.jupyter_settings = settings


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
    text = " ".join(cli_wording(str(message)).split())
    print(f"{PROG}: warning: {for_terminal(text)}", file=sys.stderr)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        code = anyio.run(_run, COMMANDS[args.command], args)
        with writing_stdout():
            # What is still buffered fails here, not unreported at exit (a full disk).
            sys.stdout.flush()
        return code
    except CommandError as exc:
        _error(exc)
        return exc.code
    except CMError as exc:  # invalid data in a file or the store included: not usage
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
