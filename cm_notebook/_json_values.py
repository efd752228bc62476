"""Values a caller gives to be stored as JSON, checked where they come in.

Message metadata, provider options, generation parameters and edited tool arguments
are stored as JSON. A value JSON cannot hold (an ``object()``, a set, a ``numpy.int64``,
bytes, a datetime) either fails deep in the store's encoder, after the caller's
arguments were accepted, or is turned silently into something else (a set into a
list, a datetime into a string). Refused here instead, before anything is written,
with the place of the value and its type. An int key is kept: JSON writes it as its
digits (``{50256: -100}`` as ``{"50256": -100}``), as ``json.dumps`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from ._json import MAX_DEPTH, non_finite_at
from ._validation_errors import first_error
from .errors import InvalidInputError
from .model import MessageMetadata

__all__ = ["JSON_VALUES", "checked_message_metadata", "refuse_unstorable", "unstorable_at"]

#: What to give instead, said in every refusal.
JSON_VALUES = "give JSON values (str, int, float, bool, None, lists and dicts of them)"

# Subclasses count (a bool, an IntEnum, numpy.float64): JSON writes them as their base.
_SCALARS = (str, int, float, type(None))


def _kind(value: object) -> str:
    # "an object", "a set", "a numpy.int64": the type as the user would write it.
    cls = type(value)
    name = (
        cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    )
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def unstorable_at(value: object, name: str) -> str | None:
    """Why ``value`` cannot be stored as JSON as it is, or None if it can.

    The sentence names the place as Python reaches it from ``name``
    (``metadata['runs'][2]``) and the type found there. Only ``str``, ``int``,
    ``float``, ``bool``, ``None``, lists (and tuples) and dicts with string keys are
    JSON (int keys too, written as their digits). Walks with an explicit stack and
    stops past :data:`~cm_notebook._json.MAX_DEPTH` levels, so a value that holds
    itself is refused rather than walked forever.
    (NaN and the infinities are floats: see :func:`cm_notebook._json.non_finite_at`.)
    """
    stack: list[tuple[object, str, int]] = [(value, name, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, _SCALARS):
            continue
        if depth >= MAX_DEPTH:
            return (
                f"{name} is nested deeper than {MAX_DEPTH} levels (or holds itself), which "
                f"cannot be stored as JSON: {JSON_VALUES}"
            )
        if isinstance(item, dict):
            children: list[tuple[object, str, int]] = []
            for key, child in item.items():
                # An int key is written as its digits, as json.dumps writes it: a
                # token-id map (logit_bias={50256: -100}) is how such dicts are written.
                if not isinstance(key, str) and (type(key) is bool or not isinstance(key, int)):
                    return (
                        f"{where} has the key {key!r:.60}, {_kind(key)}; JSON keys are "
                        f"strings: {JSON_VALUES}"
                    )
                children.append((child, f"{where}[{key!r}]", depth + 1))
            stack.extend(reversed(children))  # the first key is reported first
        elif isinstance(item, (list, tuple)):
            stack.extend(
                (item[index], f"{where}[{index}]", depth + 1)
                for index in range(len(item) - 1, -1, -1)
            )
        else:
            return f"{where} is {_kind(item)}, which cannot be stored as JSON: {JSON_VALUES}"
    return None


def refuse_unstorable(
    value: object, name: str, error: type[InvalidInputError] = InvalidInputError
) -> None:
    """Raise ``error`` (an :class:`InvalidInputError`) saying :func:`unstorable_at`'s
    sentence if ``value`` cannot be stored as JSON as it is; the one check for every
    entry point that stores what a caller gives."""
    problem = unstorable_at(value, name)
    if problem is not None:
        raise error(problem)


def checked_message_metadata(metadata: Mapping[str, Any] | None) -> MessageMetadata:
    """The ``metadata=`` of :meth:`~cm_notebook.session.ContextSession.send` (and of a
    fan-out's arms) as stored with the user message, checked before anything is written.

    Raises:
        InvalidInputError: not a mapping, a value JSON cannot store (named by its place
            and type), or a known key of the wrong type.
    """
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidInputError(
            f"metadata must be a mapping of names to values, got {type(metadata).__name__}"
        )
    given = dict(metadata or {})
    refuse_unstorable(given, "metadata")
    where = non_finite_at(given)
    if where is not None:  # JSON has no NaN: it would be stored as null
        raise InvalidInputError(
            f"metadata {where} is NaN or an infinity, which JSON cannot store; "
            "give a finite number, None or a string"
        )
    try:
        return MessageMetadata.model_validate(given)
    except ValidationError as exc:
        raise InvalidInputError(f"metadata: {first_error(exc)}") from exc
    except ValueError as exc:
        raise InvalidInputError(f"metadata: {exc}") from exc
