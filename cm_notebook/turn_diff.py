"""Per-turn differences between two branches: the answers diffed word by word, and the
metric deltas (time to first token, tokens per second, output tokens, latency, score).

A *turn* is a user message and the last reply before the next user message (after any
tool rounds). Two branches are compared turn by turn in order, so a replay (the same
user turns under another model) or a counterfactual edit (one earlier message changed,
the later user turns run again) lines up with the branch it came from. An answer that
did not complete (it failed, was interrupted, or is still being generated) is shown as
such, never diffed as an answer, and its tokens and timings are not measured against
the other side: the per-turn deltas say it has no answer instead. So is a last reply
that only asks for tools (the turn stopped in its tool rounds), and a turn one branch
does not have, or whose prompt has no reply there (a replay that failed at an earlier
turn): it has no answer, not an empty one.
:meth:`ContextSession.compare_turns` builds a :class:`TurnComparison`; the compare view
shows the same per-turn diffs (:func:`turns_html`). Everything here is pure.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict

from ._html_text import isolated
from ._theme import MUTED
from ._unicode import for_terminal
from .compare import (
    COARSE_NOTE,
    PALE_MARKS,
    BranchResult,
    WordDiff,
    diff_side_html,
    unfinished_html,
    word_diff,
)
from .model import Message

__all__ = ["METRICS", "Delta", "TurnComparison", "TurnDiff", "turns_html", "turns_of"]

#: The metrics compared per turn: (name, label, unit, how many decimals).
METRICS: tuple[tuple[str, str, str, int], ...] = (
    ("ttft_ms", "TTFT", " ms", 0),
    ("tokens_per_second", "tokens/s", "", 1),
    ("output_tokens", "output tokens", "", 0),
    ("latency_ms", "latency", " ms", 0),
    ("score", "score", "", 2),
)

#: How a comparison finds the scores of a turn's two replies, by their ids (None: no
#: reply): ``(base, other)``, each None where not scored. The two are on one scale (the
#: same metric), or the score delta would compare two different things.
ScoresOf = Callable[[str | None, str | None], tuple[float | None, float | None]]


class Delta(NamedTuple):
    """One metric of a turn on both branches and the change (None where unknown)."""

    base: float | None
    other: float | None

    @property
    def change(self) -> float | None:
        """``other - base``, if both are known."""
        if self.base is None or self.other is None:
            return None
        return self.other - self.base


def turns_of(messages: Sequence[Message]) -> list[tuple[Message, Message | None]]:
    """A branch's turns: each user message with the last reply before the next one."""
    turns: list[tuple[Message, Message | None]] = []
    for message in messages:
        if message.role == "user":
            turns.append((message, None))
        elif message.role == "assistant" and turns:
            turns[-1] = (turns[-1][0], message)
    return turns


def _metrics(result: BranchResult | None, score: float | None) -> dict[str, float | None]:
    if result is None:
        return {name: None for name, *_ in METRICS}
    if result.unfinished:
        # A failed or interrupted attempt's speed and size are not an answer's: a delta
        # against them would read as "the other model answers in half the tokens".
        # Its score stays: someone rated this very message.
        return {name: (score if name == "score" else None) for name, *_ in METRICS}
    stats, usage = result.stats, result.usage
    output = usage.output_tokens if usage is not None else None
    if output is None and stats is not None:
        output = stats.output_tokens
    return {
        "ttft_ms": stats.ttft_ms if stats is not None else None,
        "tokens_per_second": stats.tokens_per_second if stats is not None else None,
        "output_tokens": float(output) if output is not None else None,
        "latency_ms": result.duration_ms,
        "score": score,
    }


