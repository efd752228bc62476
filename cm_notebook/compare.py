"""Side-by-side comparison of branches: prompts, final answers, usage, speed and a diff.

:meth:`ContextSession.compare` and :meth:`ContextSession.fan_out` return a
:class:`Comparison`. It is plain data (pydantic) with a text ``__str__`` and a static
``_repr_html_``, so a saved notebook still shows the comparison without a kernel.
A reply that failed, was interrupted or is still streaming is shown as such (its
status, why, and its partial text), never diffed or measured as if it were an answer;
so is a branch with no reply at all, and one whose reply could not be read (a stand-in
that ``cm-notebook check --repair`` wrote in place of a damaged file: its text is a
placeholder, not what the model said).
"""

from __future__ import annotations

import difflib
import html

from pydantic import BaseModel, ConfigDict, Field
from rapidfuzz.distance import Indel

from ._html_text import isolated
from ._stand_in_refusals import stand_in_error
from ._theme import ERROR, MUTED
from ._unicode import for_terminal
from ._word_diff import COARSE_NOTE, DIFF_BUDGET, WordDiff, alignable, word_diff, words
from .fsm import TOOL_ROUND_LIMIT
from .model import Message, MessageStatus, StreamStats, TokenUsage, ToolCallStatus
from .prompts import reply_prompt
from .store.stand_ins import stand_in_file

__all__ = [
    "COARSE_NOTE",
    "DIFF_BUDGET",
    "PALE_MARKS",
    "SIMILARITY_BUDGET",
    "BranchResult",
    "Comparison",
    "WordDiff",
    "diff_side_html",
    "diff_similarity",
    "is_answer",
    "tool_round_stop",
    "unfinished_html",
    "word_diff",
    "word_similarity",
]

#: The most token pairs whose similarity is counted exactly (in little memory, but in
#: time growing with the pairs: ~0.3 s here, e.g. two answers of 30,000 words); beyond
#: it, the similarity is estimated from the coarse diff (see :func:`word_similarity`).
SIMILARITY_BUDGET = 4_000_000_000


def _words_only(text: str) -> list[str]:
    # The diff's tokens less the white space between them: the similarity counts words,
    # and every pair of texts shares spaces (two answers without a word in common
    # scored ~0.47 when they were counted).
    return [token for token in words(text) if not token.isspace()]


def word_similarity(a: str, b: str, ops: list[tuple[str, str]] | None = None) -> tuple[float, bool]:
    """How alike two texts are, in [0, 1], and whether that is an estimate.

    The similarity is 2 x (words in common) / (words in both), as difflib's ``ratio()``
    on their words: words are the runs of non-space characters, white space is not
    counted (two texts without a word in common score 0.0; two without any word, 1.0).
    It is counted exactly up to :data:`SIMILARITY_BUDGET` pairs of words (after the
    words the texts share at their start and end); beyond it, it is estimated from
    their coarse diff (``ops``, if already made), which finds fewer words in common.
    """
    words_a, words_b = _words_only(a), _words_only(b)
    if alignable(words_a, words_b, SIMILARITY_BUDGET):
        # On a longest common subsequence of the words (rapidfuzz's bit-parallel Indel,
        # in memory linear in the lengths).
        return float(Indel.normalized_similarity(words_a, words_b)), False
    if ops is None:
        ops = word_diff(a, b)
    return diff_similarity(ops), True


def diff_similarity(ops: list[tuple[str, str]]) -> float:
    """The similarity of :func:`word_similarity` counted on a diff (``ops``: a
    :func:`word_diff`): 2 x (words in its shared runs) / (words in both texts). On a
    coarse diff it is an estimate, finding fewer words in common than the texts have."""
    same = sum(len(_words_only(part)) for op, part in ops if op == "=")
    total = sum(len(_words_only(part)) for _op, part in ops) + same
    # A word is never split between two runs (the diff cuts between tokens), but the
    # floor keeps the share in [0, 1] for any list given.
    # 1 - distance / total, as Indel.normalized_similarity counts it: the same counts
    # give the same float in both (2 * same / total may differ in its last bit).
    return 1.0 if total == 0 else max(0.0, 1.0 - (total - 2 * same) / total)


def is_answer(message: Message) -> bool:
    """Whether ``message`` is a final answer: complete, and not a reply that only asks
    for tools (its turn stopped in its tool rounds, or they still wait)."""
    return message.status is MessageStatus.COMPLETE and not message.tool_calls


