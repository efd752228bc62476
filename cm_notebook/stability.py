"""How stable is an answer? Repeated runs grouped by identical text, with diffs.

:func:`stability` takes answers (texts, or assistant messages) from repeated runs of
one prompt, e.g. the last reply of each branch of a sweep cell
(:meth:`ContextSession.stability <cm_notebook.session.ContextSession.stability>`), and
groups the identical ones (after ``normalize``, by default stripping the white space
around them); a group's ``text`` is its first answer as it was given. Groups come most
common first (ties: the first seen first). Each other
group is compared word by word with the most common answer (the word diff of
:mod:`cm_notebook.compare`): a near-identical one (word similarity at least
``threshold``: 2 x the words in common / the words in both, as a comparison counts it)
carries the diff, a distinct one only its similarity. Answers too long to diff word by
word are diffed more coarsely (see :data:`cm_notebook.compare.DIFF_BUDGET`):
their group says so (``coarse``), and its similarity, counted on that diff, is an
estimate that finds less in common than a word diff would.

The result is plain data with a text ``__str__`` and a static ``_repr_html_``, so a saved
notebook still shows it.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable

from pydantic import BaseModel, ConfigDict, Field

from ._html_text import WRAP_ANYWHERE, isolated
from ._theme import MUTED
from ._unicode import for_terminal
from .compare import COARSE_NOTE, diff_side_html, diff_similarity, word_diff, word_similarity
from .errors import InvalidInputError
from .model import Message

__all__ = ["AnswerGroup", "Stability", "similarity", "stability"]


def similarity(ops: list[tuple[str, str]]) -> float:
    """How alike two texts are, in [0, 1], from their :func:`~cm_notebook.compare.word_diff`:
    the word similarity of :meth:`Comparison.similarity
    <cm_notebook.compare.Comparison.similarity>`, 2 x (words in common) / (words in
    both), white space not counted. On a coarse diff (:attr:`WordDiff.coarse
    <cm_notebook.compare.WordDiff.coarse>`) it is counted on that diff, an estimate."""
    if getattr(ops, "coarse", False):
        return diff_similarity(ops)
    # The two texts, given back by the diff, measured as a comparison measures them:
    # the same pair shows the same number in both views.
    first = "".join(text for op, text in ops if op != "+")
    second = "".join(text for op, text in ops if op != "-")
    return word_similarity(first, second, ops)[0]


class AnswerGroup(BaseModel):
    """Identical answers: their text, how many, which runs, and how they differ from the
    most common answer (``diff`` only for near-identical groups; None for the top one
    and for distinct ones)."""

    model_config = ConfigDict(frozen=True)

    text: str
    count: int = Field(ge=1)
    members: list[str]  # message ids, or positions ("#0", "#1"...) of plain texts
    #: The branch of each member, in the same order (the member itself for an answer
    #: given without a branch); empty when no answer named one.
    branches: list[str] = Field(default_factory=list)
    similarity: float = 1.0
    diff: list[tuple[str, str]] | None = None
    #: Whether the answer was too long to diff word by word against the most common
    #: one: its similarity is then counted on a coarser diff, an estimate.
    coarse: bool = False

    @property
    def near(self) -> bool:
        """Whether this group is shown as a diff against the most common answer."""
        return self.diff is not None


class Stability(BaseModel):
    """Repeated answers grouped (see the module docstring)."""

    model_config = ConfigDict(frozen=True)

    groups: list[AnswerGroup]
    threshold: float = 0.6

    @property
    def total(self) -> int:
        """How many answers were grouped."""
        return sum(group.count for group in self.groups)

    @property
    def distinct(self) -> int:
        """How many different answers there are."""
        return len(self.groups)

    @property
    def agreement(self) -> float:
        """The share of answers equal to the most common one (1.0: fully stable)."""
        return self.groups[0].count / self.total if self.groups else 1.0

    @property
    def top(self) -> AnswerGroup | None:
        """The most common answer's group (None without answers)."""
        return self.groups[0] if self.groups else None

    def __repr__(self) -> str:
        if not self.total:  # agreement is 1.0 by convention: nothing to disagree
            return "<Stability no answers>"
        return (
            f"<Stability {self.total} answers, {self.distinct} distinct, "
            f"agreement {self.agreement:.0%}>"
        )

    def __str__(self) -> str:
        lines = [repr(self)]
        marked = {"=": "{}", "-": "[-{}-]", "+": "{{+{}+}}"}
        for rank, group in enumerate(self.groups, 1):
            if group.diff is not None:
                body = "".join(marked[op].format(text) for op, text in group.diff)
            else:
                body = group.text
            kind = "" if rank == 1 else (" near" if group.near else " distinct")
            alike = f"{_estimate(group)}{group.similarity:.2f}"
            if group.coarse:
                alike += f", {COARSE_NOTE}"
            lines.append(f"#{rank} x{group.count}{kind} ({alike}): {body}")
        return for_terminal("\n".join(lines))  # escapes in answers shown, not acted on

    def _repr_html_(self) -> str:
        total = self.total or 1
        rows = []
        for rank, group in enumerate(self.groups, 1):
            if group.diff is not None:
                body = diff_side_html(group.diff, keep="+")
            else:
                body = html.escape(group.text or "(empty)")
            share = group.count / total
            # Each name (a branch, or a message id) isolated: a right-to-left one cannot
            # reorder the list.
            who = ", ".join(map(isolated, group.branches or group.members))
            kind = "most common" if rank == 1 else ("near" if group.near else "distinct")
            if rank > 1:
                kind += f" · {_estimate(group)}{group.similarity:.2f}"
            if group.coarse:
                kind += f" · {COARSE_NOTE}"
            rows.append(
                "<tr>"
                f'<td style="text-align:right;vertical-align:top"><b>{group.count}</b></td>'
                f'<td style="text-align:left;vertical-align:top;min-width:80px">'
                f'<div style="background:#9cf;height:8px;width:{share * 100:.0f}%"></div>'
                f'<span style="color:{MUTED}">{share:.0%} · {html.escape(kind)}</span></td>'
                f'<td style="text-align:left;white-space:pre-wrap;vertical-align:top">{body}'
                f'<div style="color:{MUTED};font-size:smaller">{who}</div></td>'
                "</tr>"
            )
        head = html.escape(repr(self)[1:-1])
        return (
            # Long words and URLs wrap anywhere: the table stays as wide as its place.
            f'<div class="cm-stability" style="{WRAP_ANYWHERE}">'
            f'<div style="color:{MUTED}">{head}</div>'
            '<table style="border-collapse:collapse"><tr><th>n</th><th style="text-align:left">'
            'share</th><th style="text-align:left">answer (near ones: diff against the most '
            "common)</th></tr>" + "".join(rows) + "</table></div>"
        )


