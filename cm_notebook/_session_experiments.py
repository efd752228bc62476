"""Experiments on a session: branch labels, a pinned baseline, sweeps, replays and
counterfactual edits.

:class:`ExperimentMethods` is a base of :class:`~cm_notebook.session.ContextSession`;
its methods are public API of ``ContextSession`` and stay thin: the work is done by
:mod:`cm_notebook.labels` (labels, the baseline), :mod:`cm_notebook.sweep` and
:mod:`cm_notebook.sweep_cells` (sweeps).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from . import labels as _labels
from .model import Branch
from .sweep import Sweep
from .sweep_cells import start_sweep

if TYPE_CHECKING:
    from .session import ContextSession

__all__ = ["ExperimentMethods"]


def _session(mixin: object) -> ContextSession:
    # The mixin is only ever a base of ContextSession.
    return cast("ContextSession", mixin)


class ExperimentMethods:
    """Labels, the baseline, sweeps, replays and counterfactual edits."""

    # -- labels and the baseline -------------------------------------------------------

    def label(
        self,
        branch: str,
        labels: Mapping[str, str | None] | None = None,
        /,
        **more: str | None,
    ) -> Branch:
        """Set labels on ``branch``: ``session.label("main", model="small", run="3")``.

        Labels are short ``key: value`` texts (keys of letters, digits, ``_ - .``) that
        a study attaches to a branch; they appear in ``session.tree()``, the branch
        view, and as ``label_<key>`` columns of the exported data. A value of None
        removes that label. Returns the updated branch.
        """
        return _labels.update_labels(_session(self), branch, {**dict(labels or {}), **more})

    def pin_baseline(self, branch: str | None) -> str | None:
        """Make ``branch`` the baseline that comparisons, replays and counterfactuals are
        measured against (None: no baseline); returns it.

        The baseline is the branch labelled ``baseline: "true"`` (stored, so it holds
        after a restart); pinning another branch unpins the previous one.
        """
        return _labels.pin_baseline(_session(self), branch)

    @property
    def baseline(self) -> str | None:
        """The pinned baseline branch (see :meth:`pin_baseline`), or None."""
        return _labels.baseline_of(_session(self).metadata)

    # -- sweeps ------------------------------------------------------------------------

    def sweep(
        self,
        prompts: str | Sequence[str],
        variants: Sequence[Any],
        *,
        inputs: Any = None,
        repeat: int = 1,
        concurrency: int = 4,
        name: str | None = None,
        progress: bool = True,
    ) -> Sweep:
        """Run every prompt against every variant, ``repeat`` times; returns at once.

        ``prompts`` is a prompt or a list; with ``inputs`` (a list of mappings or a
        DataFrame) each prompt is a template whose ``{name}`` fields are filled from
        each row. A variant is a mapping with optional ``label`` (how it is shown),
        ``provider``, ``system`` (its system prompt) and generation parameters
        (``temperature``, ``seed``, ``max_tokens``, ``model``..., flat or under
        ``params``), or a provider spec. Each cell (prompt x input x variant x repeat)
        is its own branch from the context's root, labelled ``sweep``, ``cell``,
        ``variant``, ``repeat`` and ``input``; at most ``concurrency`` run at once, with
        a progress bar unless ``progress=False``.

        ``await session.sweep(...)`` in a notebook, ``session.sweep(...).run()`` in a
        script. The sweep is named ``name`` (default: from its prompts, inputs and
        variants); running the same sweep again (also after a restart) skips the cells
        that ended in a complete reply and runs the others. See :mod:`cm_notebook.sweep`.
        """
        return start_sweep(
            _session(self),
            prompts,
            variants,
            inputs=inputs,
            repeat=repeat,
            concurrency=concurrency,
            name=name,
            progress=progress,
        )
