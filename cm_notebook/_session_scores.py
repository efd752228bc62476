"""Scores of a session's messages: :meth:`rate`, :meth:`scores` and :meth:`score`.

:class:`ScoreMethods` is a base of :class:`~cm_notebook.session.ContextSession`; its
methods are public API of the session. What a score is and how a new rating merges
into a stored one is :mod:`cm_notebook.scores`; where it is kept,
:mod:`cm_notebook.store.scores`. Every change publishes a
:class:`~cm_notebook.events.ScoreUpdated` signal, which goes through the context's
signal log like every other signal, so other processes and SSE clients hear it too.
"""

from __future__ import annotations

import builtins
import functools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

from . import events as ev
from ._session_reading import SessionReading
from .compare import is_answer
from .errors import InvalidInputError, StateError
from .ids import validate_branch_name, validate_message_id
from .model import Message, MessageStatus
from .scores import Score, interpret, merged, metric_name
from .store.stand_ins import stand_in_file

__all__ = ["ScoreMethods", "ScoreResults", "branch_histories"]


class ScoreResults(builtins.list[Score]):
    """The scores a :meth:`~ScoreMethods.score` run wrote, one per message, in order.

    A list of :class:`~cm_notebook.scores.Score`; ``failed`` holds those whose scoring
    function raised or returned a value that cannot be stored (the error is in
    ``score.errors[name]``). Only answers are scored: ``left_out`` has the ids of the
    other replies, and ``left_out_status`` why each was left out (its status: still
    being written, ended in an error, or interrupted; ``complete`` for a reply that
    only asks for tools, a step of its turn before the answer, or the last reply of a
    turn stopped in its tool round, and for a stand-in, also listed in
    ``left_out_unreadable``: a message whose file could not be read, which
    ``cm-notebook check --repair`` replaced with a placeholder).
    """

    def __init__(
        self,
        name: str,
        scores: Iterable[Score],
        left_out: Iterable[str] | Mapping[str, MessageStatus] = (),
        unreadable: Iterable[str] = (),
    ) -> None:
        super().__init__(scores)
        #: The metric name the run wrote.
        self.name = name
        # Plain ids are replies still being written (what ``left_out`` first was).
        status = (
            dict(left_out)
            if isinstance(left_out, Mapping)
            else dict.fromkeys(left_out, MessageStatus.STREAMING)
        )
        #: The ids of the replies left out, not complete: not scored.
        self.left_out: tuple[str, ...] = tuple(status)
        #: Why each reply in ``left_out`` was: its status (streaming, error, interrupted;
        #: complete for a reply that only asks for tools).
        self.left_out_status: dict[str, MessageStatus] = status
        #: The ids in ``left_out`` that are stand-ins for messages whose file could not
        #: be read (written by ``cm-notebook check --repair``): their text is no answer.
        self.left_out_unreadable: tuple[str, ...] = tuple(i for i in unreadable if i in status)

    @property
    def failed(self) -> builtins.list[Score]:
        """The scores of the messages the function failed on."""
        return [score for score in self if self.name in score.errors]

    def summary(self) -> str:
        """E.g. ``"scored 12 messages with 'length': 11 ok, 1 failed"``, and what was left
        out and why."""
        failed = len(self.failed)
        text = (
            f"scored {len(self)} message{'s' if len(self) != 1 else ''} with {self.name!r}: "
            f"{len(self) - failed} ok, {failed} failed"
        )
        stand_ins = set(self.left_out_unreadable)
        counts = Counter(s for i, s in self.left_out_status.items() if i not in stand_ins)
        if stand_ins:
            text += (
                f"; left out {_replies(len(stand_ins))} that could not be read (stand-ins "
                "that `cm-notebook check --repair` wrote for damaged files: their text is a "
                "placeholder); restore the files from a backup to score them"
            )
        steps = counts.pop(MessageStatus.COMPLETE, 0)
        if steps:
            text += (
                f"; left out {_replies(steps)} that only ask for tools (a turn's steps "
                "before its answer, or a turn stopped in its tool round): they are no answer"
            )
        writing = counts.pop(MessageStatus.STREAMING, 0)
        if writing:
            text += (
                f"; left out {_replies(writing)} still being "
                "written: wait for the sweep or turn to finish (sweep.run(), "
                "turn.result()) and score again"
            )
        if counts:
            why = ", ".join(
                f"{count} {_UNFINISHED.get(status, status.value)}"
                for status, count in sorted(counts.items(), key=lambda item: item[0].value)
            )
            text += (
                f"; left out {_replies(sum(counts.values()))} that did not complete "
                f"({why}): there is no whole answer to score"
            )
        return text

    def __repr__(self) -> str:
        return f"<ScoreResults {self.summary()}>"


_UNFINISHED = {MessageStatus.ERROR: "ended in an error", MessageStatus.INTERRUPTED: "interrupted"}


def _replies(count: int) -> str:
    return f"{count} repl{'ies' if count != 1 else 'y'}"


