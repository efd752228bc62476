"""Python cells that read what a reply still being written will give wait for it.

Run All runs a ``%%cm --var answer`` cell and, at once, the Python cell after it: the
reply is still streaming, so ``answer`` would not exist yet (a ``NameError``) or, worse,
would still hold the last run's answer. Run one by one, the cell would have seen the
new answer. So the extension adds :class:`WaitForVariables` to IPython's input
transformers: a cell whose code names a variable that a ``%%cm`` cell of this kernel is
still writing gets ``await _cm_wait_for_replies([...])`` in front of its first
statement, and IPython runs it as it runs any cell with a top-level ``await``: the
kernel's event loop goes on (the reply keeps streaming into its view) and the cell runs
once the reply has ended; when no reply set it (failed, not sent), the cell does not
run and says why in one line. The Interrupt button stops the wait, not the reply. A cell
with ``%cm export --format json`` (a value for code, so it cannot wait in a view as the
Markdown form does) waits the same way for this kernel's replies in the current context.

The call goes on the first statement's own line (``await ...; x = answer``), so a
traceback's line numbers are the cell's; a cell that starts with a compound statement
(``def``, ``for``, ``with`` ...) gets it on a blank or comment line above it, else on a
line of its own (its traceback lines then count that one). A docstring and ``from
__future__`` imports stay first, and a cell the call would break (valid a statement at
a time, not as one module) runs as it is. What counts as
naming a variable (reading, binding or deleting it, calling a kernel function that
reads it, in magics' Python code too, ``$answer`` in a magic's line, ``%reset``) is
:mod:`._cell_reads`; text in
strings does not count. A cell that names no such variable, or any cell with
``%autoawait off``, runs as it is.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from IPython.core.async_helpers import _asyncio_runner
from IPython.core.error import UsageError
from IPython.core.magic import MAGIC_NO_VAR_EXPAND_ATTR

from ._cell_reads import cell_reads
from ._queue import Queued, Setter, not_set, polled
from ._reply import ReplyView

if TYPE_CHECKING:
    from ._commands import Commands

__all__ = ["WAIT_FUNCTION", "WaitForVariables", "register"]

#: The name the waiting call goes by in the kernel's namespace (hidden from ``%who``).
WAIT_FUNCTION = "_cm_wait_for_replies"

# Statements that cannot share a line with a statement before them (``a; for ...``).
_COMPOUND = tuple(
    kind
    for kind in (
        ast.FunctionDef,
        ast.AsyncFunctionDef,
        ast.ClassDef,
        ast.If,
        ast.For,
        ast.AsyncFor,
        ast.While,
        ast.With,
        ast.AsyncWith,
        ast.Try,
        getattr(ast, "TryStar", None),
        getattr(ast, "Match", None),
    )
    if kind is not None
)

# Where a line ends, as Python counts lines (not str.splitlines, which also splits at
# form feeds and other separators a cell may hold in a string).
_LINE_END = re.compile(r"\r\n|\r|\n")


class WaitForVariables:
    """IPython input transformer: a cell that names a ``--var`` still being written,
    or exports JSON while replies are coming, waits for them first (see the module
    docstring)."""

    def __init__(self, shell: Any, commands: Commands) -> None:
        self.shell = shell
        self.commands = commands
        # How many cells are running (one inside another with ``run_cell``): code that a
        # magic such as ``%time`` transforms while its cell runs is not a cell, and a
        # top-level await there would be a SyntaxError.
        self.running = 0
        # What was put in the cell being run, to take out of its history entry again.
        self._put_in: str | None = None

    def __call__(self, lines: list[str]) -> list[str]:
        if self.running:
            return lines
        being_set = self.commands.sender.names_being_set()
        coming = bool(self.commands.sender.still_coming(None))  # in any context
        if not (being_set or coming) or not _runs_awaits(self.shell):
            return lines
        source = "".join(lines)
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError):  # (null bytes; deep nesting)
            return lines  # IPython reports it as it would have
        reads = cell_reads(
            tree,
            self.shell.user_ns,
            self.shell.input_transformer_manager.transform_cell,  # not this one again
            self._expands,
        )
        # %reset: the variables are cleared after their replies have set them.
        read = sorted(being_set if reads.every_variable else reads.names & being_set)
        # A cell that also makes another context current (`%cm use`) exports that one,
        # which cannot be told before the cell runs: it waits for every context's.
        everywhere = reads.changes_context
        exports = coming and reads.exports_json and (everywhere or self._still_coming())
        if not (read or exports) or not tree.body:
            return lines
        self.shell.user_ns[WAIT_FUNCTION] = self.wait  # again: `%reset` may have cleared it
        self.shell.user_ns_hidden[WAIT_FUNCTION] = self.wait
        arguments = repr(read)
        if exports:
            arguments += ", replies=True" + (", everywhere=True" if everywhere else "")
        call = f"await {WAIT_FUNCTION}({arguments})"
        waiting = _waiting_before(source, tree, call)
        if waiting is None:
            return lines
        # What went in (the call and what joins it to the line): `waiting` is `source`
        # with it inserted where the call starts.
        at = waiting.index(call)
        self._put_in = waiting[at : at + len(waiting) - len(source)]
        return waiting.splitlines(keepends=True)

    def _expands(self, magic: str, is_cell_magic: bool) -> bool:
        # Whether IPython fills in ``$name`` / ``{expression}`` in the magic's line: not
        # for a magic that opts out (``%cm``), nor for one it does not know.
        found = self.shell.find_magic(magic, "cell" if is_cell_magic else "line")
        return found is not None and not getattr(found, MAGIC_NO_VAR_EXPAND_ATTR, False)

    async def wait(
        self, names: Sequence[str], replies: bool = False, everywhere: bool = False
    ) -> None:
        """Return once the replies that set ``names`` have ended (their values set) and,
        with ``replies``, every reply of this kernel in the current context (with
        ``everywhere``, in any context)."""
        sender = self.commands.sender
        setting: dict[Setter, list[str]] = {}
        waited: dict[str, list[Setter]] = {}
        for name in names:
            waited[name] = sender.setters_of(name)
            for setter in waited[name]:
                setting.setdefault(setter, []).append(name)
        current = None if everywhere else self.commands.current
        asks = replies and (everywhere or current is not None)
        coming = sender.still_coming(current) if asks else []
        above = sender.cells_under_way(current) if asks else []
        try:
            for cell, sets in setting.items():
                await polled(cell.finished, _telling_when_it_asks(cell, sets))
            telling = _telling_when_one_asks(above)
            for future in coming:
                await polled(future, telling)
        except (asyncio.CancelledError, KeyboardInterrupt):
            # Interrupted: the wait stops, the replies do not.
            what = f"the reply that sets {_listed(names)}" if names else "the replies above"
            print(
                f"… stopped waiting for {what}; it goes on (`%cm stop --all` stops "
                "this kernel's replies) and this cell did not run"
            )
            raise
        # A variable none of whose replies set it holds an earlier run's value.
        for name, cells in waited.items():
            unset = not_set(name, cells)
            if unset is not None:
                # One line, no traceback: IPython shows a UsageError (not a subclass) so.
                raise UsageError(f"this cell did not run: {unset}") from None

    def cell_starts(self) -> None:
        """IPython ``pre_execute`` event."""
        self.running += 1

    def cell_ends(self) -> None:
        """IPython ``post_execute`` event."""
        self.running = max(0, self.running - 1)
        if self.running:
            return  # a cell run from within a cell: the outer one's history is later
        put_in, self._put_in = self._put_in, None
        history = getattr(getattr(self.shell, "history_manager", None), "input_hist_parsed", None)
        if put_in is not None and history:
            # ``In[n]`` (and so ``%save``, ``%macro``) holds the cell as run: the cell as
            # written is what it should keep (a saved script cannot run the await).
            history[-1] = history[-1].replace(put_in, "", 1)

    def _still_coming(self) -> bool:
        current = self.commands.current
        return current is not None and bool(self.commands.sender.still_coming(current))


def _telling_when_it_asks(setter: Queued, names: Sequence[str]) -> Callable[[], None]:
    # Says once why the cell still waits when the reply waits for a tool decision: the
    # user must click Approve or Deny in that reply's view.
    told = False

    def tell() -> None:
        nonlocal told
        if not told and isinstance(setter, ReplyView) and setter.asks_for_tools:
            told = True
            print(
                f"… the reply that sets {_listed(names)} asks to run a tool: Approve or "
                "Deny it in that cell's view; this cell runs once the reply has ended"
            )

    return tell


def _telling_when_one_asks(cells: Sequence[Queued]) -> Callable[[], None]:
    # As _telling_when_it_asks, for a cell that waits for every reply above it (an
    # export as JSON): says once that one of them waits for a tool decision.
    told = False

    def tell() -> None:
        nonlocal told
        if not told and any(isinstance(c, ReplyView) and c.asks_for_tools for c in cells):
            told = True
            print(
                "… a reply above asks to run a tool: Approve or Deny it in that cell's "
                "view; this cell runs once the replies above have ended"
            )

    return tell


def _listed(names: Sequence[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def _runs_awaits(shell: Any) -> bool:
    # A top-level await runs on the kernel's own loop only with autoawait on asyncio
    # (ipykernel's default); otherwise the call would be a SyntaxError, or block.
    return bool(getattr(shell, "autoawait", False)) and (
        getattr(shell, "loop_runner", None) is _asyncio_runner
    )


def _waiting_before(source: str, tree: ast.Module, call: str) -> str | None:
    # ``source`` with ``call`` run before its first statement (after a docstring and
    # ``from __future__`` imports, which must come first), or None if there is none or
    # that cannot be done without changing what the cell means.
    skipped = 0
    while skipped < len(tree.body) and _comes_first(tree.body[skipped], skipped):
        skipped += 1
    if skipped == len(tree.body):
        return None
    first = tree.body[skipped]
    decorators = getattr(first, "decorator_list", [])
    lineno = min([first.lineno, *(d.lineno for d in decorators)])
    start = _line_start(source, lineno)
    candidates = []
    if not isinstance(first, _COMPOUND) and first.col_offset == 0:
        candidates.append(f"{source[:start]}{call}; {source[start:]}")
    # A blank or comment-only line above it can hold the call: no line is added.
    above = _line_start(source, lineno - 1) if lineno > 1 else start
    if above < start and source[above:start].strip()[:1] in ("", "#"):
        candidates.append(f"{source[:above]}{call}  {source[above:]}")
    candidates.append(f"{source[:start]}{call}\n{source[start:]}")
    for candidate in candidates:
        try:
            body = ast.parse(candidate).body
            # As IPython compiles a cell with an await: as one module (a `global x`
            # after a use of x, or a misplaced future import, fails only then).
            compile(candidate, "<cell>", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
        except (SyntaxError, ValueError):
            continue
        if len(body) > skipped and _is_call(body[skipped]):
            return candidate
    return None


def _comes_first(statement: ast.stmt, index: int) -> bool:
    # A docstring (first) or a ``from __future__`` import: what must stay on top.
    docstring = (
        index == 0
        and isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Constant)
        and isinstance(statement.value.value, str)
    )
    return docstring or _is_future_import(statement)


def _is_future_import(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.ImportFrom) and statement.module == "__future__"


def _line_start(source: str, lineno: int) -> int:
    # The offset in ``source`` where line ``lineno`` (1-based, as ast counts) starts.
    start = 0
    for _ in range(lineno - 1):
        end = _LINE_END.search(source, start)
        if end is None:
            return len(source)
        start = end.end()
    return start


def _is_call(statement: ast.stmt) -> bool:
    # The statement is the waiting call itself (not swallowed by something before it).
    return (
        isinstance(statement, ast.Expr)
        and isinstance(statement.value, ast.Await)
        and isinstance(statement.value.value, ast.Call)
        and isinstance(statement.value.value.func, ast.Name)
        and statement.value.value.func.id == WAIT_FUNCTION
    )


def register(shell: Any, commands: Commands) -> None:
    """Add a :class:`WaitForVariables` for ``commands`` to ``shell``, in place of one an
    earlier load of the extension added."""
    post = getattr(shell, "input_transformers_post", None)
    if post is None:
        return
    for earlier in [t for t in post if type(t).__name__ == WaitForVariables.__name__]:
        post.remove(earlier)
        with contextlib.suppress(ValueError):  # (not registered)
            shell.events.unregister("pre_execute", earlier.cell_starts)
            shell.events.unregister("post_execute", earlier.cell_ends)
    transformer = WaitForVariables(shell, commands)
    post.append(transformer)
    shell.events.register("pre_execute", transformer.cell_starts)
    shell.events.register("post_execute", transformer.cell_ends)