#: How a call cut off while its tool ran is said to have ended (its ``reason`` starts so).
_CUT_OFF = "interrupted while running"
#: A call still in its round: waiting for a decision, or approved and not yet ended.
_IN_ROUND = (ToolCallStatus.PENDING, ToolCallStatus.APPROVED, ToolCallStatus.RUNNING)


def tool_round_stop(message: Message) -> str | None:
    """Why ``message``, a complete reply that only asks for tools, is no answer, when
    its turn was stopped in that tool round (a Stop button, a cancelled sweep, a closed
    session): where it stopped, in words, e.g. "the turn was stopped while its tool
    calls waited for approval (cancelled by the user)".

    None for any other message (an answer, a reply that failed or was interrupted), and
    while the round goes on: a call still waits for a decision or runs."""
    calls = message.tool_calls
    if message.status is not MessageStatus.COMPLETE or not calls:
        return None
    if any(call.status in _IN_ROUND for call in calls):
        return None
    cut = next((c for c in calls if (c.reason or "").startswith(_CUT_OFF)), None)
    if cut is not None:
        where = f"while a tool ran: the call to {cut.name!r} was {cut.reason}"
    elif any(call.status is ToolCallStatus.DONE for call in calls):
        where = "after its tools ran, before the model answered their results"
    else:
        denied = [call for call in calls if call.status is ToolCallStatus.DENIED]
        first = (denied or calls)[0]
        why = f" ({first.reason})" if first.reason else ""
        if first.reason == TOOL_ROUND_LIMIT:  # never offered for approval
            where = f"at its tool round limit, before its tool calls ran{why}"
        else:
            waited = "waited for approval" if denied else "were about to run"
            where = f"while its tool calls {waited}{why}"
    return f"the turn was stopped {where}; the reply only asks for tools, it is no answer"


