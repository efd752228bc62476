"""The package's error messages, reworded for a client of the REST API.

The package's errors are written for a person at a notebook: their remedies name
Python calls (``session.stop(branch=...)``, ``FileStore.list_contexts()``) and their paths are the
machine's. A client of the server can do neither: it needs the HTTP request that helps,
and it has no business learning where the server keeps its files. :func:`for_http`
rewrites the remedies it knows into requests, drops any other clause that names a
Python call (when every clause does, it keeps what the message says before the first
call: a message is never left empty), and shows paths relative to the server's data
folder.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from urllib.parse import quote

from .._cli_advice import data_dir_option
from ..store.oserrors import KEEP_OR_MOVE

__all__ = ["for_http"]

#: A Python call in prose: ``name()``, ``obj.method(...)``, ``Class.method()``.
_PYTHON_CALL = re.compile(r"`?\b[A-Za-z_][\w.]*\((?:[^()]|\.\.\.)*\)`?")
#: Where a rewrite puts the branch its pattern caught (see :func:`_as_is`).
_BRANCH = "\x00branch\x00"
#: One clause or sentence of a message, with the separator that ends it.
_CLAUSE = re.compile(r"[^;.]*(?:\.(?!\s|$)[^;.]*)*(?:[;.](?=\s|$)|$)")


#: How the server's data folder is chosen, said to whoever runs the server.
_SERVE = "`--CMNotebookApp.data_dir`"
#: The store's remedy for a data folder it may not write, without the period that ends
#: it (a message that goes on after it may have taken that off).
_KEEP_OR_MOVE = re.escape(KEEP_OR_MOVE.removesuffix("."))
#: A data folder the server may not write: the client can do nothing about it, so the
#: remedy is said for the server's administrator (copying the folder, importing into
#: one's own, a Python keyword: none of them a client's to do).
_CANNOT_WRITE: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(r"Give the user running cm_notebook write access to it\. " + _KEEP_OR_MOVE),
        "The server's administrator can give the user running the server write access to "
        f"it, or serve a writable copy of its data folder (or another folder) with {_SERVE}",
    ),
    (
        re.compile(_KEEP_OR_MOVE),
        "The server's administrator can serve a writable copy of its data folder (or "
        f"another folder) with {_SERVE}",
    ),
    (
        re.compile(
            r"Give the user running cm_notebook read and write access to it, or choose "
            r"another data directory \(CM_NOTEBOOK_DATA_DIR or data_dir=\)"
        ),
        "The server's administrator can give the user running the server read and write "
        f"access to it, or serve another data folder with {_SERVE}",
    ),
    (
        re.compile(r"\(CM_NOTEBOOK_DATA_DIR or data_dir=\)"),
        f"({_SERVE}, for the server's administrator)",
    ),
]


def _rewrites(api: str, context: str) -> list[tuple[re.Pattern[str], str]]:
    here = f"{api}/contexts/{context}"
    stop_body = '{"branch": ' + _BRANCH + "}"
    return [
        *_CANNOT_WRITE,
        (
            re.compile(
                r"List existing contexts with FileStore\.list_contexts\(\)"
                r"(?: \(?or `.*?`\)?)?\.(?=\s|$)"
            ),
            f"GET {api}/contexts lists the contexts there are.",
        ),
        (
            re.compile(
                r"List existing ids with ContextSession\.list\(\)(?: \(?or `.*?`\)?)?\.(?=\s|$)"
            ),
            f"GET {api}/contexts lists the contexts there are.",
        ),
        (
            re.compile(r"Use an id from session\.history\(\)\."),
            f"GET {here}/messages lists the messages there are.",
        ),
        (
            # The branch the message names: without it, a stop stops the active branch.
            re.compile(
                r"wait for it \(session\.turn\('(?P<branch>[^']*)'\) is its Turn: await it\), "
                r"or stop it with session\.stop\(branch='[^']*'\)"
            ),
            f"wait for its MessageCompleted or Error signal (GET {here}/events), or stop it "
            f"with POST {here}/stop and {stop_body}",
        ),
        (
            re.compile(r"await it, or call turn\.cancel\(\)"),
            f"wait for its MessageCompleted or Error signal (GET {here}/events), or stop it "
            f'with POST {here}/stop (and {{"branch": name}} for a branch that is not the '
            "active one)",
        ),
        (
            re.compile(r"Deleting the context folder \S+ removes the whole context\."),
            f"DELETE {here} removes the whole context.",
        ),
        (
            # The advice for an empty folder among the contexts (the listing skips it).
            re.compile(r"`cm-notebook [^`]*?\brm [^`\s]+ --yes` removes it"),
            f"DELETE {here} removes it",
        ),
        (
            # A folder with files but no context in it (see store/stray_folders.py): a
            # client cannot move files on the server, but a DELETE of the id removes it.
            re.compile(r"move what you want to keep out of it, then remove the folder"),
            f"DELETE {here} removes the folder and everything in it",
        ),
        (
            re.compile(r"pick another name, or delete that branch first \(delete_branch\)"),
            "pick another name",
        ),
        (
            re.compile(
                r"(?P<kept>branch '(?P<branch>[^']*)' has a reply in progress; )cancel it first"
            ),
            f"stop it first (POST {here}/stop with {stop_body})",
        ),
        (re.compile(r"cancel it first"), f"stop it first (POST {here}/stop)"),
        (
            re.compile(
                r"stop it \(session\.stop\(branch='(?P<branch>[^']*)'\)\), or work on another "
                r"branch \(session\.branch\(name\)\)"
            ),
            f"stop it (POST {here}/stop with {stop_body}), or work on another branch "
            f"(POST {here}/branches)",
        ),
        (
            re.compile(
                r"session\.approve\(branch='(?P<branch>[^']*)'\) or "
                r"session\.deny\(branch='[^']*'\) \(session\.pending_tool_calls lists them\)"
            ),
            f"POST {here}/tools/approve or POST {here}/tools/deny with {stop_body} (GET "
            f"{here}/tools lists them)",
        ),
        (
            re.compile(r"Wait for it to finish and try again"),
            f"Wait for its MessageCompleted signal (GET {here}/events) and try again",
        ),
        (
            re.compile(r"stop it with session\.stop\(branch='(?P<branch>[^']*)'\)"),
            f"stop it with POST {here}/stop and {stop_body}",
        ),
        (
            re.compile(r"await session\.turn\('[^']*'\) \(it ends in a moment\)"),
            f"wait for its MessageCompleted signal (GET {here}/events)",
        ),
        (
            re.compile(r"Wait for the turn to finish \(await it\)"),
            f"Wait for its MessageCompleted signal (GET {here}/events)",
        ),
        (re.compile(r"\(from_message=\.\.\.\)"), "(from_message in the body)"),
        (
            re.compile(r"\(use regenerate\(\) for a new reply\)"),
            f"(POST {here}/regenerate for a new reply)",
        ),
        (
            re.compile(r"use regenerate\(\) for a new reply"),
            f"POST {here}/regenerate makes a new reply",
        ),
        (
            re.compile(r"send again or regenerate\(\) for a new reply"),
            f"send again, or POST {here}/regenerate for a new reply",
        ),
        (
            re.compile(r"switch to another one first \(session\.switch\(name\)\)"),
            f'switch to another one first (PUT {here}/branches/{{name}} with {{"active": true}})',
        ),
        (
            re.compile(
                r", or give one in provider_options=\{'model': \.\.\.\} when the session is "
                r"created \(or OpenAIProvider\(model=\.\.\.\)\)"
            ),
            ' (or give the model as "model" in provider_options)',
        ),
        (re.compile(r"Try again, or raise FileStore\(lock_timeout=\.\.\.\)\."), "Try again."),
        (re.compile(r" \(or another FileStore\)"), ""),
        # What the phrases above did not take: a branch's calls decided, its reply stopped.
        (
            re.compile(
                r"session\.approve\(branch='(?P<branch>[^']*)'\) / session\.deny\(branch='[^']*'\)"
            ),
            f"POST {here}/tools/approve or POST {here}/tools/deny with {stop_body}",
        ),
        (
            re.compile(r"session\.stop\(branch='(?P<branch>[^']*)'\)"),
            f"POST {here}/stop with {stop_body}",
        ),
    ]


def for_http(message: str, *, data_dir: Path, api: str, context_id: str | None) -> str:
    """``message`` as a REST client should read it (see the module docstring).

    ``api`` is the API's URL path (with the server's base URL), ``context_id`` the
    context the request was about, if any.
    """
    text = message
    context = quote(context_id, safe="") if context_id is not None else "{context_id}"
    for pattern, replacement in _rewrites(api, context):
        # A function, never a template: the request's id may hold backslashes.
        text = pattern.sub(functools.partial(_as_is, replacement), text)
    text = _hide_paths(text, data_dir)
    if call := _PYTHON_CALL.search(text):
        kept = [c for c in _CLAUSE.findall(text) if c.strip() and not _PYTHON_CALL.search(c)]
        text = re.sub(r"[;,]\s*$", ".", "".join(kept).strip()) if kept else _before(text, call)
    return re.sub(r"\s{2,}", " ", text).strip()


def _before(text: str, call: re.Match[str]) -> str:
    # Every clause names a Python call: keep what the message says before the first
    # one (which request, which value), never nothing. The log has the whole text.
    head = text[: call.start()].rstrip(" \t\n:;,(-")
    if not head:
        return "the server could not carry out this request; its log has the details"
    return f"{head}; the server's log has the details"


def _as_is(replacement: str, match: re.Match[str]) -> str:
    # The branch a rule's pattern caught, as JSON (a request body names it so), after
    # the text its pattern keeps (the words that name the branch).
    found = match.groupdict()
    if found.get("branch") is not None:
        replacement = replacement.replace(_BRANCH, json.dumps(found["branch"]))
    return (found.get("kept") or "") + replacement


def _hide_paths(text: str, data_dir: Path) -> str:
    # Longest spelling first, so a resolved path is not left half-replaced.
    spellings = sorted({str(data_dir), str(data_dir.resolve())}, key=len, reverse=True)
    for folder in spellings:
        # The folder a command is advised for, as a Python caller is told it: a client
        # is not told where the server keeps its files (and cannot run it there).
        text = text.replace(f"`cm-notebook {data_dir_option(folder)} ", "`cm-notebook ")
        # "no context 'x' in <data dir>/contexts.": the folder says nothing to a client.
        text = re.sub(rf" in {re.escape(folder)}/contexts(?=[.;,]?(?:\s|$))", "", text)
        text = text.replace(f"{folder}/", "")
        text = text.replace(folder, "the server's data folder")
    return text