class TurnDiff(BaseModel):
    """One turn on both branches: the prompts, the answers, their scores."""

    model_config = ConfigDict(frozen=True)

    turn: int  # from 1
    prompt: str  # the other branch's user message
    base_prompt: str | None = None  # the base branch's, if it differs
    # A side without a reply to this turn (no such turn there, or an unanswered prompt)
    # is a result that says so (``BranchResult.missing``); None only in one made by hand.
    base: BranchResult | None = None
    other: BranchResult | None = None
    base_score: float | None = None
    other_score: float | None = None

    @property
    def diff(self) -> WordDiff:
        """Word diff of the base answer against the other's (see :func:`word_diff`).

        Empty when either side has no answer (:attr:`unanswered`: its reply did not
        complete, or there is none): a partial text is no answer to diff, nor is a
        missing one an empty answer, as the views say."""
        if not self._answered:
            return WordDiff()
        return word_diff(*_texts(self))

    @property
    def unanswered(self) -> list[BranchResult]:
        """The sides whose reply did not complete (failed, interrupted, streaming), or
        that have no reply to this turn."""
        return [side for side in (self.base, self.other) if side is not None and side.unfinished]

    @property
    def _answered(self) -> bool:
        # Both sides answer: given (a TurnDiff made by hand may leave one out) and not
        # unanswered.
        return self.base is not None and self.other is not None and not self.unanswered

    @property
    def changed(self) -> bool:
        """Whether the answers differ (a reply that did not complete, or is not there,
        against one that did is a difference, whatever their texts)."""
        cut = [side is None or side.unfinished for side in (self.base, self.other)]
        # The diff marks a change exactly where the texts differ (it gives both back):
        # compared directly, without diffing long answers once more.
        base, other = _texts(self)
        return cut[0] != cut[1] or base != other

    def deltas(self) -> dict[str, Delta]:
        """Each metric of :data:`METRICS` on both branches (None on a side whose reply
        did not complete, except its score: an attempt is not measured as an answer)."""
        base = _metrics(self.base, self.base_score)
        other = _metrics(self.other, self.other_score)
        return {name: Delta(base[name], other[name]) for name, *_ in METRICS}


class TurnComparison(BaseModel):
    """Two branches turn by turn: ``base`` (the baseline, or the branch replayed or
    edited) and ``other``."""

    model_config = ConfigDict(frozen=True)

    base: str
    other: str
    turns: list[TurnDiff]

    @classmethod
    def build(
        cls,
        base: str,
        base_messages: Sequence[Message],
        other: str,
        other_messages: Sequence[Message],
        *,
        system_prompts: tuple[str | None, str | None] = (None, None),
        scores_of: ScoresOf | None = None,
    ) -> TurnComparison:
        """Pair the turns of two branches' messages in order."""
        scores = scores_of or (lambda _base, _other: (None, None))
        left, right = turns_of(base_messages), turns_of(other_messages)
        turns = []
        for index in range(max(len(left), len(right))):
            b_prompt, b_answer = left[index] if index < len(left) else (None, None)
            o_prompt, o_answer = right[index] if index < len(right) else (None, None)
            prompt = (o_prompt or b_prompt or Message(role="user")).content
            base_prompt = b_prompt.content if b_prompt is not None else None
            base_score, other_score = scores(
                b_answer.id if b_answer is not None else None,
                o_answer.id if o_answer is not None else None,
            )
            turns.append(
                TurnDiff(
                    turn=index + 1,
                    prompt=prompt,
                    base_prompt=None if base_prompt == prompt else base_prompt,
                    base=_result(base, b_answer, system_prompts[0]),
                    other=_result(other, o_answer, system_prompts[1]),
                    base_score=base_score,
                    other_score=other_score,
                )
            )
        return cls(base=base, other=other, turns=turns)

    @property
    def changed_turns(self) -> list[int]:
        """The turns whose answers differ."""
        return [turn.turn for turn in self.turns if turn.changed]

    def __repr__(self) -> str:
        return (
            f"<TurnComparison {self.base!r} -> {self.other!r}: {len(self.turns)} turns, "
            f"{len(self.changed_turns)} changed>"
        )

    def __str__(self) -> str:
        marked = {"=": "{}", "-": "[-{}-]", "+": "{{+{}+}}"}
        lines = [f"{self.other} against {self.base}"]
        for turn in self.turns:
            lines.append(f"== turn {turn.turn}: {turn.prompt}")
            if turn.base_prompt is not None:
                lines.append(f"   (was: {turn.base_prompt})")
            if not turn._answered:
                # No diff against a partial or missing text: each side as it is.
                lines.extend(_answer_text(side) for side in (turn.base, turn.other) if side)
            else:
                ops = turn.diff
                lines.append("".join(marked[op].format(text) for op, text in ops))
                if ops.coarse:
                    lines.append(f"   ({COARSE_NOTE})")
            shown = _delta_texts(turn)
            if shown:
                lines.append("   " + "; ".join(shown))
        return for_terminal("\n".join(lines))  # escapes in answers shown, not acted on

    def _repr_html_(self) -> str:
        return turns_html(self)


def _texts(turn: TurnDiff) -> tuple[str, str]:
    # The two answers' texts ("" for a side without one).
    return (
        turn.base.text if turn.base is not None else "",
        turn.other.text if turn.other is not None else "",
    )


def _result(branch: str, answer: Message | None, system: str | None) -> BranchResult:
    # No answer (no such turn, or its prompt has no reply): a result that says so.
    return BranchResult.of(branch, answer, system)


def _number(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}"


