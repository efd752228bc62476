"""The session's errors in the magics' terms.

A session's error names its remedy in Python (``session.stop(branch=...)``,
``from_message=...``); in a notebook of magics each known remedy is said again as what
to type in a cell. Used for the usage errors of a cell and for the
outcome a queued cell shows when its send fails later.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from IPython.core.error import UsageError

from .._cli_advice import elsewhere, for_data_dir
from ..errors import CMError
from ..store.paths import default_data_dir

if TYPE_CHECKING:
    from ..session import ContextSession

__all__ = ["for_magics", "said", "translated"]

#: A remedy a session's error gives in Python, and the same in a notebook of magics.
_REMEDIES = (
    ("use regenerate() for a new reply", "send again for a new reply"),
    (
        "Wait for the turn to finish (await it), or fork at an earlier message (from_message=...).",
        "Wait for the reply (`await _`), or fork at an earlier message (--from MESSAGE_ID).",
    ),
    (
        "create one with session.branch(name) or session.fan_out(...)",
        "make one with `%cm branch NAME`, or compare answers with `%%cm --ab` / `--fanout`",
    ),
    ("pick another name, or delete that branch first (delete_branch)", "pick another name"),
    ("Use an id from session.history().", "`%cm history --ids` shows the ids."),
    ("session.export(branch=...)", "`%cm export --branch B`"),
)


def _quoting(template: str, name: int = 1) -> Callable[[re.Match[str]], str]:
    # ``template`` (``{1}`` for group 1...) with group ``name``, a branch or context
    # name, quoted as a shell word: the advice can be pasted as it is, a name with a
    # space included (`%cm stop --branch 'my branch'`).
    def replace(match: re.Match[str]) -> str:
        groups = [match.group(0), *match.groups()]
        groups[name] = shlex.quote(groups[name])
        return template.format(*groups)

    return replace


#: A reply of this kernel still being generated on a named branch (e.g. a %%cm cell run
#: while a reply started from code still streams there): said with that branch before
#: the plain remedies are (`%cm stop` alone stops the active branch's reply, which may
#: be another's).
_BUSY_BRANCH = (
    re.compile(
        r"(on branch '([^']+)'[^;]*); wait for it \(session\.turn\('[^']+'\) is its Turn: "
        r"await it\), or stop it with session\.stop\(branch='[^']+'\)"
    ),
    _quoting(
        "{1}; wait for it (`await _` in a cell after a %%cm cell waits for its reply), "
        "stop it with `%cm stop --branch {2}`, or send on another branch (--branch)",
        name=2,
    ),
)

#: Remedies that name a context or a branch: the same, with the name kept (quoted as a
#: shell word where it goes in a magic's line).
_PATTERNS: tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...] = (
    # A reply of this kernel being stopped: over in a moment.
    (
        re.compile(r"await session\.turn\('[^']+'\) \(it ends in a moment\)"),
        "run the cell again in a moment",
    ),
    # A reply another process (a second kernel, the server) is generating.
    (
        re.compile(
            r"stop it \(session\.stop\(branch='([^']+)'\)\), or work on another branch "
            r"\(session\.branch\(name\)\)"
        ),
        _quoting(
            "stop it with `%cm stop --branch {1}`, or work on another branch (`%cm branch NAME`)"
        ),
    ),
    # The tool calls a reply waits for, that branch's only.
    (
        re.compile(
            r"session\.approve\(branch='([^']+)'\) or session\.deny\(branch='[^']+'\) "
            r"\(session\.pending_tool_calls lists them\)"
        ),
        _quoting(
            "the Approve and Deny buttons (`%cm approve --branch {1}`, `%cm deny --branch {1}`)"
        ),
    ),
    (
        re.compile(r"open the context again with ContextSession\.open\('([^']+)'\)"),
        _quoting("make it current again with `%cm use {1}`"),
    ),
    (
        # The current context deleted meanwhile (say, `cm-notebook rm` in a terminal);
        # the command may name the store's folder (`cm-notebook --data-dir DIR ls`).
        re.compile(
            r"List existing contexts with FileStore\.list_contexts\(\) \(or `.*?`\)\.(?=\s|$)"
        ),
        "It may have been deleted: `%cm ls` lists the stored contexts, `%cm new` makes one.",
    ),
    # `%cm branch NAME --from MESSAGE_ID` with an id the context does not have.
    (
        re.compile(r"(has no message '[^']*'\.)$"),
        r"\1 `%cm history --ids` shows the ids of a branch's messages.",
    ),
    # Any other advice to decide a branch's calls, or to stop its reply.
    (
        re.compile(r"session\.approve\(branch='([^']+)'\) / session\.deny\(branch='[^']+'\)"),
        _quoting("`%cm approve --branch {1}` / `%cm deny --branch {1}`"),
    ),
    (
        re.compile(r"session\.stop\(branch='([^']+)'\)"),
        _quoting("`%cm stop --branch {1}`"),
    ),
)


def for_magics(message: str, session: ContextSession | None = None) -> str:
    """``message`` with the remedies it names in Python said as magics, and the
    ``cm-notebook`` commands it advises given the data directory of ``session`` (else
    the kernel's) when that is not the default one."""
    message = _BUSY_BRANCH[0].sub(_BUSY_BRANCH[1], message)
    for python, magic in _REMEDIES:
        message = message.replace(python, magic)
    for pattern, replacement in _PATTERNS:
        message = pattern.sub(replacement, message)
    return for_data_dir(message, elsewhere(_data_dir(session)))


def _data_dir(session: ContextSession | None) -> Path:
    # The folder of the session's store; the kernel's (where %cm ls and %cm use look)
    # for no session, or one whose store is no folder.
    data_dir = getattr(getattr(session, "_store", None), "data_dir", None)
    return data_dir if isinstance(data_dir, Path) else default_data_dir()


def said(exc: BaseException, session: ContextSession | None = None) -> str:
    """What a view says of an error: a session's in the magics' terms, a usage error's
    own words, else its repr."""
    if isinstance(exc, CMError):
        return for_magics(str(exc), session)
    return str(exc) if isinstance(exc, UsageError) else repr(exc)


@contextmanager
def translated(session: ContextSession | None = None) -> Iterator[None]:
    """Turn the session's errors into one-line usage errors (no traceback), with their
    remedies in the magics' terms (see :func:`for_magics`)."""
    try:
        yield
    except CMError as exc:
        raise UsageError(for_magics(str(exc), session)) from exc
