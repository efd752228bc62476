"""A context's replies as a table: one row per turn's reply on its branches (the last
assistant message before the next user message), for analysis. A turn's steps before
its reply, which only ask for tools, are no answer and have no row: the reply's row
counts the tool calls of its whole turn and, beside its own tokens and timings, the
tokens of every step (``session.history()`` has each step); a turn stopped in its tool
round keeps its last reply, which only asks for tools, its ``status`` ``stopped``. A
reply that ``regenerate()`` replaced is on no branch (its sibling took its place) and
has no row; samples meant to be compared go on branches of their own (``fan_out``, a
sweep's repeats).

:func:`records` builds plain dicts (no dependency); :func:`to_dataframe` hands them to
pandas (the optional extra ``cm_notebook[data]``); :func:`write_csv` writes them with
the standard library. The columns, in order (:data:`COLUMNS`):

============================  ==========================================================
``context_id``, ``branch``,    where the reply is; a reply shared by several branches
``message_id``                 (before they forked) is one row, on the first branch asked
``turn``                       which user turn of the branch it answers (1, 2, ...)
``prompt``                     the text of that user message (None when it is a stand-in
                              for an unreadable message: its text is a placeholder)
``variant``                    the branch's ``variant`` label (a sweep's arm), if any; a
                              reply made before the branch (it forked after the reply)
                              has none, nor ``label_*`` values: another branch made it
``provider``, ``model``,       what produced it; ``parameters`` is the dict of generation
``parameters``, ``seed``       parameters (also spread into ``param_<name>`` columns)
``endpoint``                   the server that answered when not the provider's own API
                              (its ``base_url``, credentials redacted), else None: a
                              model of the session's provider is asked at the
                              session's ``base_url``, whatever its name
``system_prompt``              the system prompt it was generated under
``output``, ``finish_reason``  the reply's text and why it ended
``refusal``                    True for a refusal: flagged by the API (OpenAI's
                              ``refusal``) or ended by one (finish reason ``refusal``)
``thumbs``, ``score``,         its rating (:mod:`cm_notebook.scores`); function scores
``tags``, ``note``             follow as ``metric_<name>`` columns
``ttft_ms``                    time to the first text
``input_tokens``,              token counts (output: the provider's usage, else the
``output_tokens``              number of chunks received)
``tokens_per_second``          tokens after the first over the time since it came
``latency_ms``                 the whole reply, retries included
``turn_input_tokens``,         the token counts of the whole turn: this reply and the
``turn_output_tokens``         steps before it that only asked for tools, and their
                              tries that failed and were retried, when the provider
                              reported their tokens (``failed_attempts``): the cost of
                              the turn; None when no count is known. ``input_tokens``
                              and ``output_tokens`` are the reply's last try's only
``tool_calls``                 how many tool calls the turn asked for, in every step up
                              to this reply
``request_id``,                provenance (:mod:`cm_notebook.provenance`)
``request_hash``
``created_at``                 when the reply was started (UTC)
``status``                     how the turn ended: ``complete`` (it answered),
                              ``interrupted``, ``error`` or ``streaming`` (its reply's
                              own status), ``stopped``: stopped in its tool round (the
                              tool round limit, a Stop while its calls waited for
                              approval or a tool ran), so that it never answered: its
                              last reply only asks for tools (``tool_calls`` > 0, a
                              sweep's ``failure`` says where), or ``running``: its tool
                              round goes on (a call waits for a decision, or runs), or
                              ``unreadable``: the reply is a stand-in that
                              ``cm-notebook check --repair`` wrote for a message whose
                              file could not be read; its row keeps its place and
                              rating only (``output`` and the other columns None)
``edited_from``                the id of the reply whose text was edited by hand into
                              this one (a counterfactual edit), None for a reply as
                              the model gave it
============================  ==========================================================

then one ``label_<key>`` column per branch label, ``param_<name>`` per generation
parameter and ``metric_<name>`` per scoring function. Every row has every column
(None where it does not apply), so the table is rectangular.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._unicode import without_surrogates
from .compare import tool_round_stop
from .errors import CMError, ExtraNotInstalledError, InvalidInputError, StoreIOError
from .model import Branch, Message, MessageStatus, TokenUsage
from .scores import Score
from .store.atomic import atomic_write
from .store.oserrors import translate
from .store.stand_ins import stand_in_file

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COLUMNS",
    "RUNNING",
    "STOPPED",
    "UNREADABLE",
    "records",
    "to_csv_text",
    "to_dataframe",
    "write_csv",
]

#: The fixed columns, in order; ``label_*``, ``param_*`` and ``metric_*`` follow.
COLUMNS: tuple[str, ...] = (
    "context_id",
    "branch",
    "message_id",
    "turn",
    "prompt",
    "variant",
    "provider",
    "model",
    "endpoint",
    "parameters",
    "seed",
    "system_prompt",
    "output",
    "finish_reason",
    "refusal",
    "thumbs",
    "score",
    "tags",
    "note",
    "ttft_ms",
    "input_tokens",
    "output_tokens",
    "tokens_per_second",
    "latency_ms",
    "turn_input_tokens",
    "turn_output_tokens",
    "tool_calls",
    "request_id",
    "request_hash",
    "created_at",
    "status",
    "edited_from",
)


def _row(
    context_id: str,
    branch: str,
    labels: Mapping[str, str],
    turn: int,
    prompt: Message | None,
    reply: Message,
    steps: Sequence[Message],
    score: Score | None,
) -> dict[str, Any]:
    # ``steps``: the turn's assistant messages up to and including ``reply``.
    meta = reply.metadata
    usage, stats = meta.usage, meta.stats
    output_tokens = _output_tokens(reply)
    row: dict[str, Any] = {
        "context_id": context_id,
        "branch": branch,
        "message_id": reply.id,
        "turn": turn,
        "prompt": prompt.content if prompt is not None and not stand_in_file(prompt) else None,
        "variant": labels.get("variant"),
        "provider": meta.provider,
        "model": meta.model,
        "endpoint": meta.endpoint,
        "parameters": dict(meta.parameters),
        "seed": meta.seed,
        "system_prompt": meta.system_prompt,
        "output": reply.content,
        "finish_reason": meta.finish_reason,
        "refusal": meta.refusal or meta.finish_reason == "refusal",
        "thumbs": score.thumbs if score else None,
        "score": score.score if score else None,
        "tags": list(score.tags) if score else [],
        "note": score.note if score else None,
        "ttft_ms": stats.ttft_ms if stats else None,
        "input_tokens": usage.input_tokens if usage is not None else None,
        "output_tokens": output_tokens,
        "tokens_per_second": stats.tokens_per_second if stats else None,
        "latency_ms": meta.duration_ms,
        "turn_input_tokens": _total(_turn_tokens(steps, _input_tokens, "input_tokens")),
        "turn_output_tokens": _total(_turn_tokens(steps, _output_tokens, "output_tokens")),
        "tool_calls": sum(len(step.tool_calls) for step in steps),
        "request_id": meta.request_id,
        "request_hash": meta.request_hash,
        "created_at": reply.created_at,
        "status": _turn_status(reply),
        "edited_from": _edited_from(reply),
    }
    if stand_in_file(reply) is not None:
        # Only the reply's place is known: its text is a placeholder, and what its
        # damaged file held (who made it, how it ended) is lost with it.
        row.update({key: None for key in row if key not in _PLACE})
        row["status"] = UNREADABLE
    row.update({f"label_{key}": value for key, value in labels.items()})
    row.update({f"param_{key}": value for key, value in meta.parameters.items()})
    if score is not None:
        row.update({f"metric_{key}": value for key, value in score.metrics.items()})
    return row


#: The ``status`` of a turn stopped in its tool round, and of one whose round goes on.
STOPPED = "stopped"
RUNNING = "running"
#: The ``status`` of a reply that is a stand-in for a message whose file could not be
#: read (written by ``cm-notebook check --repair``, :mod:`cm_notebook.store.stand_ins`).
UNREADABLE = "unreadable"
#: What a stand-in reply's row keeps (with its ``label_*`` and ``metric_*`` columns):
#: where it is, and its rating, held apart from the message.
_PLACE = frozenset(
    {"context_id", "branch", "message_id", "turn", "prompt", "variant"}
    | {"thumbs", "score", "tags", "note"}
)


def _turn_status(reply: Message) -> str:
    # How the turn that ``reply`` ends went. A reply that only asks for tools is stored
    # complete (the request for tools was), but its turn never answered: it was stopped
    # in that round, or the round goes on.
    if reply.status is MessageStatus.COMPLETE and reply.tool_calls:
        return RUNNING if tool_round_stop(reply) is None else STOPPED
    return reply.status.value


def _input_tokens(reply: Message) -> int | None:
    usage = reply.metadata.usage
    return usage.input_tokens if usage is not None else None


def _output_tokens(reply: Message) -> int | None:
    # The provider's count, else the number of chunks received.
    usage, stats = reply.metadata.usage, reply.metadata.stats
    counted = usage.output_tokens if usage is not None else None
    if counted is None and stats is not None:
        counted = stats.output_tokens
    return counted


def _turn_tokens(
    steps: Sequence[Message], own: Callable[[Message], int | None], kind: str
) -> Iterator[int | None]:
    # Each step's own count (its last try's), then those of its tries that failed and
    # were retried: they were paid for too (see FailedAttempt.usage).
    for step in steps:
        yield own(step)
        for attempt in step.metadata.failed_attempts:
            usage = attempt.get("usage")
            if isinstance(usage, TokenUsage):
                yield int(getattr(usage, kind))


def _total(counts: Iterable[int | None]) -> int | None:
    # The sum of the counts known; None if none is.
    known = [count for count in counts if count is not None]
    return sum(known) if known else None


def _edited_from(reply: Message) -> str | None:
    # Set (an extra metadata field) on a text edited by hand in a counterfactual.
    found = (reply.metadata.model_extra or {}).get("edited_from")
    return found if isinstance(found, str) else None


def records(
    context_id: str,
    histories: Sequence[tuple[str, Sequence[Message]]],
    branches: Mapping[str, Branch],
    scores: Mapping[str, Score],
) -> list[dict[str, Any]]:
    """One row per turn's reply of ``histories`` (``(branch, messages)`` pairs, root
    first): the last assistant message before the next user message, each reply once;
    see the module docstring for the columns.

    A turn's steps before it (replies that only ask for tools, whose results follow)
    are no answer and have no row: counted, they would sit beside the answers as empty
    outputs and skew their means. A turn stopped in its tool round keeps its last reply,
    which only asks for tools (``tool_calls`` > 0), its ``status`` ``stopped``
    (``running`` while the round goes on), not the ``complete`` its request for tools
    was stored with. A reply's row counts the tool calls and the tokens of its whole
    turn (``tool_calls``, ``turn_*_tokens``).

    A branch's ``variant`` and ``label_*`` columns go only on the replies made on it: a
    reply started before the branch was made (it forked after it) came from another
    branch and gets none of them, even on a row of this branch."""
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    for branch, messages in histories:
        found = branches.get(branch)
        labels: Mapping[str, str] = getattr(found, "labels", None) or {}
        made: datetime | None = getattr(found, "created_at", None)
        last = _turn_replies(messages)
        turn, prompt = 0, None
        steps: list[Message] = []  # the turn's assistant messages so far
        for message in messages:
            if message.role == "user":
                turn, prompt, steps = turn + 1, message, []
            elif message.role == "assistant":
                steps.append(message)
            if message.id in last and message.id not in seen:
                seen.add(message.id)
                # A warm-up answered on main before an arm forked is not the arm's
                # variant: its labels would credit the arm with a reply it never made.
                # (Not every fork records where it forked: its creation time says.)
                before = made is not None and message.created_at < made
                own = {} if before else labels
                score = scores.get(message.id)
                rows.append(_row(context_id, branch, own, turn, prompt, message, steps, score))
    return _rectangular(rows)


def _turn_replies(messages: Sequence[Message]) -> set[str]:
    # The ids of the turns' replies in ``messages`` (a branch's, root first): each
    # turn's last assistant message, before the next user message.
    last: set[str] = set()
    reply: str | None = None
    for message in messages:
        if message.role == "user":
            if reply is not None:
                last.add(reply)
            reply = None
        elif message.role == "assistant":
            reply = message.id
    if reply is not None:
        last.add(reply)
    return last


def _rectangular(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # Every row gets every column, in one order: fixed, then labels, params, metrics.
    extra: dict[str, None] = {}
    for row in rows:
        extra.update(dict.fromkeys(key for key in row if key not in COLUMNS))
    groups = [sorted(k for k in extra if k.startswith(p)) for p in ("label_", "param_", "metric_")]
    order = [*COLUMNS, *groups[0], *groups[1], *groups[2]]
    return [{key: row.get(key) for key in order} for row in rows]


def to_dataframe(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``rows`` as a pandas DataFrame (the columns kept in order, even with no rows)."""
    try:
        import pandas as pd
    except ImportError as exc:
        raise ExtraNotInstalledError(
            "to_dataframe() needs pandas, which is not installed: pip install "
            "'cm_notebook[data]' (or use to_records() or to_csv(), which need nothing extra)"
        ) from exc
    columns = list(rows[0]) if rows else list(COLUMNS)
    frame: pd.DataFrame = pd.DataFrame.from_records(rows, columns=columns)
    if rows:
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    return frame


