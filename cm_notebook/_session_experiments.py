"""Experiments on a session: fan-outs, branch labels, a pinned baseline, sweeps, replays
and counterfactual edits.

:class:`ExperimentMethods` is a base of :class:`~cm_notebook.session.ContextSession`;
its methods are public API of ``ContextSession`` and stay thin: the work is done by
:mod:`cm_notebook.fanout` (fan-outs), :mod:`cm_notebook.labels` (labels, the
baseline), :mod:`cm_notebook.sweep` and :mod:`cm_notebook.sweep_cells` (sweeps),
:mod:`cm_notebook.replay` (replays and counterfactual edits) and
:mod:`cm_notebook.turn_diff` (per-turn diffs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from . import labels as _labels
from .fanout import FanOut, start_fan_out
from .model import Branch
from .providers import Provider
from .providers.pool import ProviderLike
from .replay import Replay, compare_turns, start_counterfactual, start_replay
from .sweep import Sweep
from .sweep_cells import start_sweep
from .turn_diff import TurnComparison

if TYPE_CHECKING:
    from .session import ContextSession

__all__ = ["ExperimentMethods"]


def _session(mixin: object) -> ContextSession:
    # The mixin is only ever a base of ContextSession.
    return cast("ContextSession", mixin)


class ExperimentMethods:
    """Fan-outs, labels, the baseline, sweeps, replays and counterfactual edits."""

    def fan_out(
        self,
        text: str,
        variants: Sequence[str | Provider | Mapping[str, Any]],
        *,
        branch: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> FanOut:
        """Send ``text`` on one new branch per variant, concurrently; compare the replies.

        A variant is a provider spec, a Provider, or a mapping with optional
        ``provider``, ``branch`` (name), ``system`` (the arm's system prompt) and
        generation parameters, e.g. ``[{"temperature": 0}, {"temperature": 1.0}]`` or
        ``[{"system": "Answer in five words."}, {"system": "Answer like a pirate."}]``.
        Each arm keeps its variant's settings as its branch defaults (on top of those of
        ``branch``; a parameter given as None drops the value of ``branch``, and an arm
        given a provider drops its ``model`` parameter unless it names one), so
        follow-up sends on an arm continue the experiment. Alike arms that set no
        ``seed`` (nor does ``branch``) get ``seed`` 0, 1, 2... in order when their
        provider takes one: distinct samples, which a re-run reproduces. Returns a
        :class:`FanOut` handle: ``await`` it (or ``.result()``) for the :class:`Comparison`.
        ``metadata`` is stored on each arm's user message, as :meth:`send` stores it.

        An arm's provider spec that names another model of the session's provider
        (``{"provider": "openai:gpt-4o-mini"}`` in a session created with
        ``openai:...``) uses the session's ``provider_options``, its ``base_url``
        included, so it is asked of that same server; each reply records the server that
        answered (``metadata.endpoint``, the comparison's header, the records'
        ``endpoint`` column). For the provider's own API, give the arm a Provider built
        without it (e.g. ``OpenAIProvider("gpt-4o-mini")``).
        """
        _session(self)._check_open()
        return start_fan_out(_session(self), text, variants, branch=branch, metadata=metadata)

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
        _session(self)._check_open()
        return _labels.update_labels(_session(self), branch, {**dict(labels or {}), **more})

    def pin_baseline(self, branch: str | None) -> str | None:
        """Make ``branch`` the baseline that comparisons, replays and counterfactuals are
        measured against (None: no baseline); returns it.

        The baseline is the branch labelled ``baseline: "true"`` (stored, so it holds
        after a restart); pinning another branch unpins the previous one.
        """
        _session(self)._check_open()
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
        is its own branch from the context's root (all made when the sweep starts,
        in one write), labelled ``sweep``, ``cell``,
        ``variant``, ``repeat`` and ``input``; at most ``concurrency`` run at once, with
        a progress bar unless ``progress=False``.

        ``await session.sweep(...)`` in a notebook, ``session.sweep(...).run()`` in a
        script. The sweep is named ``name`` (default: from its prompts, inputs and
        variants); running the same sweep again (also after a restart) skips the cells
        that ended in a complete reply and runs the others. See :mod:`cm_notebook.sweep`.
        """
        _session(self)._check_open()
        session = _session(self)
        return session._track_job(
            start_sweep(
                session,
                prompts,
                variants,
                inputs=inputs,
                repeat=repeat,
                concurrency=concurrency,
                name=name,
                progress=progress,
            )
        )

    # -- replays and counterfactual edits ----------------------------------------------

    def replay(
        self,
        branch: str,
        *,
        provider: ProviderLike | None = None,
        name: str | None = None,
        **params: Any,
    ) -> Replay:
        """Send the user turns of ``branch`` again, in order, on a new branch (``name``,
        default ``<branch>-replay-N``) with another ``provider`` and/or generation
        ``params``; its system prompt and other defaults are ``branch``'s (a parameter
        given as None drops its value; a ``provider`` given drops its ``model``
        parameter, unless ``params`` name one).

        Returns a :class:`~cm_notebook.replay.Replay` at once: ``await`` it (or
        ``.result()``) for the per-turn comparison against ``branch``
        (:class:`~cm_notebook.turn_diff.TurnComparison`). Tools the model calls go
        through approval as usual.
        """
        _session(self)._check_open()
        session = _session(self)
        return session._track_job(start_replay(session, branch, provider, name, params))

    def counterfactual(
        self, message_id: str, new_content: str, *, name: str | None = None
    ) -> Replay:
        """Change an earlier message on a new branch and run the later user turns again.

        ``message_id`` is any message of a branch (the active one if it holds it): a user
        message (the model answers the new text), a reply (kept as edited; if it called
        tools, their results follow and the model answers again: a reply whose calls
        still wait for a decision, or run, has no results yet, and is refused with a
        StateError saying to decide them, or stop its turn, first), a tool result (the
        model answers the new result; a text starting ``error:``, as the results of
        failed and denied calls do, is sent as an error result, any other as the
        call's success); or ``"system"`` for the system prompt of the
        active branch (every user turn runs again under the new prompt). The new
        branch (``name``, default ``<branch>-cf-N``) is forked just before the message.
        Each turn sent again uses the generation parameters its original reply recorded.
        Returns a :class:`~cm_notebook.replay.Replay`: ``await`` it for the per-turn
        comparison against the original branch.
        """
        _session(self)._check_open()
        session = _session(self)
        return session._track_job(start_counterfactual(session, message_id, new_content, name))

    def compare_turns(self, branch: str, against: str | None = None) -> TurnComparison:
        """``branch`` turn by turn against ``against`` (default: the pinned baseline,
        else the branch it was replayed or edited from): per turn, the answers' word
        diff and the deltas of TTFT, tokens/s, output tokens, latency and score."""
        return compare_turns(_session(self), branch, against)
