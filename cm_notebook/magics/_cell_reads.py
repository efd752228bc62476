"""What a cell's code reads or replaces of the kernel's variables (see :mod:`._var_reads`).

A cell counts as naming a variable when its code reads it, binds it (``x = ...``,
``def x``, ``class x``, ``import ... as x``, ``global x``...), deletes it (``del x``,
``%xdel x``), or calls a function defined in the kernel whose code reads it (followed
through the functions that one calls). Code that magics run as Python counts too:
``%time`` / ``%timeit`` / ``%prun`` lines (after their options) and ``%%time`` /
``%%timeit`` / ``%%capture`` / ``%%prun`` cells, as IPython itself transforms them;
``answer?``; and ``$answer`` or ``{answer.upper()}`` where IPython fills them in from
the kernel's variables: in a shell command (``!echo $answer``) and in a magic's line
(``%env KEY=$answer``, ``%%writefile {answer}.txt``, ``%%bash -s "$answer"``), unless
the magic asks IPython not to (as ``%cm`` does). ``%reset`` and ``%reset_selective``
name every variable; ``%cm export --format json`` is noted apart (it reads the
conversation, not a variable), and so is ``%cm use`` / ``%cm new`` (which conversation).
"""

from __future__ import annotations

import ast
import re
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from IPython.core.error import UsageError
from IPython.utils.text import DollarFormatter

from . import _args as a
from ._parse import parse_args, split_words

__all__ = ["CellReads", "cell_reads"]

# Magics that run their code (a cell's body, or the rest of the line after the
# magic's options) as Python in the kernel's namespace.
_PYTHON_CODE = frozenset({"time", "timeit", "capture", "prun"})

# Magics that delete variables by name pattern: they touch every variable.
_RESETS = frozenset({"reset", "reset_selective"})

# Magics that look at an object by name: what ``answer?`` and ``answer??`` become.
_INSPECTS = frozenset({"pinfo", "pinfo2", "pdef", "pdoc", "psource", "pfile"})

# How IPython reads ``$name`` and ``{expression}`` in a shell command or a magic's line
# (``InteractiveShell.var_expand``).
_FIELDS = DollarFormatter()
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")

# How deep magics within magics are followed (``%time %time x``), and how many of a
# line's leading words may be a magic's options.
_MAX_DEPTH = 4
_MAX_OPTION_WORDS = 12

_SPACE = re.compile(r"\s+")


@dataclass
class CellReads:
    """What a cell's code reads or replaces."""

    #: The variables it names (reads, binds or deletes).
    names: set[str] = field(default_factory=set)
    #: Whether it deletes variables by pattern (``%reset``): every variable counts.
    every_variable: bool = False
    #: Whether it exports the current conversation as JSON (``%cm export -f json``).
    exports_json: bool = False
    #: Whether it makes another context current (``%cm use``, ``%cm new``).
    changes_context: bool = False

    def add(self, other: CellReads) -> None:
        """Count what ``other`` reads too."""
        self.names |= other.names
        self.every_variable = self.every_variable or other.every_variable
        self.exports_json = self.exports_json or other.exports_json
        self.changes_context = self.changes_context or other.changes_context


def cell_reads(
    tree: ast.AST,
    namespace: Mapping[str, Any],
    transform: Callable[[str], str],
    expands: Callable[[str, bool], bool] | None = None,
    depth: int = 0,
) -> CellReads:
    """What the code of ``tree`` reads or replaces (see the module docstring).

    ``namespace`` is the kernel's (for the functions a cell calls); ``transform`` turns
    a magic's code into Python as IPython does (its static transforms, so ``%`` lines
    in that code become calls too); ``expands(magic, is_cell_magic)`` tells whether
    IPython fills in ``$name`` and ``{expression}`` in that magic's line (by default,
    every magic's line counts).
    """
    reads = CellReads()
    for node in ast.walk(tree):
        reads.names |= _names_of(node) | _expanded_in_shell_command(node)
        call = _magic_call(node)
        if call is None:
            continue
        magic, code, line = call
        if expands is None or expands(magic, line is not None):
            reads.names |= expanded_names(code if line is None else line)
        if magic in _RESETS:
            reads.every_variable = True
        elif magic == "xdel":
            reads.names |= set(code.split())
        elif magic in _INSPECTS:
            reads.names |= set(_IDENTIFIER.findall(code)[:1])  # `answer?`, `answer.upper??`
        elif magic == "cm" and line is None:
            reads.exports_json = reads.exports_json or _exports_json(code)
            reads.changes_context = reads.changes_context or _changes_context(code)
        elif magic in _PYTHON_CODE and depth < _MAX_DEPTH:
            # A line magic's code comes after its options; a cell magic's line may hold
            # code too (``%%timeit`` runs it as setup).
            parts = [_parsed(transform, code)] if line is not None else []
            parts.append(_after_options(transform, line if line is not None else code))
            for inner in parts:
                if inner is not None:
                    reads.add(cell_reads(inner, namespace, transform, expands, depth + 1))
    reads.names |= _read_by_functions(reads.names, namespace)
    return reads


