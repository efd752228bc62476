"""Which signals a subscriber wants: kinds checked by name, and the filter that hands a
subscriber only the signals of its branch and kinds (see :mod:`cm_notebook.events`)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from typing import TypeAlias

from .errors import InvalidInputError
from .signals import SIGNAL_KINDS, Event

__all__ = ["EventCallback", "check_kinds", "filtered"]

EventCallback: TypeAlias = Callable[[Event], None]
"""A synchronous subscriber: called inline by :meth:`EventBus.publish`."""


def check_kinds(kinds: Iterable[str] | None) -> frozenset[str] | None:
    """The kinds asked for as a set (None: all), each checked against the known kinds."""
    if kinds is None:
        return None
    if isinstance(kinds, str):
        kinds = [kinds]
    wanted = frozenset(kinds)
    for kind in wanted:
        if kind not in SIGNAL_KINDS:
            close = difflib.get_close_matches(str(kind), SIGNAL_KINDS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise InvalidInputError(
                f"unknown signal kind {kind!r}{hint}; the kinds are {sorted(SIGNAL_KINDS)}"
            )
    return wanted


def filtered(
    callback: EventCallback, branch: str | None, kinds: frozenset[str] | None
) -> EventCallback:
    """``callback``, called only with signals of ``branch`` (None: any) and ``kinds``."""

    def deliver(event: Event) -> None:
        if branch is not None and event.branch != branch:
            return
        if kinds is not None and event.type not in kinds:
            return
        callback(event)

    return deliver
