"""``cm-notebook ls`` and ``show``: what is stored, for reading in a terminal."""

from __future__ import annotations

import argparse
import json
import sys
import unicodedata
import warnings
from collections.abc import Mapping
from pathlib import Path

from ._cli_base import (
    PROG,
    cli_wording,
    clip,
    command,
    of_a_listed_context,
    out,
    positive_int,
    when,
)
from ._import_mark import import_under_way, is_unfinished_import, redo_advice
from ._migration_mark import finish_advice, is_unfinished_migration, migration_under_way
from ._stranded_rounds import as_ended
from ._unicode import for_terminal
from .errors import CMError
from .model import ContextMetadata, Message
from .prompts import NO_PROMPT, effective_system, prompt_trail
from .render import shown_call, status_label, tool_results
from .store.base import Store
from .store.diagnostics import StoreWarning

__all__: list[str] = []  # subcommands, registered with cm_notebook.cli's registry


# -- ls -------------------------------------------------------------------------------


@command("ls", "List contexts: id, title, messages, branches, last update.")
async def _ls(args: argparse.Namespace, store: Store) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", StoreWarning)
        contexts = await store.list_contexts()
    where = getattr(store, "data_dir", "the data directory")
    ids = [meta.id for meta in contexts]
    skipped = 0
    for warning in caught:  # shown as they would have been, and the skips counted
        warnings.showwarning(warning.message, warning.category, warning.filename, 0)
        skipped += not of_a_listed_context(warning.message, Path(str(where)), ids)
    if not contexts:
        if skipped:
            out(f"No readable contexts in {where}: {skipped} skipped (see the warnings).")
        else:
            out(f"No contexts in {where}.")
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
                clip(meta.title, 40) + _import_note(store, meta),
                count,
                str(len(meta.branches)),
                when(meta.updated_at),
            )
        )
    # Measured as shown: out() shows a character a terminal would act on as its escape
    # (a title's \u202e takes six columns, not none).
    shown = [[for_terminal(cell) for cell in row] for row in rows]
    widths = [max(columns(row[i]) for row in shown) for i in range(5)]
    for row in shown:
        cells = [
            pad(row[0], widths[0]),
            pad(row[1], widths[1]),
            pad(row[2], widths[2], right=True),
            pad(row[3], widths[3], right=True),
            row[4],
        ]
        out("  ".join(cells).rstrip())
    return 0


def columns(text: str) -> int:
    """The terminal columns ``text`` takes: wide characters (CJK, most emoji) two,
    combining marks and format characters none, the rest one."""
    width = 0
    for char in text:
        if unicodedata.category(char) in ("Mn", "Me", "Cf"):
            continue
        width += 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1
    return width


def pad(text: str, width: int, *, right: bool = False) -> str:
    """``text`` padded with spaces to ``width`` columns (see :func:`columns`)."""
    spaces = " " * max(0, width - columns(text))
    return spaces + text if right else text + spaces


# -- show -----------------------------------------------------------------------------


def _import_note(store: Store, meta: ContextMetadata) -> str:
    # How `ls` marks a context whose import or migration has not finished: killed, or
    # still going.
    if is_unfinished_migration(meta):
        return " (being migrated)" if migration_under_way(store) else " (migration unfinished)"
    if not is_unfinished_import(meta):
        return ""
    return " (being imported)" if import_under_way(store, meta.id) else " (import unfinished)"


def _unfinished_warning(store: Store, meta: ContextMetadata) -> None:
    # What `show` says of a context whose import or migration has not finished: its
    # branches may lack messages, and what to do about it.
    if is_unfinished_migration(meta):
        if migration_under_way(store):
            why = "being migrated from v1 now: its branches may still lack messages"
        else:
            why = (
                "its migration from v1 never finished (the process was stopped): its "
                f"branches may lack messages; {finish_advice(meta)} to finish it"
            )
    elif is_unfinished_import(meta):
        if import_under_way(store, meta.id):
            why = "being imported by another process now: it may still lack messages"
        else:
            why = (
                "its import never finished (the process was stopped): it may lack "
                f"messages; {redo_advice(meta.id)}"
            )
    else:
        return
    text = " ".join(cli_wording(f"{meta.id}: {why}").split())
    print(f"{PROG}: warning: {for_terminal(text)}", file=sys.stderr)


def _configure_show(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("context_id", metavar="ID", help="the context to show")
    parser.add_argument("--branch", "-b", help="branch to show (default: the active branch)")
    parser.add_argument("--limit", "-n", type=positive_int, help="show only the last N messages")


def _lines(text: str) -> list[str]:
    # Only line breaks break a line: str.splitlines() also breaks at form feeds and
    # separators, which are shown as escapes instead, like every other control.
    return text.replace("\r\n", "\n").replace("\r", "\n").split("\n")


def _labelled(indent: str, label: str, text: str) -> None:
    # ``label`` and the text's first line, its other lines below it: a line of a
    # prompt or an error never starts where a message's header line does.
    first, *rest = _lines(text)
    out(f"{indent}{label}{first}".rstrip())
    for line in rest:
        out(f"{indent}{' ' * len(label)}{line}".rstrip())


def _print_message(message: Message, results: Mapping[str, Message]) -> None:
    # ``results``: the branch's tool results; a call shows its outcome and result there
    # (see shown_call).
    label = status_label(message)
    status = f" ({label})" if label else ""
    answers = f" -> {message.tool_call_id}" if message.tool_call_id else ""
    out(f"[{when(message.created_at)}] {message.role}{status}{answers}")
    if message.content or not message.tool_calls:
        _labelled("    ", "", message.content)
    for call in message.tool_calls:
        args = json.dumps(call.arguments, ensure_ascii=False)
        shown = shown_call(call, results)
        out(f"    tool call {clip(call.name, 100)}({args}) [{shown.status.value}]")
        if shown.reason:
            _labelled("      ", "reason: ", shown.reason)
        if shown.result is not None:
            out(f"      result: {clip(shown.result, 200)}")
    if message.metadata.error:
        _labelled("    ", "error: ", message.metadata.error)
    out()


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
    _unfinished_warning(store, meta)
    # A tool round a dead process left open, in a folder that cannot be written (this
    # command only reads), as settling it will record it (see _stranded_rounds).
    messages = await as_ended(store, meta.id, messages)
    out(" ".join(meta.title.split()) + _import_note(store, meta))
    out(f"id {meta.id} · branch {branch} · {len(ids)} message(s)")
    others = [name for name in meta.branches if name != branch]
    if others:
        out(f"other branches: {', '.join(others)} (see one with --branch NAME)")
    # Each reply under the prompt it was made under (see prompt_trail), for the part shown.
    prompts = prompt_trail(messages, effective_system(meta, branch))
    if prompts.first:
        _labelled("", "system prompt: ", prompts.first)
    out()
    if wanted < len(ids):
        out(f"... {len(ids) - wanted} earlier message(s) not shown")
        out()
    if len(messages) < wanted:
        # The store skipped damaged files, each with a warning that names it.
        out(f"... {wanted - len(messages)} unreadable message(s) skipped (see the warnings)")
        out()
    results = tool_results(messages)
    for index, message in enumerate(messages):
        if index in prompts.changes:
            _prompt_line("system prompt changed: ", prompts.changes[index])
        _print_message(message, results)
    if prompts.next_differs:
        _prompt_line("system prompt for the next reply: ", prompts.next)
    return 0


def _prompt_line(label: str, prompt: str | None) -> None:
    _labelled("", label, prompt or NO_PROMPT)
    out()
