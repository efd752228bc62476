"""The exception tree drawn in ``cm_notebook.errors``' docstring is the real one."""

from __future__ import annotations

import re

import pytest

from cm_notebook import errors

#: A tree line: its drawing, the class name, and the "(also X)" notes on it or the line
#: below (a long line continues there).
_NODE = re.compile(r"^(?P<lead>[\s│├└─]*)(?P<name>[A-Z]\w*Error)\b(?P<rest>.*)$")
_ALSO = re.compile(r"\(also (\w+)\)")


def _drawn() -> dict[str, tuple[str | None, set[str]]]:
    # class name -> (its parent in the drawing, the other bases its lines name)
    assert errors.__doc__ is not None
    lines = errors.__doc__.splitlines()
    drawn: dict[str, tuple[str | None, set[str]]] = {}
    parents: list[tuple[int, str]] = []  # (depth, name) of the open ancestors
    for number, line in enumerate(lines):
        node = _NODE.match(line)
        if node is None or not line.startswith("    "):
            continue
        depth = len(node.group("lead"))
        while parents and parents[-1][0] >= depth:
            parents.pop()
        notes = set(_ALSO.findall(node.group("rest")))
        following = lines[number + 1] if number + 1 < len(lines) else ""
        if _NODE.match(following) is None:
            notes |= set(_ALSO.findall(following))
        drawn[node.group("name")] = (parents[-1][1] if parents else None, notes)
        parents.append((depth, node.group("name")))
    return drawn


def test_every_public_error_is_drawn() -> None:
    public = {name for name in errors.__all__ if name.endswith("Error")}
    assert public <= set(_drawn())


@pytest.mark.parametrize("name", sorted(_drawn()))
def test_each_drawn_error_has_the_bases_the_drawing_gives(name: str) -> None:
    parent, also = _drawn()[name]
    cls = getattr(errors, name)
    # A private intermediate class (e.g. the KeyError lookups) stands for its own bases.
    bases: set[str] = set()
    for base in cls.__bases__:
        if base.__name__.startswith("_"):
            bases |= {b.__name__ for b in base.__bases__}
        else:
            bases.add(base.__name__)
    expected = ({parent} if parent is not None else {"Exception"}) | also
    assert bases == expected
