"""Who gave each part of a rating: a person (by :meth:`rate`) or a scoring function.

The rules are in :mod:`cm_notebook.scores` (its docstring); this is how
:func:`~cm_notebook.scores.merged` applies them to a score being merged, a dict of
:class:`~cm_notebook.scores.Score`'s fields. ``rating_sources`` names the function that
set ``thumbs``, ``score``, ``note`` or ``by``; ``tag_sources`` the function that added
each tag. A field or tag named in neither is a person's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["RATED_FIELDS", "SOURCED_FIELDS", "rate_into"]

#: The rating fields a scoring function may set, besides tags.
RATED_FIELDS = ("thumbs", "score", "note")
#: The keys ``rating_sources`` may have.
SOURCED_FIELDS = frozenset({*RATED_FIELDS, "by"})


def rate_into(
    data: dict[str, Any],
    given: Mapping[str, object],
    tags: Iterable[str],
    *,
    source: str | None,
    rerun: Iterable[str] = (),
) -> None:
    """Merge a rating into ``data``: ``given`` (``thumbs``, ``score``, ``note``, ``by``;
    None: not given) and ``tags``, from the function ``source`` (None: a person).

    First what the functions in ``rerun`` (those that ran again or failed) set before
    is dropped; then a person's values replace any, and a function's fill only what no
    person set. ``by`` names the person; if none rated, the function that rated last.
    """
    fields: dict[str, str] = dict(data.get("rating_sources") or {})
    owners: dict[str, str] = dict(data.get("tag_sources") or {})
    stale = set(rerun)
    for field in [f for f, fn in fields.items() if fn in stale and f != "by"]:
        data[field] = None
        del fields[field]
    data["tags"] = [t for t in data.get("tags", []) if owners.get(t) not in stale]
    owners = {tag: fn for tag, fn in owners.items() if fn not in stale}

    for field, value in given.items():
        if value is None:
            continue
        if source is None:  # a person's: it replaces whoever's was there
            data[field] = value
            fields.pop(field, None)
        elif field != "by" and (data.get(field) is None or field in fields):
            data[field] = value  # a function's fills only what no person set
            fields[field] = source
    present = set(data["tags"])
    for tag in tags:
        key = tag.strip()  # as the score keeps it
        if source is None:
            owners.pop(key, None)  # a person's tag now, whoever added it first
        elif key not in present:
            owners[key] = source
        if key not in present:
            data["tags"].append(tag)
            present.add(key)
    _settle_by(data, fields, owners, source)
    data["rating_sources"] = fields
    data["tag_sources"] = owners


def _settle_by(
    data: dict[str, Any], fields: dict[str, str], owners: dict[str, str], writer: str | None
) -> None:
    # ``by`` is a person's unless ``fields["by"]`` names the function that set it.
    if data.get("by") is not None and "by" not in fields:
        return  # a person's name: a function never replaces it
    by_hand = any(data.get(f) is not None and f not in fields for f in RATED_FIELDS) or any(
        tag.strip() not in owners for tag in data["tags"]
    )
    rating = {fn for field, fn in fields.items() if field != "by"} | set(owners.values())
    if by_hand or not rating:
        # A person rated without giving a name (a function's would credit their rating
        # to it), or nothing a function set is left.
        data["by"] = None
        fields.pop("by", None)
        return
    if writer in rating:
        owner = writer
    elif fields.get("by") in rating:
        owner = fields["by"]
    else:
        owner = min(rating)
    data["by"] = owner
    fields["by"] = owner