def _names_of(node: ast.AST) -> set[str]:
    # The variable names ``node`` reads, binds or deletes at the cell's top level (a
    # function's own arguments are its own).
    if isinstance(node, ast.Name):
        return {node.id}
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return {node.name}
    if isinstance(node, ast.alias):
        return {node.asname or node.name.split(".")[0]}
    if isinstance(node, (ast.Global, ast.Nonlocal)):
        return set(node.names)
    if isinstance(node, ast.ExceptHandler) and node.name:
        return {node.name}
    name = getattr(node, "name", None) or getattr(node, "rest", None)  # match patterns
    if isinstance(node, ast.pattern) and isinstance(name, str):
        return {name}
    return set()


def _expanded_in_shell_command(node: ast.AST) -> set[str]:
    # The variables ``get_ipython().system('echo $answer')`` (``!echo $answer``) or
    # ``getoutput(...)`` (``x = !...``) fills in.
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("system", "getoutput")
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    ):
        return set()
    return expanded_names(node.args[0].value)


def expanded_names(text: str) -> set[str]:
    """The variables IPython reads to fill in ``$name`` and ``{expression}`` in
    ``text`` (a shell command, a magic's line); none where it would leave the text
    as it is (``$$``, ``{{``, a field that does not parse)."""
    names: set[str] = set()
    try:
        expressions = [found for _, found, _, _ in _FIELDS.parse(text) if found]
    except ValueError:  # unbalanced braces: IPython leaves the whole text alone
        return names
    for text_of in expressions:
        try:
            expression = ast.parse(text_of.strip(), mode="eval")
        except (SyntaxError, ValueError, RecursionError):
            names |= set(_IDENTIFIER.findall(text_of)[:1])  # a field that is no expression
            continue
        names |= {node.id for node in ast.walk(expression) if isinstance(node, ast.Name)}
    return names


def _read_by_functions(names: set[str], namespace: Mapping[str, Any]) -> set[str]:
    # The global names read by the kernel's functions that ``names`` refer to, and by
    # the functions those read, and so on.
    found: set[str] = set()
    seen: set[int] = set()
    todo = list(names)
    while todo:
        value = namespace.get(todo.pop())
        if not isinstance(value, types.FunctionType) or id(value) in seen:
            continue
        seen.add(id(value))
        if value.__globals__ is not namespace:
            continue  # a library's function reads its own module, not the kernel
        for name in _global_names(value.__code__):
            if name not in found:
                found.add(name)
                todo.append(name)
    return found


def _global_names(code: types.CodeType) -> Iterator[str]:
    # co_names of ``code`` and of the code nested in it (inner functions, lambdas,
    # comprehensions): a superset of the globals it reads (attributes count too).
    yield from code.co_names
    for constant in code.co_consts:
        if isinstance(constant, types.CodeType):
            yield from _global_names(constant)


def _magic_call(node: ast.AST) -> tuple[str, str, str | None] | None:
    # (magic, code, line) of ``get_ipython().run_line_magic('time', CODE)`` (line None)
    # or ``...run_cell_magic('time', LINE, CODE)``: what IPython makes of ``%time CODE``
    # and of a ``%%time`` cell.
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    kind, count = node.func.attr, len(node.args)
    if not ((kind == "run_cell_magic" and count == 3) or (kind == "run_line_magic" and count == 2)):
        return None
    values = [arg.value if isinstance(arg, ast.Constant) else None for arg in node.args]
    if not all(isinstance(value, str) for value in values):
        return None
    if kind == "run_line_magic":
        return str(values[0]), str(values[1]), None
    return str(values[0]), str(values[2]), str(values[1])


def _after_options(transform: Callable[[str], str], text: str) -> ast.Module | None:
    # The code after a magic's options (``-n1 -r1 f(x)`` -> ``f(x)``): the longest tail,
    # from a word on, that is Python once IPython has transformed it.
    starts = [0, *(m.end() for m in _SPACE.finditer(text))][:_MAX_OPTION_WORDS]
    for start in starts:
        tail = text[start:]
        tree = _parsed(transform, tail) if tail.strip() else None
        if tree is not None:
            return tree
    return None


def _parsed(transform: Callable[[str], str], code: str) -> ast.Module | None:
    # ``code`` as IPython would run it, parsed; None if it is not Python.
    try:
        python = transform(code)
    except Exception:  # not something IPython could run either
        return None
    try:
        return ast.parse(python)
    except (SyntaxError, ValueError, RecursionError):  # (null bytes; deep nesting)
        return None


def _changes_context(line: str) -> bool:
    # ``%cm use ...`` or ``%cm new ...``.
    return line.split(maxsplit=1)[:1] in (["use"], ["new"])


def _exports_json(line: str) -> bool:
    # ``%cm export ... --format json``.
    try:
        words = split_words(line, a.ExportArgs.USAGE)
        if words[:1] != ["export"]:
            return False
        return parse_args(a.ExportArgs, words[1:]).format == "json"
    except UsageError:
        return False  # the magic says what is wrong when it runs
