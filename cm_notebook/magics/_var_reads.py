"""Python cells that read a ``--var`` still being written wait for its reply.

Run All runs a ``%%cm --var answer`` cell and, at once, the Python cell after it: the
reply is still streaming, so ``answer`` would not exist yet (a ``NameError``) or, worse,
would still hold the last run's answer. Run one by one, the cell would have seen the
new answer. So the extension adds :class:`WaitForVariables` to IPython's input
transformers: a cell whose code names a variable that a ``%%cm`` cell of this kernel is
still writing gets ``await _cm_wait_for_replies([...])`` in front of its first
statement, and IPython runs it as it runs any cell with a top-level ``await``: the
kernel's event loop goes on (the reply keeps streaming into its view) and the cell runs
once the reply has ended. The Interrupt button stops the wait, not the reply.

The call goes on the first statement's own line (``await ...; x = answer``), so a
traceback's line numbers are the cell's; a cell that starts with a compound statement
(``def``, ``for``, ``with`` ...) gets it on a line of its own above. Only names in the
code count (``answer``, ``f"{answer}"``, ``answer = ...``), not text in strings; a cell
that names no such variable, or any cell with ``%autoawait off``, runs as it is.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from typing import Any

from IPython.core.async_helpers import _asyncio_runner

from ._queue import polled
from ._sending import CellSender

__all__ = ["WAIT_FUNCTION", "WaitForVariables", "register"]

#: The name the waiting call goes by in the kernel's namespace (hidden from ``%who``).
WAIT_FUNCTION = "_cm_wait_for_replies"

# Statements after which nothing can follow on the same line.
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
    """IPython input transformer: a cell that names a ``--var`` still being written
    waits for its reply first (see the module docstring)."""

    def __init__(self, shell: Any, sender: CellSender) -> None:
        self.shell = shell
        self.sender = sender

    def __call__(self, lines: list[str]) -> list[str]:
        being_set = self.sender.names_being_set()
        if not being_set or not _runs_awaits(self.shell):
            return lines
        source = "".join(lines)
        try:
            tree = ast.parse(source)
        except SyntaxError:
            return lines  # IPython reports it as it would have
        read = sorted(
            {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in being_set}
        )
        if not read or not tree.body:
            return lines
        self.shell.user_ns[WAIT_FUNCTION] = self.wait  # again: `%reset` may have cleared it
        self.shell.user_ns_hidden[WAIT_FUNCTION] = self.wait
        waiting = _waiting_before(source, tree.body[0], f"await {WAIT_FUNCTION}({read!r})")
        return waiting.splitlines(keepends=True) if waiting is not None else lines

    async def wait(self, names: Sequence[str]) -> None:
        """Return once the replies that set ``names`` have ended (their values set)."""
        try:
            for setter in self.sender.setters(names):
                await polled(setter.finished)
        except BaseException:
            # Interrupted: the wait stops, the reply does not.
            shown = ", ".join(f"`{name}`" for name in names)
            print(
                f"… stopped waiting for {shown}; the reply that sets it goes on "
                "(`%cm stop --all` stops it) and this cell did not run"
            )
            raise


def _runs_awaits(shell: Any) -> bool:
    # A top-level await runs on the kernel's own loop only with autoawait on asyncio
    # (ipykernel's default); otherwise the call would be a SyntaxError, or block.
    return bool(getattr(shell, "autoawait", False)) and (
        getattr(shell, "loop_runner", None) is _asyncio_runner
    )


def _waiting_before(source: str, first: ast.stmt, call: str) -> str | None:
    # ``source`` with ``call`` run before its first statement, or None if that cannot
    # be done without changing what the cell means.
    candidates = []
    if not isinstance(first, _COMPOUND) and first.col_offset == 0:
        start = _line_start(source, first.lineno)
        candidates.append(f"{source[:start]}{call}; {source[start:]}")
    candidates.append(f"{call}\n{source}")
    for candidate in candidates:
        try:
            tree = ast.parse(candidate)
        except SyntaxError:
            continue
        if len(tree.body) == 0 or not _is_call(tree.body[0]):
            continue
        return candidate
    return None


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


def register(shell: Any, sender: CellSender) -> None:
    """Add a :class:`WaitForVariables` for ``sender`` to ``shell``, in place of one an
    earlier load of the extension added."""
    post = getattr(shell, "input_transformers_post", None)
    if post is None:
        return
    post[:] = [t for t in post if type(t).__name__ != WaitForVariables.__name__]
    post.append(WaitForVariables(shell, sender))
