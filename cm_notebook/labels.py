"""Branch labels and the pinned baseline, for :class:`~cm_notebook.session.ContextSession`.

Labels are short ``key: value`` texts on a :class:`~cm_notebook.model.Branch`, stored
in the context's metadata (see :func:`~cm_notebook.model.validate_labels`). The
baseline is the branch labelled ``baseline: "true"``: one at a time, kept on disk, so
it is still pinned after a restart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from . import events as ev
from ._unicode import refuse_control_characters
from .errors import InvalidInputError
from .ids import validate_branch_name
from .model import Branch, ContextMetadata, validate_labels

if TYPE_CHECKING:
    from .session import ContextSession

__all__ = ["BASELINE_LABEL", "baseline_of", "pin_baseline", "set_labels", "update_labels"]

#: The label that marks the pinned baseline (value ``"true"``).
BASELINE_LABEL = "baseline"


def set_labels(session: ContextSession, name: str, labels: Mapping[str, str]) -> Branch:
    """Replace the labels of branch ``name`` (validated), announce it, return the branch."""
    try:
        checked = validate_labels(labels)
    except ValueError as exc:
        raise InvalidInputError(f"labels of branch {name!r}: {exc}") from exc
    updated = session._io.call(session._store.update_branch(session.id, name, labels=checked))
    session._publish(ev.BranchUpdated(branch=name, head=updated.head, changed=["labels"]))
    return updated


def update_labels(
    session: ContextSession, branch: str, changes: Mapping[str, str | None]
) -> Branch:
    """Set the labels in ``changes`` on ``branch`` (None removes one).

    The ``baseline`` label is refused: :func:`pin_baseline` sets it, keeping one
    baseline. The keys and values given are refused if they hold control characters
    (labels are shown in listings and terminals); the labels already on the branch are
    kept as they are. The change is merged with the branch's labels as stored when it is
    written, so labels another process set meanwhile are kept too.
    """
    name = validate_branch_name(branch)
    if BASELINE_LABEL in changes:
        # Set here, it could mark a second branch as the baseline: pinning unpins the
        # previous one in the same write.
        raise InvalidInputError(
            f"the label {BASELINE_LABEL!r} marks the pinned baseline, one branch at a time, "
            f"and is not set with label(); use session.pin_baseline({name!r}) to make "
            f"{name!r} the baseline, or session.pin_baseline(None) to unpin it"
        )
    for key, value in changes.items():
        if isinstance(key, str):
            _refuse_controls(key, f"the label key {key!r:.40}")
        if isinstance(value, str):  # the value is not quoted: it could be a secret
            _refuse_controls(value, f"the label {key!r:.40}")
    session._head(name)  # BranchNotFoundError for an unknown branch
    _change(session, {name: dict(changes)})
    return session.metadata.branches[name]


def _change(
    session: ContextSession,
    changes: dict[str, dict[str, str | None]],
    unique: str | None = None,
) -> None:
    # One write, merged under the context's lock; each branch changed is announced.
    changed = session._io.call(session._store.change_labels(session.id, changes, unique=unique))
    for name, branch in changed.items():
        session._publish(ev.BranchUpdated(branch=name, head=branch.head, changed=["labels"]))


def _refuse_controls(text: str, what: str) -> None:
    # An escape sequence or a NUL would garble every listing and terminal that shows it;
    # a line separator or a bidi override would break or reorder the one line it is.
    refuse_control_characters(text, what, layout=True, advice=": a label is one line of plain text")


def baseline_of(metadata: ContextMetadata) -> str | None:
    """The pinned baseline branch of a context, or None."""
    for name, found in metadata.branches.items():
        if found.labels.get(BASELINE_LABEL) == "true":
            return name
    return None


def pin_baseline(session: ContextSession, branch: str | None) -> str | None:
    """Label ``branch`` as the baseline and unlabel any other (None: unpin all), in one
    write: two processes pinning at once leave exactly one baseline."""
    name = None if branch is None else validate_branch_name(branch)
    if name is not None:
        session._head(name)  # BranchNotFoundError for an unknown branch
    changes: dict[str, dict[str, str | None]] = {}
    if name is not None:
        changes[name] = {BASELINE_LABEL: "true"}
    _change(session, changes, unique=BASELINE_LABEL)
    return name
