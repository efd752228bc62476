"""Side-by-side comparison of branches: prompts, final answers, usage, speed and a diff.

:meth:`ContextSession.compare` and :meth:`ContextSession.fan_out` return a
:class:`Comparison`. It is plain data (pydantic) with a text ``__str__`` and a static
``_repr_html_``, so a saved notebook still shows the comparison without a kernel.
A reply that failed, was interrupted or is still streaming is shown as such (its
status, why, and its partial text), never diffed or measured as if it were an answer.
"""

from __future__ import annotations

import difflib
import html
import re

from pydantic import BaseModel, ConfigDict, Field
from rapidfuzz.distance import Indel

from ._unicode import for_terminal
from .model import Message, MessageStatus, StreamStats, TokenUsage

__all__ = [
    "PALE_MARKS",
    "BranchResult",
    "Comparison",
    "diff_side_html",
    "is_answer",
    "unfinished_html",
    "word_diff",
]

_TOKEN = re.compile(r"\s+|[^\s]+")


def is_answer(message: Message) -> bool:
    """Whether ``message`` is a final answer: complete, and not a reply that only asks
    for tools (its turn stopped in its tool rounds, or they still wait)."""
    return message.status is MessageStatus.COMPLETE and not message.tool_calls


class BranchResult(BaseModel):
    """One branch's final answer, what produced it and what it cost.

    ``system_prompt`` is the prompt the answer was generated under (None: none);
    ``stats`` how its streaming went (time to first token, tokens per second...).
    A reply that did not complete (``status`` ``error``, ``interrupted`` or still
    ``streaming``; ``error`` says why it failed) is not an answer, nor is a reply that
    only asks for tools (``tool_calls`` > 0: the turn stopped in its tool rounds, e.g.
    at the tool-round limit, or they still wait): see :attr:`unfinished`.
    """

    model_config = ConfigDict(frozen=True)

    branch: str
    message_id: str | None = None
    text: str = ""
    status: MessageStatus | None = None
    provider: str | None = None
    model: str | None = None
    parameters: dict[str, object] = Field(default_factory=dict)
    usage: TokenUsage | None = None
    duration_ms: float | None = None
    system_prompt: str | None = None
    stats: StreamStats | None = None
    error: str | None = None
    tool_calls: int = 0  # how many tools the reply asks for

    @classmethod
    def of(
        cls, branch: str, answer: Message | None, system_prompt: str | None = None
    ) -> BranchResult:
        """Summarise ``answer`` (the last assistant message of ``branch``, if any).

        ``system_prompt`` is the branch's current prompt, used when the answer does not
        record its own (it was stored by an older cm_notebook) or there is no answer.
        """
        if answer is None:
            return cls(branch=branch, system_prompt=system_prompt)
        meta = answer.metadata
        if "system_prompt" in meta.model_fields_set:
            system_prompt = meta.system_prompt
        return cls(
            branch=branch,
            message_id=answer.id,
            text=answer.content,
            status=answer.status,
            provider=meta.provider,
            model=meta.model,
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
        being generated, or only asks for tools. Its text is then partial, and its
        tokens and timings are an attempt's: neither is an answer to compare. (A result
        without a status, made by hand, counts as an answer.)"""
        if self.status is not None and self.status is not MessageStatus.COMPLETE:
            return True
        return self.tool_calls > 0

    @property
    def state(self) -> str:
        """A short word for what the reply is: its status (``complete``, ``error``,
        ``interrupted``, ``streaming``), ``tool calls`` for a complete reply that only
        asks for tools, ``no reply`` without a status."""
        if self.status is MessageStatus.COMPLETE and self.tool_calls:
            return "tool calls"
        return self.status.value if self.status is not None else "no reply"

    @property
    def outcome(self) -> str | None:
        """What became of an unfinished reply, in words (None for an answer)."""
        if not self.unfinished:
            return None
        why = f": {self.error}" if self.error else ""
        if self.status is MessageStatus.ERROR:
            return f"the reply failed{why}"
        if self.status is MessageStatus.INTERRUPTED:
            return f"the reply was interrupted{why}"
        if self.status is MessageStatus.STREAMING:
            return "the reply is still being generated"
        return "the reply only asks for tools (its tool rounds stopped or still wait)"

    def facts(self) -> list[str]:
        """Short labels of what produced the answer and how fast: model, parameters,
        tokens, time to first token, tokens per second, duration, attempts. For an
        unfinished reply: model, parameters and its status (``error``,
        ``interrupted``, ``streaming``) instead of what the attempt cost."""
        usage, stats = self.usage, self.stats
        facts = [self.model or self.provider or "?"]
        facts += [f"{key}={value}" for key, value in sorted(self.parameters.items())]
        if self.status is not None and self.unfinished:
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
    def prompt_label(self) -> str:
        """The system prompt as shown: the text, or ``(no system prompt)``."""
        return self.system_prompt if self.system_prompt else "(no system prompt)"


def word_diff(a: str, b: str) -> list[tuple[str, str]]:
    """Diff two texts word by word: a list of (op, text), op in ``= - +``.

    Words keep their surrounding white space so joining the ``=`` and ``-`` parts gives
    ``a`` back, and the ``=`` and ``+`` parts give ``b``.
    """
    words_a = _TOKEN.findall(a)
    words_b = _TOKEN.findall(b)
    # A longest common subsequence of the words (rapidfuzz's bit-parallel Indel
    # alignment, in C++): 8,000-word answers in ~30 ms, where difflib's SequenceMatcher
    # took 14 s (it is quadratic and worse with the repeated words of prose).
    parts: list[_Part] = []
    for code in Indel.opcodes(words_a, words_b):
        gone = "".join(words_a[code.src_start : code.src_end])
        if code.tag == "equal":
            parts.append(_Part(gone))
        elif parts and parts[-1].changed:  # Indel splits a replacement in two
            parts[-1].removed += gone
            parts[-1].added += "".join(words_b[code.dest_start : code.dest_end])
        else:
            parts.append(_Part("", gone, "".join(words_b[code.dest_start : code.dest_end])))
    return _readable(parts)


class _Part:
    """A run the texts share (``same``), or a change: ``removed`` from a, ``added`` in b."""

    __slots__ = ("added", "removed", "same")

    def __init__(self, same: str, removed: str = "", added: str = "") -> None:
        self.same, self.removed, self.added = same, removed, added

    @property
    def changed(self) -> bool:
        return bool(self.removed or self.added)


def _readable(parts: list[_Part]) -> list[tuple[str, str]]:
    # A shortest diff can keep a lone space in common between two changes
    # ("-Sunlight +Arr, = +sunlight"): such a space joins the change around it, and
    # white space both sides of a change share moves out of it, so changes read as
    # whole phrases: "-Sunlight +Arr, sunlight = scatters".
    merged: list[_Part] = []
    for at, part in enumerate(parts):
        # Between two changes: one just merged, and one after it (parts alternate).
        island = part.same.isspace() and at < len(parts) - 1 and merged and merged[-1].changed
        if island:
            merged[-1].removed += part.same
            merged[-1].added += part.same
        elif part.changed and merged and merged[-1].changed:
            merged[-1].removed += part.removed
            merged[-1].added += part.added
        else:
            merged.append(part)
    out: list[tuple[str, str]] = []
    for part in merged:
        if not part.changed:
            _same(out, part.same)
            continue
        lead = _shared_space(part.removed, part.added, from_end=False)
        trail = _shared_space(part.removed[lead:], part.added[lead:], from_end=True)
        _same(out, part.removed[:lead])
        removed = part.removed[lead : len(part.removed) - trail]
        added = part.added[lead : len(part.added) - trail]
        if removed:
            out.append(("-", removed))
        if added:
            out.append(("+", added))
        _same(out, part.removed[len(part.removed) - trail :] if trail else "")
    return out


def _same(out: list[tuple[str, str]], text: str) -> None:
    if not text:
        return
    if out and out[-1][0] == "=":
        out[-1] = ("=", out[-1][1] + text)
    else:
        out.append(("=", text))


def _shared_space(first: str, second: str, *, from_end: bool) -> int:
    # How many white-space characters ``first`` and ``second`` share at their start (or
    # end); none unless both sides of the change keep some text besides.
    count = 0
    limit = min(len(first), len(second)) - 1
    while count < limit:
        x = first[-1 - count] if from_end else first[count]
        y = second[-1 - count] if from_end else second[count]
        if x != y or not x.isspace():
            break
        count += 1
    return count


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

    def diff(self, other: str | None = None) -> list[tuple[str, str]]:
        """Word diff of the baseline's answer against ``other`` (default: the second)."""
        if len(self.results) < 2:
            return []
        target = self[other] if other is not None else self.results[1]
        return word_diff(self.results[0].text, target.text)

    def unified_diff(self, other: str | None = None) -> str:
        """A line-based unified diff of the baseline's answer against ``other``."""
        if len(self.results) < 2:
            return ""
        base = self.results[0]
        target = self[other] if other is not None else self.results[1]
        lines = difflib.unified_diff(
            base.text.splitlines(keepends=True),
            target.text.splitlines(keepends=True),
            fromfile=base.branch,
            tofile=target.branch,
        )
        return "".join(lines)

    def similarity(self, other: str | None = None) -> float:
        """Word-level similarity in [0, 1] of the baseline's answer and ``other``'s."""
        if len(self.results) < 2:
            return 1.0
        target = self[other] if other is not None else self.results[1]
        # 2 x (words in common) / (words in both), as difflib's ratio(), counted on the
        # same longest-common-subsequence alignment as word_diff.
        return float(
            Indel.normalized_similarity(
                _TOKEN.findall(self.results[0].text), _TOKEN.findall(target.text)
            )
        )

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
            diff = "".join(marked[op].format(text) for op, text in self.diff())
            lines.append(f"diff {names}: {diff}")
            lines.append(f"similarity: {self.similarity():.2f}")
        # A model's text may hold escapes a terminal (or a notebook's stream output)
        # acts on: shown escaped, as the CLI shows them.
        return for_terminal("\n".join(lines))

    def _repr_html_(self) -> str:
        cells = []
        unanswered = self._unanswered() if len(self.results) >= 2 else None
        diff_b = self.diff() if len(self.results) >= 2 and unanswered is None else []
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
                f"<div><b>{html.escape(result.branch)}</b> "
                f'<span style="color:#666">{" · ".join(facts)}</span></div>'
                '<div style="color:#555;font-style:italic;white-space:pre-wrap;margin-top:4px">'
                f"system: {html.escape(result.prompt_label)}</div>"
                f'<div style="white-space:pre-wrap;margin-top:6px">{body}</div></div>'
            )
        footer = ""
        if unanswered is not None:
            footer = f'<div style="color:#666">no diff: {html.escape(_no_answer(unanswered))}</div>'
        elif len(self.results) >= 2:
            footer = f'<div style="color:#666">similarity {self.similarity():.2f}</div>'
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


def unfinished_html(result: BranchResult) -> str:
    """An unfinished reply as HTML: what became of it, then its partial text greyed
    (never marked as a diff: it is not an answer)."""
    status = result.state.replace(" ", "-") if result.status is not None else ""
    out = (
        f'<div class="cm-status cm-status-{html.escape(status)}" style="color:#b91c1c">'
        f"no answer: {html.escape(result.outcome or '')}</div>"
    )
    if result.text:
        out += (
            '<div style="color:#888">partial text: '
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
