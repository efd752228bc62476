"""The labels a sweep puts on its cells' branches, checked before anything is written.

A sweep's name and its variants' labels become labels of every cell's branch:
:func:`check_labels` checks them by the rule branch labels follow
(:func:`~cm_notebook.model.validate_labels`: one short line, nothing that looks like a
secret) when the sweep is planned.
"""

from __future__ import annotations

from ._unicode import control_characters
from .errors import InvalidInputError
from .model import MAX_LABEL_VALUE, validate_labels
from .redact import find_secret

__all__ = ["check_labels"]


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
