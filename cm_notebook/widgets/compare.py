"""``CompareView``: two or more branches side by side, from where they diverge.

Above the columns: how much of the conversation the branches share. In each column:
the branch's system prompt, model, parameters, tokens, time to first token, tokens per
second and latency of its last reply, the messages after the point of divergence, and
its last answer as a word-level diff against the first branch's (the first column
marks what the others dropped, the others what they added). A branch with messages of
its own after that point has only a reply among them, so a fan-out's arm shows no
answer yet, not the one it was forked after, until its reply starts; one forked and
never continued shows its last answer, shared. It re-renders when a
compared branch's reply completes or its head moves. Under the columns, rating
buttons (thumbs up or down, 1-5) for each branch's last answer (:mod:`.rating`); a
rating given from code shows there too.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ipywidgets as w

from .. import events as ev
from .._html_text import isolated
from .._theme import MUTED
from ..compare import (
    COARSE_NOTE,
    PALE_MARKS,
    BranchResult,
    WordDiff,
    diff_side_html,
    is_answer,
    unfinished_html,
    word_diff,
)
from ..errors import BranchNotFoundError, InvalidInputError
from ..model import Message
from ..prompts import reply_prompt
from ..render import tool_calls_html, tool_results
from ..store.stand_ins import stand_in_file
from ..turn_diff import TurnComparison, turns_html
from ._base import FollowingView, close_parts
from ._connection import ConnectionWatch
from ._messages import stats_of
from .compare_copy import ComparisonSnapshot, show_widget
from .markdown import render_markdown
from .rating import RatingBar, rating_of

if TYPE_CHECKING:
    from ..session import ContextSession

__all__ = ["CompareView", "comparison_html"]

#: Colours of the comparison's texts: the theme's (JupyterLab's dark theme too), else
#: these (a saved notebook, nbconvert HTML).
_RED = "var(--jp-error-color1,#b91c1c)"
_BORDER = "var(--jp-border-color2,#ddd)"


#: The columns share the width whatever they hold: a grid of equal columns that may be
#: narrower than their content (flex columns were as wide as their longest word or
#: code line, and pushed the others out of view); in them, long words and URLs wrap
#: anywhere, and code blocks and tables scroll on their own (render_markdown).
_COLUMN = "min-width:0;overflow-wrap:anywhere"


def _columns(count: int) -> str:
    return f"display:grid;grid-template-columns:repeat({count},minmax(0,1fr));gap:8px"


class CompareView(FollowingView, w.VBox):  # type: ignore[misc]
    """``branches`` (default: every branch) side by side, kept current.

    ``value`` is the comparison's HTML; ``ratings`` the rating bars of the answers.
    Shown on its own (the value of a cell), it is followed by its saved copy
    (:attr:`saved`): static HTML kept current, which a notebook saved without widget
    state still shows (:mod:`.compare_copy`).
    """

    #: The static copy shown after the view, once it is shown on its own.
    saved: ComparisonSnapshot | None = None
    #: What shows a new view, said when this one is shown again once closed.
    REOPEN = "session.compare_view(...) shows a new one"

    def __init__(self, session: ContextSession, *branches: str) -> None:
        # A branch named twice (a typo) is compared once: a column per name would
        # repeat it, and "two or more branches" must count distinct ones.
        names = list(dict.fromkeys(branches)) or list(session.branches)
        baseline = session.baseline
        if baseline in names:  # the branch the others are measured against comes first
            names = [baseline, *(n for n in names if n != baseline)]
        for name in names:  # an unknown name first: it is the mistake to fix
            if name not in session.branches:
                raise InvalidInputError(
                    f"there is no branch {name!r}; the branches are {sorted(session.branches)}"
                )
        if len(names) < 2:
            raise InvalidInputError(
                f"compare needs two or more branches, got {names}; create one with "
                "session.branch(name) or session.fan_out(...)"
            )
        self.html = w.HTML()
        self.ratings = w.HBox(layout=w.Layout(grid_gap="8px"))
        self._bars: dict[str, RatingBar] = {}  # answer id -> its bar, reused
        self._spaces: dict[str, w.Box] = {}  # branch -> the empty space of its column
        # The views' stylesheet, and the rating buttons disabled after a kernel restart.
        self.connection = ConnectionWatch()
        super().__init__([self.html, self.ratings, self.connection])
        self.add_class("cm-compare")
        self.branch_names = names
        self._deleted: list[str] = []  # compared branches deleted since
        self._follow(session, 0.5)
        try:
            self._render()
        except BaseException:
            # Never shown, but it would follow the session still, and fail again on
            # each signal in whichever cell is running.
            self.close()
            raise

    @property
    def value(self) -> str:
        """The comparison as HTML."""
        return str(self.html.value)

    @value.setter
    def value(self, text: str) -> None:
        self.html.value = text

    def _ipython_display_(self) -> None:
        # The live view, then the static copy a notebook saved without widget state
        # still shows (a text/html in the widget's own bundle would not be: DESIGN
        # fact 10). Displayed again in a later cell, one more copy, kept current too.
        copy_id = show_widget(self, self.REOPEN)
        if copy_id is None:  # closed
            return
        if self.saved is None:
            self.saved = self._saved_copy(copy_id)
        self.saved.display()

    def _saved_copy(self, copy_id: str) -> ComparisonSnapshot:
        return ComparisonSnapshot(self.session, self.branch_names, copy_id=copy_id)

    def close(self) -> None:
        """Stop following the session and close the widgets (harmless twice); the
        saved copy keeps its last content."""
        if self.saved is not None:
            self.saved.close()
        # Every bar made, also those of answers no longer shown; the rest are parts.
        for bar in getattr(self, "_bars", {}).values():
            bar.close()
        super().close()

    def _show_ratings(self, answers: list[Message | None]) -> None:
        # One bar per column, under it; a column without an answer gets an empty space,
        # the same one at each render: a new one would make the front end draw every
        # bar after it again, and a bar with the keyboard focus would lose it.
        cells: list[w.Widget] = []
        for branch, answer in zip(self.branch_names, answers, strict=True):
            if answer is None or answer.role != "assistant":
                space = self._spaces.get(branch)
                if space is None:
                    space = self._spaces[branch] = w.Box(layout=w.Layout(flex="1"))
                cells.append(space)
                continue
            bar = self._bars.get(answer.id)
            if bar is None:
                bar = self._bars[answer.id] = RatingBar(self.session, self._follower, answer.id)
            bar.layout.flex = "1"
            # Its name for a screen reader too: which column's answer it rates.
            bar.name = f"Rating of the answer of branch {branch}"
            cells.append(bar)
        self._set_cells(cells)

    def _set_cells(self, cells: list[w.Widget]) -> None:
        # The empty spaces no longer shown are closed (one left open stays registered,
        # an open comm, for as long as the kernel runs) and made anew if needed again.
        # The bars are kept for reuse (closed with the view). The same cells are not
        # sent again.
        old = self.ratings.children
        if list(old) == cells:
            return
        self.ratings.children = cells
        for cell in old:
            if not isinstance(cell, RatingBar) and cell not in cells:
                self._spaces = {k: v for k, v in self._spaces.items() if v is not cell}
                close_parts(cell)
                cell.close()

    def __repr__(self) -> str:
        return f"<cm_notebook CompareView of {len(self.branch_names)} branches>"

    def _show_error(self, text: str) -> None:
        self.value = f'<div style="color:{_RED}">{html.escape(text)}</div>'

    def _on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.ScoreUpdated):
            bar = self._bars.get(event.message_id)
            if bar is not None:
                bar.show(rating_of(event.score))
            if event.branch in self.branch_names:
                self._throttle.poke()  # the per-turn score deltas change too
            return
        if event.branch not in self.branch_names:
            return
        if isinstance(event, (ev.MessageCompleted, ev.BranchUpdated, ev.StateChanged)):
            self._throttle.poke()
        elif isinstance(event, ev.BranchDeleted):
            self.branch_names = [n for n in self.branch_names if n != event.branch]
            self._deleted.append(event.branch)
            self._throttle.poke()

    def _render(self) -> None:
        session = self.session
        if len(self.branch_names) < 2:
            # A compared branch was deleted: nothing is left to compare it with.
            gone = ", ".join(map(repr, self._deleted))
            self._show_error(
                f"branch {gone} was deleted; compare needs two or more branches: show "
                "session.compare_view(...) again with the branches to compare"
            )
            self._set_cells([])
            return
        try:
            paths = {name: session.history(name) for name in self.branch_names}
            columns = [
                {
                    "branch": name,
                    "system": session.system_prompt_of(name),
                    "messages": paths[name],
                    "state": session.state_of(name).value,
                }
                for name in self.branch_names
            ]
            turns = [
                session.compare_turns(name, self.branch_names[0]) for name in self.branch_names[1:]
            ]
        except BranchNotFoundError:
            # Deleted by another process whose signal has not come yet (a turn here
            # ended first): dropped as BranchDeleted drops it, or a traceback would
            # land in whichever cell is running.
            known = session.branches
            missing = [name for name in self.branch_names if name not in known]
            if not missing:
                raise
            self.branch_names = [name for name in self.branch_names if name in known]
            self._deleted += missing
            self._render()
            return
        self.value = comparison_html(columns, turns)
        # A failed or interrupted reply is no answer to rate.
        shared = _shared(list(paths.values()))
        self._show_ratings([_answer_of(_own(path, shared)) for path in paths.values()])


def _shared(paths: list[list[Message]]) -> int:
    count = 0
    for group in zip(*paths, strict=False):
        if len({m.id for m in group}) != 1:
            break
        count += 1
    return count


def _own(path: list[Message], shared: int) -> list[Message]:
    # Where a branch's reply is looked for: after the messages the branches share, when
    # it has any of its own. A reply among the shared ones is no answer to its own
    # messages (a fan-out's arm whose reply has not started yet would show the answer
    # it was forked after, under its own question); a branch with none of its own
    # (forked and never continued) shows its last answer, shared.
    return path[shared:] if len(path) > shared else path


def _last_reply(path: list[Message]) -> Message | None:
    return next((m for m in reversed(path) if m.role == "assistant"), None)


def _answer_of(path: list[Message]) -> Message | None:
    # The branch's last reply if it completed: a failed, interrupted or still streaming
    # one is no answer (its text is partial, its tokens and timings an attempt's), nor
    # is one that only asks for tools (its tool rounds stopped or still wait), nor a
    # stand-in the repair wrote for a reply that could not be read (its text is a
    # placeholder): those are shown as no answer, saying why.
    reply = _last_reply(path)
    return reply if reply is not None and _readable_answer(reply) else None


def _readable_answer(reply: Message) -> bool:
    return is_answer(reply) and stand_in_file(reply) is None


def _facts(column: dict[str, Any], answer: Message | None) -> str:
    # The prompt the reply shown was made under; the branch's own when it differs (the
    # next reply's): a branch forked by edit_system shows its replies' old one.
    prompt = column["system"] if answer is None else reply_prompt(answer, column["system"])
    rows = [("system prompt", prompt or "(none)")]
    if answer is not None and (column["system"] or None) != prompt:
        rows.append(("next reply's prompt", column["system"] or "(none)"))
    if answer is not None and not _readable_answer(answer):
        rows.append(("model", str(stats_of(answer).get("model") or "?")))
        rows.append(("status", BranchResult.of(column["branch"], answer).state))
    elif answer is not None:
        stats = stats_of(answer)
        params = answer.metadata.parameters
        rows.append(("model", str(stats.get("model") or "?")))
        rows.append(("parameters", json.dumps(params, sort_keys=True) if params else "(defaults)"))
        tokens = stats.get("output_tokens")
        if tokens is not None:
            rows.append(("tokens", f"{stats.get('input_tokens', '?')} in, {tokens} out"))
        for key, label, unit in (
            ("ttft_ms", "TTFT", " ms"),
            ("tokens_per_second", "tokens/s", ""),
            ("latency_ms", "latency", " ms"),
        ):
            if key in stats:
                rows.append((label, f"{stats[key]}{unit}"))
    if column["state"] != "Idle":
        rows.append(("state", column["state"]))
    cells = "".join(
        f'<tr><td style="text-align:left;color:{MUTED};padding-right:8px;vertical-align:top">'
        f'{html.escape(k)}</td><td style="text-align:left;white-space:pre-wrap">'
        f"{html.escape(v)}</td></tr>"
        for k, v in rows
    )
    return f'<table style="font-size:85%;margin:4px 0">{cells}</table>'


def comparison_html(columns: list[dict[str, Any]], turns: Sequence[TurnComparison] = ()) -> str:
    """Static HTML of the comparison (columns: branch, system, messages, state), and
    below it the changed turns of each ``turns`` comparison against the first column."""
    paths = [c["messages"] for c in columns]
    shared = _shared(paths)
    replies = [_last_reply(_own(p, shared)) for p in paths]
    answers = [_answer_of(_own(p, shared)) for p in paths]
    # Diffs only between answers: a partial text marked as what a branch "dropped" or
    # "added" would read as a difference of the answers.
    diffs = len(answers) > 1 and answers[0] is not None and answers[1] is not None
    base = answers[0].content if diffs and answers[0] is not None else ""
    second = answers[1].content if diffs and answers[1] is not None else ""
    if shared:
        common = f"share the first {shared} message{'s' if shared != 1 else ''}"
        after_that = "below, what each says after that"
    else:
        common, after_that = "share no messages", "below, what each says"
    head = (
        f'<div style="color:{MUTED};margin-bottom:4px">{len(columns)} branches {common}; '
        f"{after_that}.</div>"
    )
    cells = []
    made: dict[str, WordDiff] = {}  # the diffs against the first answer, by text
    for index, (column, reply, answer) in enumerate(zip(columns, replies, answers, strict=False)):
        after = column["messages"][shared:]
        results = tool_results(column["messages"])  # the calls' outcomes on this branch
        body = []
        for message in after:
            if message is reply:
                continue
            label = html.escape(message.role)
            body.append(
                f'<div style="font-size:85%;color:{MUTED}"><b>{label}</b></div>'
                f"{render_markdown(message.content)}{tool_calls_html(message, results)}"
            )
        if answer is not None:
            marked = diffs and (index == 0 or answers[0] is not None)
            note = ""
            if marked:
                # The first column marks what the second dropped; the others what they
                # added.
                target = second if index == 0 else answer.content
                if target not in made:  # the first two columns show the same diff
                    made[target] = word_diff(base, target)
                ops = made[target]
                text = diff_side_html(ops, "-" if index == 0 else "+", PALE_MARKS)
                note = f" ({COARSE_NOTE})" if ops.coarse else ""
            else:
                text = html.escape(answer.content)
            body.append(
                f'<div style="font-size:85%;color:{MUTED}"><b>answer</b>'
                + (" (diff against the first)" if index and marked else "")
                + html.escape(note)
                + f'</div><div class="cm-answer" style="white-space:pre-wrap">{text}</div>'
            )
        elif reply is not None:
            body.append(unfinished_html(BranchResult.of(column["branch"], reply)))
        else:
            body.append(f'<div style="color:{MUTED}">(no answer yet)</div>')
        cells.append(
            f'<div class="cm-compare-column" style="{_COLUMN};border:1px solid {_BORDER};'
            'border-radius:6px;padding:6px 10px">'
            f'<div style="font-weight:600">{isolated(column["branch"])}</div>'
            f"{_facts(column, reply)}{''.join(body)}</div>"
        )
    per_turn = "".join(turns_html(comparison, changed_only=True) for comparison in turns)
    return (
        # The line height of text: a widget's HTML gets that of a row of widgets (28 px).
        '<div class="cm-compare-body" style="line-height:var(--jp-content-line-height,normal)">'
        f'{head}<div style="{_columns(len(cells))}">' + "".join(cells) + f"</div>{per_turn}</div>"
    )
