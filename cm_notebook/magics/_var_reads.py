"""Python cells that read what a reply still being written will give wait for it.

Run All runs a ``%%cm --var answer`` cell and, at once, the Python cell after it: the
reply is still streaming, so ``answer`` would not exist yet (a ``NameError``) or, worse,
would still hold the last run's answer. Run one by one, the cell would have seen the
new answer. So the extension adds :class:`WaitForVariables` to IPython's input
transformers: a cell whose code names a variable that a ``%%cm`` cell of this kernel is
still writing gets ``await _cm_wait_for_replies([...])`` in front of its first
statement, and IPython runs it as it runs any cell with a top-level ``await``: the
kernel's event loop goes on (the reply keeps streaming into its view) and the cell runs
once the reply has ended. The Interrupt button stops the wait, not the reply. A cell
with ``%cm export --format json`` (a value for code, so it cannot wait in a view as the
Markdown form does) waits the same way for this kernel's replies in the current context.

The call goes on the first statement's own line (``await ...; x = answer``), so a
traceback's line numbers are the cell's; a cell that starts with a compound statement
(``def``, ``for``, ``with`` ...) gets it on a line of its own above. Only names in the
code count (``answer``, ``f"{answer}"``, ``answer = ...``, and in the code of a
``%%time``, ``%%timeit``, ``%%capture`` or ``%%prun`` cell, or of a ``%time``,
``%timeit`` or ``%prun`` line; ``%reset`` names them all), not text in strings; a cell
that names no such variable, or any cell with ``%autoawait off``, runs as it is.
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

from . import _args as a
from ._parse import parse_args, split_words
from ._queue import Queued, polled
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

# Magics that run their code (a cell's body, or the rest of the line) as Python in the
# kernel's namespace.
_PYTHON_BODIES = frozenset({"time", "timeit", "capture", "prun"})

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

    def __call__(self, lines: list[str]) -> list[str]:
        if self.running:
            return lines
        being_set = self.commands.sender.names_being_set()
        coming = self._still_coming()
        if not (being_set or coming) or not _runs_awaits(self.shell):
            return lines
        source = "".join(lines)
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError, RecursionError):  # (null bytes; deep nesting)
            return lines  # IPython reports it as it would have
        if any(_resets(node) for node in ast.walk(tree)):
            read = sorted(being_set)  # cleared after their replies have set them
        else:
            read = sorted(self._names_in(tree) & being_set)
        exports = coming and any(_exports_json(node) for node in ast.walk(tree))
        if not (read or exports) or not tree.body:
            return lines
        self.shell.user_ns[WAIT_FUNCTION] = self.wait  # again: `%reset` may have cleared it
        self.shell.user_ns_hidden[WAIT_FUNCTION] = self.wait
        arguments = f"{read!r}, replies=True" if exports else repr(read)
        call = f"await {WAIT_FUNCTION}({arguments})"
        waiting = _waiting_before(source, tree, call)
        return waiting.splitlines(keepends=True) if waiting is not None else lines

    async def wait(self, names: Sequence[str], replies: bool = False) -> None:
        """Return once the replies that set ``names`` have ended (their values set) and,
        with ``replies``, every reply of this kernel in the current context."""
        sender = self.commands.sender
        setting: dict[Queued, list[str]] = {}
        for name in names:
            setter = sender.setter_of(name)
            if setter is not None:
                setting.setdefault(setter, []).append(name)
        current = self.commands.current
        coming = sender.still_coming(current) if replies and current is not None else []
        try:
            for setter, sets in setting.items():
                await polled(setter.finished, _telling_when_it_asks(setter, sets))
            for future in coming:
                await polled(future)
        except (asyncio.CancelledError, KeyboardInterrupt):
            # Interrupted: the wait stops, the replies do not.
            what = f"the reply that sets {_listed(names)}" if names else "the replies above"
            print(
                f"… stopped waiting for {what}; it goes on (`%cm stop --all` stops "
                "this kernel's replies) and this cell did not run"
            )
            raise

    def _names_in(self, tree: ast.AST) -> set[str]:
        # The names the code reads or sets, in the body of a cell magic that runs it as
        # Python (``%%time``, ``%%capture``...) too.
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Name):
                names.add(node.id)
            body = _python_body(node)
            if body is not None:
                try:
                    # IPython's own transforms only: not this one again.
                    inner = self.shell.input_transformer_manager.transform_cell(body)
                    names |= self._names_in(ast.parse(inner))
                except (SyntaxError, ValueError, RecursionError):
                    continue
        return names

    def cell_starts(self) -> None:
        """IPython ``pre_execute`` event."""
        self.running += 1

    def cell_ends(self) -> None:
        """IPython ``post_execute`` event."""
        self.running = max(0, self.running - 1)

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


def _listed(names: Sequence[str]) -> str:
    return ", ".join(f"`{name}`" for name in names)


def _runs_awaits(shell: Any) -> bool:
    # A top-level await runs on the kernel's own loop only with autoawait on asyncio
    # (ipykernel's default); otherwise the call would be a SyntaxError, or block.
    return bool(getattr(shell, "autoawait", False)) and (
        getattr(shell, "loop_runner", None) is _asyncio_runner
    )


def _waiting_before(source: str, tree: ast.Module, call: str) -> str | None:
    # ``source`` with ``call`` run before its first statement (after any ``from
    # __future__`` imports, which must come first), or None if there is none or that
    # cannot be done without changing what the cell means.
    futures = 0
    while futures < len(tree.body) and _is_future_import(tree.body[futures]):
        futures += 1
    if futures == len(tree.body):
        return None
    first = tree.body[futures]
    decorators = getattr(first, "decorator_list", [])
    start = _line_start(source, min([first.lineno, *(d.lineno for d in decorators)]))
    candidates = []
    if not isinstance(first, _COMPOUND) and first.col_offset == 0:
        candidates.append(f"{source[:start]}{call}; {source[start:]}")
    candidates.append(f"{source[:start]}{call}\n{source[start:]}")
    for candidate in candidates:
        try:
            body = ast.parse(candidate).body
        except SyntaxError:
            continue
        if len(body) > futures and _is_call(body[futures]):
            return candidate
    return None


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


def _magic_call(node: ast.AST) -> tuple[str, str, bool] | None:
    # (magic, code, is a cell magic) of ``get_ipython().run_line_magic('time', CODE)`` or
    # ``...run_cell_magic('time', LINE, CODE)``: what IPython makes of ``%time CODE``
    # and of a ``%%time`` cell.
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    kind, count = node.func.attr, len(node.args)
    if not ((kind == "run_cell_magic" and count == 3) or (kind == "run_line_magic" and count == 2)):
        return None
    first, last = node.args[0], node.args[-1]  # the magic's name; its code
    magic = first.value if isinstance(first, ast.Constant) else None
    code = last.value if isinstance(last, ast.Constant) else None
    if not (isinstance(magic, str) and isinstance(code, str)):
        return None
    return magic, code, kind == "run_cell_magic"


def _python_body(node: ast.AST) -> str | None:
    # The code of a magic that runs it as Python in the kernel's namespace.
    call = _magic_call(node)
    return call[1] if call is not None and call[0] in _PYTHON_BODIES else None


def _resets(node: ast.AST) -> bool:
    # ``%reset``: it clears the variables still to come too.
    call = _magic_call(node)
    return call is not None and call[0] == "reset"


def _exports_json(node: ast.AST) -> bool:
    # ``%cm export ... --format json``.
    call = _magic_call(node)
    if call is None or call[0] != "cm" or call[2]:
        return False
    try:
        words = split_words(call[1], a.ExportArgs.USAGE)
        if words[:1] != ["export"]:
            return False
        return parse_args(a.ExportArgs, words[1:]).format == "json"
    except UsageError:
        return False  # the magic says what is wrong when it runs


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
