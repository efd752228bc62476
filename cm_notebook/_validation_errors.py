"""Pydantic's validation errors said in one line: where, what, and how many more.

Its own text runs over several lines and ends in a link to its documentation: fine for
a developer of the model, noise in an error a user reads.
"""

from __future__ import annotations

from pydantic import ValidationError

__all__ = ["first_error"]


def first_error(exc: ValidationError, top: str = "(top level)") -> str:
    """``where: what`` of the first error, with how many more there are (``top`` names
    the place when the error is about the whole value)."""
    errors = exc.errors()
    if not errors:
        return str(exc)
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or top
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"