class BranchResult(BaseModel):
    """One branch's final answer, what produced it and what it cost.

    ``system_prompt`` is the prompt the answer was generated under (None: none);
    ``endpoint`` the server that answered when it was not the provider's own (see
    :mod:`cm_notebook.provenance`); ``stats`` how its streaming went (time to first
    token, tokens per second...).
    A reply that did not complete (``status`` ``error``, ``interrupted`` or still
    ``streaming``; ``error`` says why it failed) is not an answer, nor is a reply that
    only asks for tools (``tool_calls`` > 0: the turn stopped in its tool rounds, e.g.
    at the tool-round limit, or they still wait): see :attr:`unfinished`. Nor is there
    an answer where the branch has no reply (``missing``: no assistant message on it,
    or, in a per-turn diff, no such turn or a prompt never answered), or where its
    reply could not be read (``unreadable``: why, and what to do; the reply is a
    stand-in that ``cm-notebook check --repair`` wrote in place of its damaged file,
    whose text is a placeholder and is not kept here), nor where the branch's reply has
    not started yet (``pending``: a fan-out's arm just forked, whose last answer is
    still the one its branch was forked after, not its own).
    """

    model_config = ConfigDict(frozen=True)

    branch: str
    message_id: str | None = None
    text: str = ""
    status: MessageStatus | None = None
    provider: str | None = None
    model: str | None = None
    endpoint: str | None = None
    parameters: dict[str, object] = Field(default_factory=dict)
    usage: TokenUsage | None = None
    duration_ms: float | None = None
    system_prompt: str | None = None
    stats: StreamStats | None = None
    error: str | None = None
    tool_calls: int = 0  # how many tools the reply asks for
    missing: bool = False  # no reply there to show (see above)
    unreadable: str | None = None  # why its reply cannot be read (see above)
    pending: bool = False  # its reply has not started yet (see above)

    @classmethod
    def of(
        cls, branch: str, answer: Message | None, system_prompt: str | None = None
    ) -> BranchResult:
        """Summarise ``answer`` (the last assistant message of ``branch``, if any).

        ``system_prompt`` is the branch's current prompt, used when the answer does not
        record its own (see :func:`~cm_notebook.prompts.reply_prompt`) or there is no
        answer.
        """
        if answer is None:
            return cls(branch=branch, system_prompt=system_prompt, missing=True)
        if stand_in_file(answer) is not None:
            # Its text and metadata are the repair's, not the model's: none of it is
            # shown as the branch's answer (nor as a partial one).
            return cls(
                branch=branch,
                message_id=answer.id,
                system_prompt=system_prompt,
                unreadable=str(stand_in_error(answer)),
            )
        meta = answer.metadata
        system_prompt = reply_prompt(answer, system_prompt)
        return cls(
            branch=branch,
            message_id=answer.id,
            text=answer.content,
            status=answer.status,
            provider=meta.provider,
            model=meta.model,
            endpoint=meta.endpoint,
            parameters=dict(meta.parameters),
            usage=meta.usage,
            duration_ms=meta.duration_ms,
            system_prompt=system_prompt,
            stats=meta.stats,
            error=meta.error,
            tool_calls=len(answer.tool_calls),
        )

    @property
    def unfinished(self) -> bool:
        """Whether the reply is no final answer: it failed, was interrupted, is still
        being generated, or only asks for tools; or there is no reply (``missing``), none
        yet (``pending``), or none that can be read (``unreadable``). Its text is then
        partial, and its tokens and timings are an attempt's: neither is an answer to
        compare. (A result without a status, made by hand, counts as an answer.)"""
        if self.missing or self.pending or self.unreadable is not None:
            return True
        if self.status is not None and self.status is not MessageStatus.COMPLETE:
            return True
        return self.tool_calls > 0

    @property
    def state(self) -> str:
        """A short word for what the reply is: its status (``complete``, ``error``,
        ``interrupted``, ``streaming``), ``tool calls`` for a complete reply that only
        asks for tools, ``unreadable`` for a reply that could not be read, ``no reply
        yet`` for one that has not started (``pending``), ``no reply`` without a
        status."""
        if self.unreadable is not None:
            return "unreadable"
        if self.pending:
            return "no reply yet"
        if self.status is MessageStatus.COMPLETE and self.tool_calls:
            return "tool calls"
        return self.status.value if self.status is not None else "no reply"

    @property
    def outcome(self) -> str | None:
        """What became of an unfinished reply, in words (None for an answer)."""
        if not self.unfinished:
            return None
        if self.missing:
            return "there is no reply to this turn on this branch"
        if self.pending:
            return "the branch has not answered yet (its reply has not started)"
        if self.unreadable is not None:
            return self.unreadable
        why = f": {self.error}" if self.error else ""
        if self.status is MessageStatus.ERROR:
            return f"the reply failed{why}"
        if self.status is MessageStatus.INTERRUPTED:
            return f"the reply was interrupted{why}"
        if self.status is MessageStatus.STREAMING:
            return "the reply is still being generated"
        return "the reply only asks for tools (its tool rounds stopped or still wait)"

    def facts(self) -> list[str]:
        """Short labels of what produced the answer and how fast: model (with ``via`` and
        the server that answered, when not the provider's own), parameters, tokens,
        time to first token, tokens per second, duration, attempts. For an unfinished
        reply: model, parameters and its status (``error``, ``interrupted``,
        ``streaming``, ``no reply``, ``no reply yet``, ``unreadable``) instead of what
        the attempt cost."""
        usage, stats = self.usage, self.stats
        facts = [self.model or self.provider or "?"]
        if self.endpoint:  # the model's name alone would say its provider's API answered
            facts[0] += f" via {self.endpoint}"
        facts += [f"{key}={value}" for key, value in sorted(self.parameters.items())]
        known = self._known
        if known and self.unfinished:
            # A failed attempt's tokens and speed, shown like an answer's, would be
            # read as what the answer cost.
            facts.append(self.state)
            return facts
        if usage is not None:
            facts.append(f"{usage.input_tokens}+{usage.output_tokens} tokens")
        if stats is not None and stats.ttft_ms is not None:
            facts.append(f"TTFT {stats.ttft_ms:.0f} ms")
        if stats is not None and stats.tokens_per_second is not None:
            estimate = "" if stats.tokens_from_usage else "~"
            facts.append(f"{estimate}{stats.tokens_per_second:.1f} tok/s")
        if self.duration_ms is not None:
            facts.append(f"{self.duration_ms:.0f} ms")
        if stats is not None and stats.attempts > 1:
            facts.append(f"{stats.attempts} attempts")
        return facts

    @property
    def _known(self) -> bool:
        # Whether what became of the reply is known (a result made by hand may say
        # nothing: it counts as an answer).
        return (
            self.status is not None or self.missing or self.pending or self.unreadable is not None
        )

    @property
    def prompt_label(self) -> str:
        """The system prompt as shown: the text, or ``(no system prompt)``."""
        return self.system_prompt if self.system_prompt else "(no system prompt)"