def branch_histories(
    session: SessionReading, branches: str | Iterable[str] | None
) -> builtins.list[tuple[str, builtins.list[Message]]]:
    """``(branch, its messages root first)`` for ``branches`` (default: every branch,
    oldest first); an unknown branch is an error naming the known ones."""
    if isinstance(branches, str):
        names = [validate_branch_name(branches)]
    elif branches is None:
        names = list(session.branches)
    else:
        names = [validate_branch_name(name) for name in branches]
    known = session.branches
    for name in names:
        if name not in known:
            raise InvalidInputError(
                f"there is no branch {name!r}; the branches are {sorted(known)}"
            )
    return [(name, session.history(name)) for name in dict.fromkeys(names)]


def assistant_messages(
    histories: Sequence[tuple[str, Sequence[Message]]],
) -> builtins.list[tuple[str, Message]]:
    """Each assistant message of ``histories`` once, with the first branch it is on."""
    seen: set[str] = set()
    found = []
    for branch, messages in histories:
        for message in messages:
            if message.role == "assistant" and message.id not in seen:
                seen.add(message.id)
                found.append((branch, message))
    return found


class ScoreMethods(SessionReading):
    """Rating messages and scoring them with functions (see the module docstring)."""

    def rate(
        self,
        message_id: str,
        *,
        thumbs: Literal["up", "down"] | None = None,
        score: int | None = None,
        tags: Iterable[str] = (),
        note: str | None = None,
        by: str | None = None,
        clear: bool = False,
        clear_metrics: bool = False,
    ) -> Score:
        """Rate an assistant message: thumbs up or down, a 1-5 ``score``, ``tags`` (short
        texts without control characters), a ``note``, and who rated it (``by``, a name
        without control characters). Returns the score as now stored.

        ``score`` may be a numpy integer, or a float without a fraction (``4.0`` is
        4); a fraction, a bool or NaN is refused.

        Tags are kept in Unicode normal form C: ``"café"`` typed with a combining accent
        is the tag ``"café"`` typed with the composed letter (so are metric names).

        Rating again merges: given fields replace the stored ones, tags are added, the
        rest is kept (see :mod:`cm_notebook.scores`). ``clear=True`` takes the rating
        back (thumbs, score, tags, note, by) before the given fields are set, and keeps
        the scoring functions' metrics and errors; ``clear_metrics=True`` drops those.
        Only assistant messages can be rated.
        """
        message = self._rateable(message_id)
        branch = self._branch_of(message.id)
        return self._update_score(
            message.id,
            lambda old: merged(
                old,
                message.id,
                branch=branch,
                thumbs=thumbs,
                score=score,
                tags=tags,
                note=note,
                by=by,
                clear=clear,
                clear_metrics=clear_metrics,
            ),
        )

    def scores(self, message_id: str) -> Score | None:
        """The score of ``message_id``, or None if it has not been rated or scored."""
        validate_message_id(message_id)
        read = getattr(self._store, "read_score", None)
        if read is None:
            return None
        data = self._io.call(read(self.id, message_id))
        return None if data is None else Score.model_validate(data)

    def all_scores(self) -> dict[str, Score]:
        """Every score of the context, by message id."""
        listed = getattr(self._store, "list_scores", None)
        if listed is None:
            return {}
        found = self._io.call(listed(self.id))
        return {key: Score.model_validate(value) for key, value in found.items()}

    def score(
        self,
        fn: Callable[[Message], Any],
        *,
        branches: str | Iterable[str] | None = None,
        name: str | None = None,
        progress: bool = True,
    ) -> ScoreResults:
        """Run ``fn(message)`` over the assistant messages of ``branches`` (default: all)
        and store what it returns as each message's metric ``name`` (default: the
        function's name; in Unicode normal form C, as every metric name is kept). A
        lambda or a ``functools.partial`` has no name of its own (every lambda is
        ``<lambda>``): it needs ``name=``, else an InvalidInputError says so.

        ``fn`` returns a number or a bool, or a mapping of metric names to numbers (its
        keys ``thumbs``, ``score``, ``tags``, ``note`` rate the message, but never over
        what a person rated, and are dropped as its metrics are; see
        :mod:`cm_notebook.scores`). If
        ``fn`` raises on a message, or returns something that cannot be stored (NaN, a
        score outside 1-5, ...), the error is recorded in that message's
        ``score.errors[name]`` and the others go on; a later success clears it. A
        damaged score file is replaced. A message shared by several
        branches is scored once. Only answers are scored: a reply still being written
        (a turn or sweep still running; score again once it is done), one that ended in
        an error or was interrupted, and one that only asks for tools (a step of its
        turn before the answer, or the last reply of a turn stopped in its tool round:
        its empty text is no answer) is left out, listed in ``.left_out`` and, with its
        status, in ``.left_out_status``; so is a stand-in for a message whose file could
        not be read (its text is a placeholder), also listed in ``.left_out_unreadable``.
        ``progress`` shows a progress bar.
        Returns a :class:`ScoreResults` (a list of scores; ``.failed``, ``.left_out``,
        ``.summary()``).
        """
        if not callable(fn):
            raise InvalidInputError(f"fn must be a function of a message, got {fn!r:.80}")
        label = metric_name(name if name is not None else _function_name(fn))
        found = assistant_messages(branch_histories(self, branches))
        # Only an answer is scored: a reply still being written has no final text yet, a
        # failed or interrupted one an empty or cut-off text, and one that only asks for
        # tools no answer at all; their metrics would sit beside the answers' and skew
        # their means.
        # A stand-in's text is a placeholder for a message that could not be read.
        unreadable = {m.id for _b, m in found if stand_in_file(m) is not None}
        targets = [(b, m) for b, m in found if is_answer(m) and m.id not in unreadable]
        left_out = {m.id: m.status for _b, m in found if not is_answer(m) or m.id in unreadable}
        results = ScoreResults(label, [], left_out=left_out, unreadable=unreadable)
        bar = _progress(len(targets), label) if progress else None
        try:
            for branch, message in targets:
                try:
                    change = interpret(label, fn(message))
                except Exception as exc:  # the user's function: record it, go on
                    change = {"errors": {label: _error_text(exc)}}
                merge = functools.partial(_merge, label, message.id, branch, change)
                results.append(self._update_score(message.id, merge))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(failed=len(results.failed), refresh=False)
        finally:
            if bar is not None:
                bar.close()
        return results

    # -- helpers -----------------------------------------------------------------------

    def _rateable(self, message_id: str) -> Message:
        message = self.get(message_id)
        if message.role != "assistant":
            raise InvalidInputError(
                f"message {message_id!r} is the {message.role}'s; only assistant "
                "messages (replies) can be rated"
            )
        return message

    def _branch_of(self, message_id: str) -> str | None:
        # The active branch if the message is on it, else the first branch that has it.
        index = self._index()
        names = [self.active_branch, *self.branches]
        for name, branch in ((n, self.branches[n]) for n in dict.fromkeys(names)):
            current = branch.head
            while current is not None:
                if current == message_id:
                    return name
                entry = index.get(current)
                current = entry.parent_id if entry is not None else None
        return None

    def _update_score(self, message_id: str, change: Callable[[Score | None], Score]) -> Score:
        self._check_open()
        update = getattr(self._store, "update_score", None)
        if update is None:
            raise StateError(
                f"the store {self._store!r} keeps no scores; use a FileStore (the default)"
            )
        result: list[Score] = []

        def apply(old: dict[str, Any] | None) -> dict[str, Any]:
            try:
                before = None if old is None else Score.model_validate(old)
            except ValueError:
                before = None  # a damaged score file is replaced by the new rating
            new = change(before)
            result.append(new)
            # As JSON, a score leaves out the fields older versions refuse while they
            # are empty (see cm_notebook.scores), so they can still read and rate it.
            return new.model_dump(mode="json")

        self._io.call(update(self.id, message_id, apply))
        new = result[-1]
        self._publish(ev.ScoreUpdated(branch=new.branch, message_id=message_id, score=new))
        return new


