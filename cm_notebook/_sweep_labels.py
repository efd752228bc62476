"""A sweep's name and the labels it puts on its cells' branches, checked before
anything is written.

A sweep's name starts its cells' branch names: :func:`check_name` holds it to the rule
of branch names, shorter and without spaces, and says the sweep's rule when it refuses
one. The name and its variants' labels become labels of every cell's branch:
:func:`check_labels` checks them by the rule branch labels follow
(:func:`~cm_notebook.model.validate_labels`: one short line, nothing that looks like a
secret) when the sweep is planned.
"""

from __future__ import annotations

from ._unicode import control_characters
from .errors import InvalidIdError, InvalidInputError
from .ids import validate_new_branch_name
from .model import MAX_LABEL_VALUE, validate_labels
from .redact import find_secret

__all__ = ["MAX_SWEEP_NAME", "check_labels", "check_name"]

#: The longest sweep name (cells' branch names add ``-p0-i0-v0-r0`` and more).
MAX_SWEEP_NAME = 60


def check_labels(name: str, labels: list[str]) -> None:
    """Refuse a sweep name or variant label that cannot label the cells' branches:
    refused before any cell is written, rather than failing each of its cells after
    the good variants' cells were sent."""

    def refused(key: str, value: str) -> str:
        # Asked as validate_labels asks it, so a refused secret is never echoed (errors
        # end up in saved notebooks).
        if find_secret({key: value}) is not None:
            return "it looks like a secret (a key or token), and secrets are never stored"
        found = control_characters(value, layout=True)
        if found and not control_characters(value.replace("\n", ""), layout=True):
            return f"{value[:60]!r} is not one line of at most {MAX_LABEL_VALUE} characters"
        if found:
            return f"it holds control characters ({', '.join(found[:5])}), which garble lists"
        return f"{value[:60]!r} is not one line of at most {MAX_LABEL_VALUE} characters"

    try:
        validate_labels({"sweep": name})
    except ValueError as exc:
        raise InvalidInputError(
            f"sweep name refused: {refused('sweep', name)}; give the sweep another name"
        ) from exc
    for index, label in enumerate(labels):
        try:
            validate_labels({"variant": label})
            if control_characters(label, layout=True):  # C1 too, and U+2028, U+202E...
                raise ValueError(label)
        except ValueError as exc:
            raise InvalidInputError(
                f"variant {index}: its label cannot label its cells' branches: "
                f"{refused('variant', label)}. Give the variant a 'label' of one line of at most "
                f"{MAX_LABEL_VALUE} characters, without keys or tokens"
            ) from exc


#: What a sweep name may be, said when one is refused.
_SWEEP_NAME_RULE = (
    f"Sweep names are 1-{MAX_SWEEP_NAME} characters without spaces: letters, digits, "
    "'_', '-', '.' and '+' (its cells' branches are named after it)."
)


def check_name(name: object) -> None:
    """Refuse a sweep name that cannot start its cells' branch names: not a branch
    name (:func:`~cm_notebook.ids.validate_new_branch_name`), longer than
    :data:`MAX_SWEEP_NAME` characters or holding a space. The error says the sweep's
    rule, not a branch name's (which allows spaces and 100 characters)."""
    if not isinstance(name, str):
        raise InvalidIdError(
            f"sweep name must be a string, got {type(name).__name__}. {_SWEEP_NAME_RULE}"
        )
    shown = name if len(name) <= 60 else name[:57] + "..."
    if not name or len(name) > MAX_SWEEP_NAME:
        length = (
            f"it has {len(name)} characters, at most {MAX_SWEEP_NAME}" if name else "it is empty"
        )
        raise InvalidIdError(f"sweep name {shown!r} is not valid: {length}. {_SWEEP_NAME_RULE}")
    if any(char.isspace() for char in name):
        raise InvalidIdError(
            f"sweep name {shown!r} is not valid: it has a space. {_SWEEP_NAME_RULE}"
        )
    try:
        validate_new_branch_name(name)
    except InvalidIdError as exc:
        # The branch rule's reason (a character not allowed, a mix of scripts...),
        # without its hint of what a branch name may be, which a sweep name is not.
        why = str(exc).split(". Branch names are ")[0].removeprefix("branch name ")
        raise InvalidIdError(f"sweep name {why}. {_SWEEP_NAME_RULE}") from None