def _cell(value: object) -> object:
    # CSV holds text: lists and dicts as JSON, times as ISO 8601, None as empty.
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
    if isinstance(value, datetime):
        return value.isoformat()
    return "" if value is None else value


def to_csv_text(rows: Iterable[Mapping[str, Any]]) -> str:
    """``rows`` as CSV text with a header line."""
    rows = list(rows)
    buffer = io.StringIO()
    # Lines end with CRLF, as RFC 4180 has them: the writer then quotes every cell that
    # holds a line break of either kind (with "\n" alone, a lone "\r" in a reply went
    # unquoted and readers split the row there).
    writer = csv.writer(buffer, lineterminator="\r\n")
    header = list(rows[0]) if rows else list(COLUMNS)
    writer.writerow(header)
    for row in rows:
        writer.writerow([_cell(row.get(key)) for key in header])
    return buffer.getvalue()


def write_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``rows`` as CSV (UTF-8) to ``path``; returns the path.

    A path that cannot name a file (empty, holding a NUL, a folder, under a file) is an
    :class:`~cm_notebook.errors.InvalidInputError` saying so.
    """
    target = _csv_target(path)
    text = to_csv_text(rows)
    # Lone surrogates (a name decoded from a file name, say) cannot be UTF-8: written as
    # U+FFFD, as the store writes them, rather than failing half-way.
    data = without_surrogates(text).encode("utf-8")
    try:
        # Atomically: a failure (a full disk, a kill) leaves an existing file as it was.
        atomic_write(target, data, fsync=None)
    except (CMError, OSError) as exc:
        # The store's primitives take a folder where a file goes for damage to the data
        # directory ("restore from a backup"); here it is the caller's path: made (or
        # removed) between the check above and the write.
        _check_target(target)
        # The primitive said it for a data directory (copy it, or choose another): this
        # is a path the caller chose, for which another path is the remedy.
        cause = exc.__cause__ if isinstance(exc, StoreIOError) else exc
        if not isinstance(cause, OSError) or isinstance(cause, CMError):
            raise
        raise translate(cause, target, "write", instead=_ELSEWHERE) from exc
    return target


_EXAMPLE = "e.g. 'results.csv'"
#: What to do when the CSV file's folder cannot be written (read-only, no permission).
_ELSEWHERE = "choose another path for the CSV file (nothing was written)"


def _csv_target(path: object) -> Path:
    # The file ``path`` names, or an InvalidInputError saying why it names none.
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"path must be a file path ({_EXAMPLE}), got {path!r:.80}")
    text = os.fspath(path)
    if not isinstance(text, str):
        raise InvalidInputError(f"path must be a text file path ({_EXAMPLE}), got {text!r:.80}")
    if not text.strip():
        raise InvalidInputError(f"the CSV path is empty: give the file to write, {_EXAMPLE}")
    if "\0" in text:
        raise InvalidInputError(
            f"the CSV path {text!r:.80} is not a valid file path: it holds a NUL character "
            f"(\\x00), which no file name can hold. Give another path, {_EXAMPLE}"
        )
    if text.endswith(("/", os.sep)) or (os.altsep is not None and text.endswith(os.altsep)):
        # Path() would drop the slash and write a file of the folder's name.
        raise InvalidInputError(
            f"the CSV path {text!r:.80} names a folder (it ends with a slash); give a file "
            f"in it, e.g. {os.path.join(text, 'results.csv')!r:.100}"
        )
    target = Path(text).expanduser()
    _check_target(target)
    return target


def _check_target(target: Path) -> None:
    # An existing folder where the file goes, or a file where its folder should be.
    # (os.path's checks say False where they cannot look, e.g. without permission: the
    # write then reports that.)
    if os.path.isdir(target):
        raise InvalidInputError(
            f"the CSV path {str(target)!r:.100} is a folder, not a file; give a file in it, "
            f"e.g. {str(target / 'results.csv')!r:.120}"
        )
    folder = target.parent
    # A folder that does not exist is left to the write, whose error says to check it.
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise InvalidInputError(
            f"cannot write the CSV file {str(target)!r:.100}: {str(folder)!r:.100} is a "
            "file, not a folder. Give a path in a folder"
        )