def _estimate(group: AnswerGroup) -> str:
    # "~" before a similarity counted on a coarse diff.
    return "~" if group.coarse else ""


def _strip(text: str) -> str:
    return text.strip()


def _aligned(members: list[str], branches: list[str | None]) -> list[str]:
    # One branch per member, in the members' order (the member itself where an answer
    # came without one), or none at all when no answer named a branch.
    if all(branch is None for branch in branches):
        return []
    return [
        branch if branch is not None else member
        for member, branch in zip(members, branches, strict=True)
    ]


def stability(
    answers: Iterable[str | Message | tuple[str, Message]],
    *,
    threshold: float = 0.6,
    normalize: Callable[[str], str] = _strip,
) -> Stability:
    """Group ``answers`` (texts, messages, or ``(branch, message)`` pairs) by identical
    text after ``normalize``; near-identical groups (word similarity at least
    ``threshold`` to the most common answer) get a word diff against it."""
    if isinstance(answers, str):
        raise InvalidInputError("answers must be a list of texts or messages, not one string")
    if not 0.0 <= threshold <= 1.0:
        raise InvalidInputError(f"threshold must be between 0 and 1, got {threshold!r}")
    buckets: dict[str, tuple[str, list[str], list[str | None]]] = {}
    for position, item in enumerate(answers):
        branch = None
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[0], str):
                raise InvalidInputError(
                    f"answer #{position} is a tuple of {len(item)}; give (branch name, "
                    "message) pairs"
                )
            branch, item = item
        if isinstance(item, Message):
            text, member = item.content, item.id
        elif isinstance(item, str):
            text, member = item, f"#{position}"
        else:
            raise InvalidInputError(
                f"answer #{position} is a {type(item).__name__}; give texts or messages"
            )
        # Grouped by the normalised text, shown as the first answer of the group: the
        # text a run produced, not the key (a lower-casing normaliser's "paris").
        key = normalize(text)
        if not isinstance(key, str):
            # Caught here, not as "unhashable type" or as answers grouped by None.
            raise InvalidInputError(
                f"normalize must return a str; it returned a {type(key).__name__} for "
                f"answer #{position} ({text[:40]!r})"
            )
        _shown, members, named = buckets.setdefault(key, (text, [], []))
        members.append(member)
        named.append(branch)
    ranked = sorted(buckets.values(), key=lambda bucket: -len(bucket[1]))  # stable: ties by order
    groups: list[AnswerGroup] = []
    for text, members, of_members in ranked:
        branches = _aligned(members, of_members)
        if not groups:
            groups.append(
                AnswerGroup(text=text, count=len(members), members=members, branches=branches)
            )
            continue
        ops = word_diff(groups[0].text, text)
        alike = similarity(ops)
        groups.append(
            AnswerGroup(
                text=text,
                count=len(members),
                members=members,
                branches=branches,
                similarity=round(alike, 4),
                diff=ops if alike >= threshold else None,
                coarse=ops.coarse,
            )
        )
    return Stability(groups=groups, threshold=threshold)