def _merge(
    label: str, message_id: str, branch: str | None, change: dict[str, Any], old: Score | None
) -> Score:
    # A scoring function's result: its values are only checked here, against the stored
    # score (a NaN metric, a score of 0, too many tags in all). A bad one is that call's
    # error, like an exception of the function, so one bad message never stops a run.
    if "errors" in change:
        return merged(old, message_id, branch=branch, **change)
    try:
        return merged(old, message_id, branch=branch, succeeded=(label,), source=label, **change)
    except InvalidInputError as exc:
        error = _error_text(exc)
    return merged(old, message_id, branch=branch, errors={label: error})


def _function_name(fn: Callable[..., Any]) -> str:
    # The default metric name: the function's own. A lambda (every one is "<lambda>")
    # or a partial (one function, bound to different arguments) has none that tells it
    # from another, and two metrics of one name replace each other: name= is asked for.
    if isinstance(fn, functools.partial):
        inner = getattr(fn.func, "__name__", "a function")
        what = f"a functools.partial of {inner}, which other partials of it share"
    else:
        own = getattr(fn, "__name__", None)
        if isinstance(own, str) and own and not own.startswith("<"):
            return own
        what = "a lambda" if own == "<lambda>" else f"{fn!r:.80}, which has no name"
    raise InvalidInputError(
        f"score() names the metric after the function, and fn is {what}: pass name=, "
        "e.g. session.score(fn, name='mentions_paris'), or use a def function"
    )


def _error_text(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def _progress(total: int, label: str) -> Any:
    from tqdm.auto import tqdm  # imported when a bar is wanted: it costs ~50 ms

    return tqdm(total=total, desc=f"scoring {label}", unit="msg")