class Comparison(BaseModel):
    """Branches side by side. The first branch is the baseline for diffs and ratios."""

    model_config = ConfigDict(frozen=True)

    results: list[BranchResult]

    @property
    def branches(self) -> list[str]:
        """The compared branch names, in order."""
        return [r.branch for r in self.results]

    def __getitem__(self, branch: str) -> BranchResult:
        for result in self.results:
            if result.branch == branch:
                return result
        raise KeyError(branch)

    def diff(self, other: str | None = None) -> WordDiff:
        """Word diff of the baseline's answer against ``other`` (default: the second).

        Empty when either reply did not complete (:attr:`BranchResult.unfinished`): a
        failed or interrupted reply has no answer to diff, only partial text, as the
        views say. Answers too long to diff word by word get a coarser diff, which says
        so (:attr:`WordDiff.coarse`)."""
        target = self._target(other)
        if target is None:
            return WordDiff()
        return word_diff(self.results[0].text, target.text)

    def unified_diff(self, other: str | None = None) -> str:
        """A line-based unified diff of the baseline's answer against ``other`` (empty
        when either reply did not complete, as :meth:`diff`)."""
        target = self._target(other)
        if target is None:
            return ""
        base = self.results[0]
        lines = difflib.unified_diff(
            base.text.splitlines(keepends=True),
            target.text.splitlines(keepends=True),
            fromfile=base.branch,
            tofile=target.branch,
        )
        return "".join(lines)

    def similarity(self, other: str | None = None) -> float | None:
        """Word similarity in [0, 1] of the baseline's answer and ``other``'s: 2 x
        (words in common) / (words in both), white space not counted (see
        :func:`word_similarity`). None when either reply did not complete
        (:attr:`BranchResult.unfinished`: failed, interrupted, still streaming, or
        stopped in its tool rounds): a partial text is no answer to measure, and two
        arms that both failed are not "identical". 1.0 with fewer than two branches.

        For answers so long that counting it exactly would take more than a moment
        (beyond :data:`SIMILARITY_BUDGET` pairs of words, after the words they share at
        their start and end), it is estimated from their coarse diff, which finds fewer
        words in common: shown as ``~0.42``."""
        if len(self.results) < 2:
            return 1.0
        target = self._target(other)
        return None if target is None else self._similarity(target.text, None)[0]

    def _target(self, other: str | None) -> BranchResult | None:
        # The result measured against the baseline (``other``, default the second),
        # or None when there is none or either side has no answer to measure.
        if len(self.results) < 2:
            return None
        target = self[other] if other is not None else self.results[1]
        if self.results[0].unfinished or target.unfinished:
            return None
        return target

    def _similarity(self, text: str, ops: WordDiff | None) -> tuple[float, bool]:
        # The similarity of the baseline's answer and ``text``, and whether it is an
        # estimate (``ops``: their diff, if already made).
        return word_similarity(self.results[0].text, text, ops)

    def __repr__(self) -> str:
        return f"<Comparison of {', '.join(self.branches) or 'no branches'}>"

    def _unanswered(self) -> BranchResult | None:
        # The first of the two diffed results whose reply did not complete: a diff
        # against its partial text would read as a difference between two answers.
        return next((r for r in self.results[:2] if r.unfinished), None)

    def __str__(self) -> str:
        lines: list[str] = []
        for result in self.results:
            lines.append(f"== {result.branch} ({', '.join(result.facts())})")
            lines.append(f"system: {result.prompt_label}")
            if result.unfinished:
                lines.append(f"no answer: {result.outcome}")
                if result.text:
                    lines.append(f"partial text: {result.text}")
            else:
                lines.append(result.text or "(no answer)")
            lines.append("")
        if len(self.results) >= 2:
            names = f"{self.results[0].branch} -> {self.results[1].branch}"
            unanswered = self._unanswered()
            if unanswered is not None:
                lines.append(f"diff {names}: none, {_no_answer(unanswered)}")
                return for_terminal("\n".join(lines))
            # wdiff's notation: [-removed-] {+added+}, the second answer against the first.
            marked = {"=": "{}", "-": "[-{}-]", "+": "{{+{}+}}"}
            ops = self.diff()
            diff = "".join(marked[op].format(text) for op, text in ops)
            if ops.coarse:
                names += f" ({COARSE_NOTE})"
            lines.append(f"diff {names}: {diff}")
            alike, estimated = self._similarity(self.results[1].text, ops)
            lines.append(f"similarity: {'~' if estimated else ''}{alike:.2f}")
        # A model's text may hold escapes a terminal (or a notebook's stream output)
        # acts on: shown escaped, as the CLI shows them.
        return for_terminal("\n".join(lines))

    def _repr_html_(self) -> str:
        cells = []
        unanswered = self._unanswered() if len(self.results) >= 2 else None
        diff_b = self.diff() if len(self.results) >= 2 and unanswered is None else WordDiff()
        for index, result in enumerate(self.results):
            facts = [html.escape(fact) for fact in result.facts()]
            if result.unfinished:
                body = unfinished_html(result)
            elif index == 1 and diff_b:
                body = diff_side_html(diff_b, keep="+")
            elif index == 0 and diff_b:
                body = diff_side_html(diff_b, keep="-")
            else:
                body = html.escape(result.text or "(no answer)")
            cells.append(
                # Long words and URLs wrap anywhere: the card keeps its half.
                '<div style="flex:1;min-width:0;border:1px solid #ccc;border-radius:6px;'
                'padding:8px;overflow-wrap:anywhere">'
                f"<div><b>{isolated(result.branch)}</b> "
                f'<span style="color:{MUTED}">{" · ".join(facts)}</span></div>'
                f'<div style="color:{MUTED};font-style:italic;white-space:pre-wrap;margin-top:4px">'
                f"system: {html.escape(result.prompt_label)}</div>"
                f'<div style="white-space:pre-wrap;margin-top:6px">{body}</div></div>'
            )
        footer = ""
        if unanswered is not None:
            footer = f'<div style="color:{MUTED}">no diff: {_no_answer_html(unanswered)}</div>'
        elif len(self.results) >= 2:
            alike, estimated = self._similarity(self.results[1].text, diff_b)
            note = f" · {COARSE_NOTE}" if diff_b.coarse else ""
            footer = (
                f'<div style="color:{MUTED}">similarity {"~" if estimated else ""}{alike:.2f}'
                f"{html.escape(note)}</div>"
            )
        return (
            '<div class="cm-comparison"><div style="display:flex;gap:8px">'
            + "".join(cells)
            + "</div>"
            + footer
            + "</div>"
        )


