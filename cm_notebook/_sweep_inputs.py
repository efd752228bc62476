"""A sweep's prompt filled from one input row, refusing a value that is missing.

A DataFrame marks a missing value as ``NaN`` (or ``None``, ``pd.NA``, ``NaT``), and a
list of rows may hold ``None``: filled into the template as text, the model would be
asked "Capital of nan?" and every record would look like an answer to a real question.
:func:`refuse_missing` refuses such a row when the sweep is planned, before anything is
written, naming the row, the column and the value, as for any other definition error.
Only the columns the template uses are looked at: other columns are recorded, never
sent. A value that merely reads like one (the text ``"nan"``, the number 0) is a value.
"""

from __future__ import annotations

import math
import string
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidInputError
from .params import validate_text

__all__ = ["fill", "filled", "is_missing", "refuse_missing"]


class _Template(string.Formatter):
    # ``{name}`` fields only: a sweep's template is data, so no attribute or index
    # access (``{row.__class__}``) and no positional fields.
    def get_field(self, field_name: str, args: Any, kwargs: Mapping[str, Any]) -> Any:
        if not field_name.isidentifier():
            raise InvalidInputError(
                f"{{{field_name}}} in a sweep prompt: use plain {{name}} fields naming "
                "input columns; write {{ and }} for literal braces"
            )
        if field_name not in kwargs:
            raise InvalidInputError(
                f"{{{field_name}}} in a sweep prompt: the input rows have no "
                f"{field_name!r} (they have {sorted(kwargs)}); write {{{{{field_name}}}}} "
                "for literal braces"
            )
        return kwargs[field_name], field_name


def fill(template: str, row: Mapping[str, Any]) -> str:
    """``template`` with its ``{name}`` fields filled from ``row``."""
    try:
        return _Template().vformat(template, (), row)
    except InvalidInputError:
        raise
    except (ValueError, TypeError) as exc:  # a lone brace, a bad format spec
        raise InvalidInputError(
            f"cannot fill in the sweep prompt's {{...}} fields: {exc}. Write {{{{ and }}}} "
            "for literal braces"
        ) from exc


def is_missing(value: object) -> bool:
    """Whether ``value`` marks a missing value: None, a float NaN (numpy's too), or
    pandas' ``NA`` / ``NaT`` (looked at only when pandas is loaded)."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    pandas = sys.modules.get("pandas")
    if pandas is None or isinstance(value, (str, bytes, int)):
        return False
    try:
        return pandas.api.types.is_scalar(value) and bool(pandas.isna(value))
    except (TypeError, ValueError):  # an object pandas cannot tell: a value
        return False


def _fields(template: str) -> list[str]:
    # The names of the template's top-level {name} fields, in order; none for a template
    # that cannot be parsed (filling it says what is wrong).
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:
        return []
    return [name for _text, name, _spec, _conversion in parsed if name]


def refuse_missing(templates: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> None:
    """Refuse the first input row with a missing value (:func:`is_missing`) in a column
    that one of ``templates`` uses, naming the prompt, the row, the column and what to
    do (before anything is written)."""
    for p, template in enumerate(templates):
        for name in dict.fromkeys(_fields(template)):
            for i, row in enumerate(rows):
                value = row.get(name)
                if name in row and is_missing(value):
                    raise InvalidInputError(
                        f"prompt {p} filled with input row {i}: its {name!r} has no value "
                        f"({value!r}: missing), which would be sent as the text "
                        f"{str(value)!r}. Fill it in or leave the row out, e.g. "
                        f"inputs.dropna(subset=[{name!r}]) or "
                        f"inputs.fillna({{{name!r}: ...}}){_as_floats(name, rows)}"
                    )


def _as_floats(name: str, rows: Sequence[Mapping[str, Any]]) -> str:
    # Pandas reads a column of integers with a missing value as floats (1990 becomes
    # 1990.0, and would be sent so): said when every value given in it is one.
    values = [row.get(name) for row in rows if not is_missing(row.get(name))]
    if not values or not all(isinstance(v, float) and v.is_integer() for v in values):
        return ""
    return (
        f"; its other values ({values[0]!r}, ...) are integers read as floats, as pandas "
        "reads a column of integers with a missing value: once it is complete, convert "
        f"it back, e.g. inputs.astype({{{name!r}: int}}), or they are sent as {values[0]!r}"
    )


def filled(template: str, row: Mapping[str, Any], prompt: int, row_index: int | None) -> str:
    """``template`` filled from ``row`` (:func:`fill`), as a message a send would take;
    an InvalidInputError names the prompt and the row that made it not."""
    try:
        return validate_text(fill(template, row))
    except InvalidInputError as exc:
        raise InvalidInputError(
            f"prompt {prompt} filled with input row {row_index}: {exc}"
        ) from None
