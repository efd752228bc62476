"""A session's replies as data: :meth:`to_records`, :meth:`to_dataframe`, :meth:`to_csv`
and :meth:`stability`.

:class:`DataMethods` is a base of :class:`~cm_notebook.session.ContextSession`; its
methods are public API of the session and delegate to :mod:`cm_notebook.records` (the
table: one row per turn's reply) and :mod:`cm_notebook.stability` (repeated
answers grouped).
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import records as rec
from ._session_scores import ScoreMethods, branch_histories
from ._unicode import grapheme_prefix
from .compare import is_answer
from .errors import InvalidInputError
from .model import Message
from .stability import Stability, stability
from .store.stand_ins import stand_in_file

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["DataMethods"]


class DataMethods(ScoreMethods):
    """Replies as rows, a DataFrame, CSV, and grouped for stability."""

    def to_records(
        self, branches: str | Iterable[str] | None = None
    ) -> builtins.list[dict[str, Any]]:
        """One dict per turn's reply of ``branches`` (default: every branch), each reply
        once (a turn's steps that only ask for tools have none); the columns are those of
        :mod:`cm_notebook.records` (prompt, variant, model, parameters, seed, output,
        scores, timing, tokens, provenance...). A reply made before a branch forked gets
        none of that branch's variant and labels."""
        histories = branch_histories(self, branches)
        return rec.records(self.id, histories, self.branches, self.all_scores())

    def to_dataframe(self, branches: str | Iterable[str] | None = None) -> pd.DataFrame:
        """:meth:`to_records` as a pandas DataFrame.

        Needs pandas (``pip install 'cm_notebook[data]'``); without it, raises
        :class:`~cm_notebook.errors.ExtraNotInstalledError` (use :meth:`to_records` or
        :meth:`to_csv`).
        """
        return rec.to_dataframe(self.to_records(branches))

    def to_csv(
        self, path: str | os.PathLike[str], branches: str | Iterable[str] | None = None
    ) -> Path:
        """Write :meth:`to_records` to ``path`` as CSV (UTF-8; lists and dicts as JSON,
        times in ISO 8601); returns the path. Needs no extra.

        Cells hold the text as it is: a reply that begins with ``=``, ``+``, ``-`` or
        ``@`` is a formula to a spreadsheet that opens the file, so read model output
        with pandas (or import the file as text), not by opening it in a spreadsheet.
        """
        return rec.write_csv(path, self.to_records(branches))

    def stability(
        self,
        branches: str | Iterable[str] | None = None,
        *,
        threshold: float = 0.6,
        normalize: Callable[[str], str] | None = None,
    ) -> Stability:
        """Group the last reply of each of ``branches`` (default: every branch) by
        identical text, most common first, with word diffs of near-identical ones
        against it (see :mod:`cm_notebook.stability`). Branches whose last reply is
        missing or did not complete (failed, stopped) are left out: an error's empty
        text is not an answer, nor is a reply that only asks for tools, nor a stand-in
        that ``cm-notebook check --repair`` wrote for a reply it could not read. A reply that
        several branches share (a fork with nothing sent on it yet) counts once, for the
        first of them: one answer, however many branches point at it.

        The replies must answer one prompt (the same user message text): answers to
        different questions are no repeated runs, and their agreement would mean
        nothing. When they do not, raises
        :class:`~cm_notebook.errors.InvalidInputError` naming each prompt and its
        branches; pass the branches of one prompt, or use a sweep's
        :meth:`~cm_notebook.sweep.Sweep.stability`, which groups per prompt."""
        answers: builtins.list[tuple[str, Message]] = []
        prompts: dict[str | None, builtins.list[str]] = {}
        counted: set[str] = set()
        for branch, messages in branch_histories(self, branches):
            at = next(
                (i for i in range(len(messages) - 1, -1, -1) if messages[i].role == "assistant"),
                None,
            )
            last = messages[at] if at is not None else None
            # A stand-in's text is a placeholder for a reply that could not be read.
            if (
                last is not None
                and is_answer(last)
                and stand_in_file(last) is None
                and last.id not in counted
            ):
                counted.add(last.id)
                answers.append((branch, last))
                prompts.setdefault(_prompt_of(messages[:at]), []).append(branch)
        if len(prompts) > 1:
            raise InvalidInputError(_mixed_prompts(prompts))
        if normalize is None:
            return stability(answers, threshold=threshold)
        return stability(answers, threshold=threshold, normalize=normalize)


def _prompt_of(before: builtins.list[Message]) -> str | None:
    # The text of the user message a reply answers: the last one before it (a reply after
    # tool rounds still answers it). None: the reply answers no user message.
    return next((m.content for m in reversed(before) if m.role == "user"), None)


def _mixed_prompts(prompts: dict[str | None, builtins.list[str]]) -> str:
    # Which branches answer which prompt, so the caller can pick the branches of one.
    shown = "; ".join(
        f"{'(no prompt)' if prompt is None else repr(_short(prompt))}: {', '.join(names)}"
        for prompt, names in prompts.items()
    )
    return (
        f"the last replies answer {len(prompts)} different prompts ({shown}); stability "
        "groups repeated runs of one prompt: pass the branches of one prompt, e.g. "
        f"session.stability({list(next(iter(prompts.values())))!r}), or use a sweep's "
        "stability(), which groups per prompt"
    )


def _short(text: str, most: int = 60) -> str:
    # Cut between two user-perceived characters: never inside a flag or an emoji.
    return text if len(text) <= most else grapheme_prefix(text, most - 1) + "…"
