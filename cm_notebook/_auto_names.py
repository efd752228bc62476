"""Branch names the package chooses itself, chosen again when another process took them.

An edit's fork (``main-edit-1``) or a fan-out's arm (``main-temperature-0.7``) gets the
first name no branch has, as this process reads the context. Another process doing the
same at the same moment reads the same branches and picks the same name; whichever
creates it second is refused (``BranchExistsError``, or ``BusyError`` while the other
one holds the name's claim). The user never gave that name, so the refusal is no error
of theirs: the next free name is chosen instead, as it would have been in one process.
A name the user gave is never replaced.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .errors import BranchExistsError, BusyError, CMError
from .ids import branch_name_key

__all__ = ["AUTO_NAME_TRIES", "NamePicks", "made_under_free_name"]

T = TypeVar("T")

#: How many automatically chosen names in a row may turn out taken before giving up
#: (each means another process created a branch of the same stem meanwhile).
AUTO_NAME_TRIES = 20


class NamePicks:
    """The names chosen for one new branch that turned out taken at its creation.

    Args:
        what: what the branch is for, for the error if every try is taken
            (e.g. ``"the edit"``).
    """

    def __init__(self, what: str) -> None:
        self._what = what
        self._refused: set[str] = set()  # by look, as creating a branch compares names

    def refuses(self, name: str) -> bool:
        """Whether ``name`` (or one that looks like it) was found taken already: the
        branches read may not show it yet (its creator holds its claim)."""
        return branch_name_key(name) in self._refused

    def taken(self, name: str, exc: CMError) -> None:
        """``name`` was refused at creation (``exc``) because another process took it:
        it is not chosen again. Raises BusyError once too many were taken in a row."""
        self._refused.add(branch_name_key(name))
        if len(self._refused) >= AUTO_NAME_TRIES:
            raise BusyError(
                f"other processes took each of the {len(self._refused)} branch names "
                f"chosen for {self._what} (the last {name!r}) as it was being created; "
                "try again, or give the branch a name yourself (branch=...)"
            ) from exc


def made_under_free_name(
    what: str,
    pick: Callable[[Callable[[str], bool]], str],
    make: Callable[[str], T],
    refusals: tuple[type[CMError], ...] = (BranchExistsError,),
) -> T:
    """``make(name)`` for the name ``pick`` chooses, chosen again each time another
    process turns out to have created it first.

    ``pick(refused)`` returns a free name that ``refused`` does not refuse (the names
    found taken so far, which the branches read may not show yet). ``make`` creates
    the branch and nothing more; ``refusals`` are what it raises when the name is
    taken (BusyError too if it takes the name's claim first: the other process holds
    it while creating). ``what`` names the branch's purpose for the error if every
    try is taken (see :meth:`NamePicks.taken`). Not for a name the user gave: its
    refusal is theirs.
    """
    picks = NamePicks(what)
    while True:
        name = pick(picks.refuses)
        try:
            return make(name)
        except refusals as exc:
            picks.taken(name, exc)