def _no_answer(result: BranchResult) -> str:
    # "bad has no answer (error)": why a diff or a delta is not shown.
    return f"{result.branch} has no answer ({result.state})"


def _no_answer_html(result: BranchResult) -> str:
    # What _no_answer says, its branch name isolated.
    return f"{isolated(result.branch)} has no answer ({html.escape(result.state)})"


def unfinished_html(result: BranchResult) -> str:
    """An unfinished reply as HTML: what became of it, then its partial text greyed
    (never marked as a diff: it is not an answer)."""
    status = result.state.replace(" ", "-") if result._known else ""
    # Nothing failed where there is no reply (yet): said in grey, not as an error.
    colour = MUTED if result.missing or result.pending else ERROR
    out = (
        f'<div class="cm-outcome cm-outcome-{html.escape(status)}" style="color:{colour}">'
        f"no answer: {html.escape(result.outcome or '')}</div>"
    )
    if result.text:
        out += (
            f'<div style="color:{MUTED}">partial text: '
            f'<span style="white-space:pre-wrap">{html.escape(result.text)}</span></div>'
        )
    return out


# Dark text on the pale marks: the theme's own text colour is light in a dark theme.
_MARKS = {
    "-": "background:#fdd;color:#1f2937;text-decoration:line-through",
    "+": "background:#dfd;color:#1f2937",
}
#: The softer marks of the compare view and the per-turn diff (``styles=`` of
#: :func:`diff_side_html`).
PALE_MARKS = {
    "+": "background:#d1fae5;color:#1f2937",
    "-": "background:#fee2e2;color:#1f2937;text-decoration:line-through",
}


def diff_side_html(
    ops: list[tuple[str, str]], keep: str, styles: dict[str, str] | None = None
) -> str:
    """One side of a :func:`word_diff` as HTML: shared words plain, this side's marked.

    ``keep`` is ``"-"`` (the first text's side) or ``"+"`` (the second's); ``styles``
    maps each to the CSS of its marked words (default: red struck out, green).
    """
    style = (styles or _MARKS)[keep]
    parts = []
    for op, text in ops:
        if op == "=":
            parts.append(html.escape(text))
        elif op == keep:
            parts.append(f'<span style="{style}">{html.escape(text)}</span>')
    return "".join(parts)