def _answer_text(side: BranchResult) -> str:
    # "bad: no answer: the reply failed: ...; partial text: Lyon is", or "good: Paris."
    if not side.unfinished:
        return f"{side.branch}: {side.text}"
    partial = f"; partial text: {side.text}" if side.text else ""
    return f"{side.branch}: no answer: {side.outcome}{partial}"


def _delta_texts(turn: TurnDiff) -> list[str]:
    # "TTFT 120 -> 95 ms (-25)" for each metric known on either side; where a side
    # has no answer, that is said first, and only the metrics known on both follow.
    unanswered = turn.unanswered
    out = [f"{side.branch} has no answer ({_status(side)})" for side in unanswered]
    deltas = turn.deltas()
    for name, label, unit, decimals in METRICS:
        delta = deltas[name]
        if delta.base is None and delta.other is None:
            continue
        if unanswered and (delta.base is None or delta.other is None):
            continue
        base = "?" if delta.base is None else _number(delta.base, decimals)
        other = "?" if delta.other is None else _number(delta.other, decimals)
        sign = ""
        if delta.base is not None and delta.other is not None:
            # The change between the values as shown, not the exact one rounded on its
            # own: 1.4 -> 0.6 ms reads "1 -> 1 ms (0)", never "1 -> 1 ms (-1)".
            sign = f" ({_signed(float(other) - float(base), decimals)})"
        out.append(f"{label} {base} -> {other}{unit}{sign}")
    return out


def _signed(change: float, decimals: int) -> str:
    # "+25", "-3.5", and "0" for a change that rounds to zero (never "-0" or "+0").
    shown = _number(change, decimals)
    if float(shown) == 0:
        return _number(0.0, decimals)
    return shown if change < 0 else f"+{shown}"


def _status(side: BranchResult) -> str:
    return side.state


def _side_html(side: BranchResult | None) -> str:
    # One side of a turn where a reply did not complete: shown as it is, unmarked.
    if side is None:
        return ""
    return unfinished_html(side) if side.unfinished else html.escape(side.text)


#: One side of a turn: half the width, however long its words.
_SIDE = "flex:1;min-width:0;white-space:pre-wrap"


def turns_html(comparison: TurnComparison, *, changed_only: bool = False) -> str:
    """Static HTML: per turn, the prompt, both answers marked, and the metric deltas
    (only the turns whose answers differ with ``changed_only``)."""
    rows = []
    for turn in comparison.turns:
        if changed_only and not turn.changed:
            continue
        ops = turn.diff
        prompt = html.escape(turn.prompt)
        if turn.base_prompt is not None:
            prompt = diff_side_html(word_diff(turn.base_prompt, turn.prompt), "+", PALE_MARKS)
        notes = _delta_texts(turn)
        state = "changed" if turn.changed else "same"
        if not turn._answered:
            left, right = _side_html(turn.base), _side_html(turn.other)
        else:
            left, right = diff_side_html(ops, "-", PALE_MARKS), diff_side_html(ops, "+", PALE_MARKS)
            if ops.coarse:
                notes.append(COARSE_NOTE)
        # The notes of _delta_texts (the unanswered sides first), their branch names
        # isolated.
        said = len(turn.unanswered)
        deltas = " · ".join(
            [
                f"{isolated(side.branch)} has no answer ({html.escape(_status(side))})"
                for side in turn.unanswered
            ]
            + [html.escape(text) for text in notes[said:]]
        )
        rows.append(
            f'<tr class="cm-turn cm-turn-{state}"><td style="width:1%;vertical-align:top;'
            f'color:{MUTED};padding:4px 6px">{turn.turn}</td><td style="text-align:left;'
            f'vertical-align:top;padding:4px 6px">'
            f'<div style="font-size:85%;color:{MUTED}"><b>user</b> {prompt}</div>'
            '<div style="display:flex;gap:8px;margin-top:2px">'
            f'<div style="{_SIDE}">{left}</div><div style="{_SIDE}">{right}</div>'
            f'</div><div style="font-size:80%;color:{MUTED}">{deltas}</div></td></tr>'
        )
    # The branch names isolated: a right-to-left name cannot move "against" around.
    base, other = isolated(comparison.base), isolated(comparison.other)
    return (
        # Long words and URLs wrap anywhere: the table stays as wide as its place.
        '<div class="cm-turns" style="overflow-wrap:anywhere">'
        f'<div style="color:{MUTED}">per turn: <b>{other}</b> against '
        f"<b>{base}</b> ({len(comparison.changed_turns)} of {len(comparison.turns)} "
        # table-layout: JupyterLab's stylesheet makes it fixed (columns of equal width).
        f'turns changed)</div><table style="border-collapse:collapse;width:100%;'
        f'table-layout:auto">' + "".join(rows) + "</table></div>"
    )
